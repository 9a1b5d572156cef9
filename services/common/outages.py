"""Is a dependency down? Tells an outage (the bus, Postgres, the object store restarting or
unreachable) from a failure caused by the message being handled: the first is retried, the
second is not (the JetStream work loop in bus.py asks this of every handler's exception)."""

from __future__ import annotations

import errno

import asyncpg
import nats.errors
from botocore.exceptions import BotoCoreError, ClientError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

_NATS_DOWN = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,  # a JetStream publish while the stream is being recovered
    ServiceUnavailableError,
    NoStreamResponseError,  # the same, as a JetStream publish in a cluster electing a leader
)
_PG_DOWN = (
    asyncpg.PostgresConnectionError,  # the connection was lost or refused
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
)
_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}


def dependency_down(exc: BaseException) -> bool:
    """Whether a handler failed because something it needs is down or restarting (the bus,
    Postgres, the object store), rather than because of the message it was handling."""
    if isinstance(exc, (ConnectionError, TimeoutError, *_NATS_DOWN, *_PG_DOWN)):
        return True
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:  # e.g. asyncio's "Connect call failed"
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc)  # a pooled connection cut under a query
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429
    return isinstance(exc, BotoCoreError) and "connect" in type(exc).__name__.lower()
