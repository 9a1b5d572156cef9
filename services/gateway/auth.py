"""Who is calling: signed short-lived user tokens (JWT) and API keys for server-to-server use.

A credential travels in the `Authorization: Bearer …` header (REST, and WebSocket clients
that can set headers) or in the `token` field of `session.start` (browsers cannot set
headers on a WebSocket). Neither ends up in an access log; a token in a query string is
never read.

JWTs are checked against a shared secret (HS256) or a JWKS endpoint (RS256/ES256), with
audience, optional issuer, `exp` required and a bounded lifetime. The caller is the `sub`
claim, inside its `tenant` claim when the token has one (`tenant/sub`), so two tenants' users
never meet; a claim that would make that string name someone else is refused (`identity`).
API keys (`pk_…`) are stored only as SHA-256 digests and map to one user each.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt

from services.common import db, ids

from .config import GatewaySettings

API_KEY_PREFIX = "pk_"


class AuthError(Exception):
    """The credential is missing or not acceptable; `code` names why (documented in protocol.md)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Principal:
    user_id: str
    external_id: str
    via: str  # "jwt" or "api_key"


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def mint_token(secret: str, subject: str, ttl_s: int = 3600, audience: str = "parley", **claims) -> str:
    """An HS256 user token, for operators (`parley token`), the local stack and tests."""
    now = int(time.time())
    payload = {"sub": subject, "aud": audience, "iat": now, "exp": now + ttl_s, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def identity(tenant: object, subject: object) -> str:
    """A token's user as one string, `sub` or `tenant/sub`, read back at its first slash. So a
    tenant may hold no slash and a subject without a tenant none either (else "a" with `sub`
    "b/c" would be tenant "a/b" with "c", and `sub` "acme/alice" tenant acme's alice); a
    subject inside a tenant may. Identities without slashes are as they always were."""
    if not isinstance(subject, str) or not subject.strip():
        raise AuthError("invalid_token", "the token's sub claim must be a non-empty string")
    if tenant in (None, ""):
        if "/" in subject:
            raise AuthError("invalid_token", "a sub claim with '/' needs a tenant claim: it would name a tenant's user")
        return subject
    if not isinstance(tenant, str) or "/" in tenant or not tenant.strip():
        raise AuthError("invalid_token", "the tenant claim must be a non-empty string without '/'")
    return f"{tenant}/{subject}"


class Authenticator:
    def __init__(self, settings: GatewaySettings, database: db.Database):
        self.s = settings
        self.db = database
        if not (settings.auth_jwt_secret or settings.auth_jwks_url):
            raise ValueError(
                "set PARLEY_AUTH_JWT_SECRET or PARLEY_AUTH_JWKS_URL: the gateway needs a way to check tokens"
            )
        self._jwks = jwt.PyJWKClient(settings.auth_jwks_url, lifespan=300) if settings.auth_jwks_url else None

    async def authenticate(self, credential: str | None) -> Principal:
        if not credential:
            raise AuthError("unauthenticated", "a bearer token or API key is required")
        if credential.startswith(API_KEY_PREFIX):
            return await self._api_key(credential)
        return await self._jwt(credential)

    async def _api_key(self, key: str) -> Principal:
        found = await self.db.keys.user_of(hash_api_key(key))
        if found is None:
            raise AuthError("invalid_api_key", "unknown or revoked API key")
        return Principal(found.id, found.external_id, "api_key")

    async def _jwt(self, token: str) -> Principal:
        s = self.s
        try:
            if self._jwks is not None:
                key = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
                algorithms = s.auth_jwt_algorithms or ["RS256", "ES256"]
            else:
                key = s.auth_jwt_secret.get_secret_value()
                algorithms = s.auth_jwt_algorithms or ["HS256"]
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=s.auth_jwt_audience,
                issuer=s.auth_jwt_issuer,
                leeway=s.auth_clock_skew_s,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token_expired", "the token has expired") from None
        except jwt.PyJWKClientError as exc:
            raise AuthError("invalid_token", f"the token's signing key could not be found: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid_token", f"the token is not valid: {exc}") from None
        issued = claims.get("iat", claims.get("nbf"))
        if issued is None or claims["exp"] - issued > s.auth_max_token_lifetime_s:
            raise AuthError(
                "invalid_token",
                f"tokens must carry iat and live at most {s.auth_max_token_lifetime_s} s",
            )
        return await self.as_user(identity(claims.get("tenant"), claims["sub"]), "jwt")

    async def as_user(self, external: str, via: str) -> Principal:
        """The user an established identity names (a token's subject, a phone line)."""
        user_id = ids.user_id_for(external)
        await self.db.users.ensure(user_id, external)
        return Principal(user_id, external, via)

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Browsers send Origin; server clients do not and are judged by their credential alone.
        Allowed: the gateway's own origin, and those listed in PARLEY_ALLOWED_ORIGINS (`*`: any)."""
        if not origin:
            return True
        allowed = self.s.allowed_origins
        if "*" in allowed or origin.rstrip("/") in allowed:
            return True
        return bool(host) and urlsplit(origin).netloc.lower() == host.lower()
