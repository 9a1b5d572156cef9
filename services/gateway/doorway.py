"""Sockets that have not started a session yet, counted per client address.

Each is held until its start timeout (`PARLEY_START_TIMEOUT_S`) before any credential is seen,
so without a bound one address could hold thousands of them for nothing. Behind a proxy the
address is the client's only when uvicorn trusts the proxy's headers (`FORWARDED_ALLOW_IPS`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator


class Doorway:
    def __init__(self, per_address: int):
        self.per_address = per_address
        self._waiting: Counter[str] = Counter()

    @contextlib.contextmanager
    def waiting(self, address: str) -> Iterator[bool]:
        """While the socket waits for its opening; False when its address has too many waiting."""
        if self._waiting[address] >= self.per_address:
            yield False
            return
        self._waiting[address] += 1
        try:
            yield True
        finally:
            self._waiting[address] -= 1
            if not self._waiting[address]:
                del self._waiting[address]
