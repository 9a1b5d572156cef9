"""Who may place a call: Twilio's request signature, and the token that binds a stream to its call.

Twilio signs every request it makes with the account's auth token: `X-Twilio-Signature` is
base64(HMAC-SHA1(token, URL + each POST parameter's name and value, sorted by name)). A
WebSocket handshake has no parameters, so its signature is the same for every call to one
URL: on its own, a signature seen once would open streams forever. The TwiML endpoint
therefore gives each call a `call_token`, an HMAC of its CallSid, its avatar and an expiry,
which the stream's `start` message must carry back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

CALL_TOKEN_TTL_S = 120
_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


Params = Iterable[tuple[str, str]]
"""A POST's form fields as (name, value) pairs: a name may repeat."""


def signature(auth_token: str, url: str, params: Params = ()) -> str:
    data = url + "".join(name + value for name, value in sorted(set(params)))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def signed(auth_token: str, urls: list[str], params: Params, given: str | None) -> bool:
    """`given` signs one of `urls` (each also with its default port written out, or left out,
    as proxies change it)."""
    if not given:
        return False
    params = list(params)
    for url in urls:
        for form in _port_forms(url):
            if hmac.compare_digest(signature(auth_token, form, params), given):
                return True
    return False


def call_token(auth_token: str, call_sid: str, avatar_id: str, now: float | None = None) -> str:
    expires = int((now or time.time()) + CALL_TOKEN_TTL_S)
    return f"{expires}.{_mac(auth_token, call_sid, avatar_id, expires)}"


def call_token_valid(auth_token: str, token: str, call_sid: str, avatar_id: str) -> bool:
    expires, _, mac = token.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(mac, _mac(auth_token, call_sid, avatar_id, int(expires)))


def _mac(auth_token: str, call_sid: str, avatar_id: str, expires: int) -> str:
    data = f"parley-call|{call_sid}|{avatar_id}|{expires}".encode()
    return base64.urlsafe_b64encode(hmac.new(auth_token.encode(), data, hashlib.sha256).digest()).decode().rstrip("=")


def _port_forms(url: str) -> list[str]:
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or default
    with_port = urlunsplit(parts._replace(netloc=f"{host}:{port}")) if port else url
    without = urlunsplit(parts._replace(netloc=host)) if parts.port in (None, default) else url
    return list(dict.fromkeys([url, with_port, without]))


def public_urls(public_url: str | None, host: str | None, path: str, websocket: bool) -> list[str]:
    """The addresses a request to `path` may have been signed for: under PARLEY_PUBLIC_URL,
    or else the Host it came to, by TLS or not (a proxy may have ended the TLS)."""
    if public_url:
        base = public_url.rstrip("/")
        if websocket:
            base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return [base + path]
    schemes = ("wss", "ws") if websocket else ("https", "http")
    return [f"{scheme}://{host}{path}" for scheme in schemes] if host else []
