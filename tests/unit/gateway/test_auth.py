"""User tokens signed with asymmetric keys published at a JWKS endpoint (an identity provider's
setup), checked by the gateway's Authenticator against a real JWKS server over HTTP."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from ops import devstack
from services.common import db, ids
from services.gateway.auth import Authenticator, AuthError
from services.gateway.config import GatewaySettings


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks():
    key = _rsa()
    public = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**public, "kid": "idp-1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = devstack.free_port()
    server = HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{port}/.well-known/jwks.json", "key": key}
    server.shutdown()


def _token(key, kid: str = "idp-1", **claims) -> str:
    now = int(time.time())
    payload = {"sub": "ines", "aud": "parley", "iss": "https://idp.example", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
async def authenticator(jwks, database_url):
    pool = await db.create_pool(database_url)
    settings = GatewaySettings(auth_jwks_url=jwks["url"], auth_jwt_issuer="https://idp.example")
    yield Authenticator(settings, db.Database(pool))
    await pool.close()


async def test_a_token_signed_by_the_identity_provider_is_accepted(authenticator, jwks):
    who = await authenticator.authenticate(_token(jwks["key"], tenant="acme"))
    assert (who.external_id, who.via) == ("acme/ines", "jwt")
    assert who.user_id == ids.user_id_for("acme/ines")


async def test_an_identity_names_one_user_only(authenticator, jwks):
    """`tenant/sub` is split at its first slash: a tenant with a slash, or a sub with one and no
    tenant, could name another tenant's user, and is refused; a sub with a slash inside a tenant
    is that tenant's user. Identities without slashes keep the ids they had."""
    plain = await authenticator.authenticate(_token(jwks["key"]))
    assert plain.external_id == "ines" and plain.user_id == ids.user_id_for("ines")
    inside = await authenticator.authenticate(_token(jwks["key"], tenant="acme", sub="team/ines"))
    assert inside.external_id == "acme/team/ines"
    for claims, why in [
        ({"sub": "acme/alice"}, "sub"),
        ({"tenant": "a/b", "sub": "c"}, "tenant"),
        ({"tenant": 7, "sub": "c"}, "tenant"),
        ({"sub": ""}, "sub"),
        ({"sub": "   "}, "sub"),
        ({"tenant": "acme", "sub": ""}, "sub"),
    ]:
        with pytest.raises(AuthError) as refused:
            await authenticator.authenticate(_token(jwks["key"], **claims))
        assert refused.value.code == "invalid_token" and why in refused.value.message, claims


@pytest.mark.parametrize(
    "case",
    ["other-key", "unknown-kid", "wrong-issuer", "hs256-with-public-key"],
)
async def test_tokens_the_provider_did_not_sign_are_refused(authenticator, jwks, case):
    if case == "other-key":
        token = _token(_rsa())
    elif case == "unknown-kid":
        token = _token(jwks["key"], kid="idp-2")
    elif case == "wrong-issuer":
        token = _token(jwks["key"], iss="https://evil.example")
    else:
        # The classic confusion attack: HS256 keyed with the published public key.
        now = int(time.time())
        token = jwt.encode(
            {"sub": "ines", "aud": "parley", "iss": "https://idp.example", "iat": now, "exp": now + 300},
            "a" * 64,
            algorithm="HS256",
            headers={"kid": "idp-1"},
        )
    with pytest.raises(AuthError) as refused:
        await authenticator.authenticate(token)
    assert refused.value.code == "invalid_token"


def test_the_gateway_will_not_start_without_a_way_to_check_tokens():
    with pytest.raises(ValueError, match="PARLEY_AUTH_JWT_SECRET"):
        Authenticator(GatewaySettings(auth_jwt_secret=None, auth_jwks_url=None), None)
