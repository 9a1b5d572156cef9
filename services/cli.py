"""`parley`: operator commands. `migrate` and `seed` for any deployment, `dev` for a local stack."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import sys
import time
from pathlib import Path

from services.common import db, ids, objectstore
from services.common.settings import ServiceSettings

DEMO_VOICE = Path(__file__).parent / "common" / "assets" / "demo_voice.wav"
DEMO_PERSONA = (
    "You are {name}, {role}. You are warm, curious and concise. Your words are spoken aloud, "
    "so answer in a few short sentences without lists, markdown or emoji."
)


def demo_voice_key() -> str:
    """Where the demo avatar's reference voice is kept (named by its content, like every voice)."""
    return objectstore.voice_key(ids.DEMO_AVATAR_ID, hashlib.sha256(DEMO_VOICE.read_bytes()).hexdigest())


async def seed(settings: ServiceSettings) -> None:
    """The demo avatar and its reference voice; idempotent."""
    key = demo_voice_key()
    async with objectstore.ObjectStore(settings) as store:
        await store.ensure_bucket()
        if not await store.exists(key):
            await store.put(key, DEMO_VOICE.read_bytes(), "audio/wav")
    pool = await db.create_pool(settings.database_url)
    try:
        await db.Repo(pool).upsert_avatar(
            db.Avatar(
                id=ids.DEMO_AVATAR_ID,
                name="Ada",
                role_title="Parley's demo avatar",
                persona_prompt=DEMO_PERSONA,
                language="en",
                voice_key=key,
                owner_id=None,
            )
        )
    finally:
        await pool.close()


def dev(args: argparse.Namespace) -> int:
    """Run the whole stack here: pip nats-server, Postgres, S3 stand-in, five services."""
    from services import devstack

    state = Path(args.state_dir).resolve()
    nats = devstack.NatsServer(state / "nats").start()
    pg = None
    database_url = os.environ.get("DATABASE_URL") or os.environ.get("PARLEY_DATABASE_URL")
    if not database_url:
        pg = devstack.PostgresCluster(state / "postgres").start()
        database_url = pg.url
    s3 = devstack.S3StandIn().start()
    env = {
        "PARLEY_NATS_URL": nats.url,
        "PARLEY_DATABASE_URL": database_url,
        "PARLEY_S3_ENDPOINT_URL": os.environ.get("PARLEY_S3_ENDPOINT_URL", s3.url),
        "PARLEY_S3_ACCESS_KEY_ID": os.environ.get("PARLEY_S3_ACCESS_KEY_ID", "dev"),
        "PARLEY_S3_SECRET_ACCESS_KEY": os.environ.get("PARLEY_S3_SECRET_ACCESS_KEY", "dev"),
        "PARLEY_S3_REGION": os.environ.get("PARLEY_S3_REGION", "us-east-1"),
        "PARLEY_AUTH_JWT_SECRET": os.environ.get("PARLEY_AUTH_JWT_SECRET") or _dev_secret(state),
    }
    if args.test_models:
        env.update(test_model_env(Path(args.model_cache)))
    os.environ.update(env)
    procs = {}
    try:
        db.migrate(database_url)
        asyncio.run(seed(ServiceSettings()))
        procs = devstack.start_services(env, state / "logs")
        gw = procs["gateway"]
        gw_port = gw.port
        from services.gateway.auth import mint_token

        login = mint_token(env["PARLEY_AUTH_JWT_SECRET"], args.user, ttl_s=12 * 3600)
        print(f"Parley is up: web client http://127.0.0.1:{gw_port}/#token={login}")
        print(f"  (signed in as {args.user!r} for 12 h; `parley token --user NAME` signs in someone else)")
        print(f"websocket ws://127.0.0.1:{gw_port}/v1/ws")
        print(f"API docs http://127.0.0.1:{gw_port}/docs  logs in {state / 'logs'}  (Ctrl-C stops everything)")
        stop = False

        def _stop(*_):
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stop:
            dead = [n for n, p in procs.items() if p.proc.poll() is not None]
            if dead:
                print(f"service(s) exited: {', '.join(dead)}; see {state / 'logs'}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        for p in procs.values():
            p.stop()
        s3.stop()
        if pg:
            pg.stop()
        nats.stop()


def _dev_secret(state: Path) -> str:
    """The local stack's token secret: made once, kept in the state directory."""
    import secrets

    path = state / "jwt-secret"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def token(args: argparse.Namespace) -> int:
    """Sign a user token with PARLEY_AUTH_JWT_SECRET (or the local stack's secret)."""
    from services.gateway.auth import mint_token

    secret = os.environ.get("PARLEY_AUTH_JWT_SECRET")
    if not secret:
        local = Path(args.state_dir) / "jwt-secret"
        if not local.exists():
            print("set PARLEY_AUTH_JWT_SECRET (or run `parley dev` once)", file=sys.stderr)
            return 2
        secret = local.read_text().strip()
    claims = {"tenant": args.tenant} if args.tenant else {}
    print(mint_token(secret, args.user, ttl_s=args.ttl, audience=args.audience, **claims))
    return 0


async def create_api_key(settings: ServiceSettings, user: str, name: str) -> str:
    from services.gateway.auth import hash_api_key, new_api_key

    key = new_api_key()
    pool = await db.create_pool(settings.database_url)
    try:
        repo = db.Repo(pool)
        user_id = ids.user_id_for(user)
        await repo.ensure_user(user_id, user)
        await repo.create_api_key(ids.new_id(), user_id, name, hash_api_key(key))
    finally:
        await pool.close()
    return key


def test_model_env(cache: Path) -> dict[str, str]:
    """Tiny random-weight models built locally: the real engines, no download, nonsense speech."""
    from tools.testmodels.whisper import build_whisper
    from tools.testmodels.xtts import build_xtts

    whisper = build_whisper(cache / "whisper-tiny")
    xtts = build_xtts(cache / "xtts-tiny")
    return {
        "PARLEY_STT_MODEL": str(whisper),
        "PARLEY_STT_DEVICE": "cpu",
        "PARLEY_STT_COMPUTE_TYPE": "int8",
        "PARLEY_STT_MAX_NEW_TOKENS": "12",
        "PARLEY_TTS_MODEL": str(xtts),
        "PARLEY_TTS_DEVICE": "cpu",
        "PARLEY_TTS_LATENT_CACHE_DIR": str(cache / "latents"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations (PARLEY_DATABASE_URL)")
    sub.add_parser("seed", help="create the demo avatar and upload its reference voice")
    led = sub.add_parser("ledger", help="check that nothing was lost (database, bucket, events)")
    led.add_argument("conversations", nargs="*", help="conversation ids (default: all)")
    d = sub.add_parser("dev", help="run the whole stack locally without Docker")
    d.add_argument("--state-dir", default=".cache/dev")
    d.add_argument(
        "--test-models",
        action="store_true",
        help="use tiny random-weight models built locally (offline; speech is nonsense)",
    )
    d.add_argument("--model-cache", default=os.environ.get("PARLEY_MODEL_CACHE", ".cache/models"))
    d.add_argument("--user", default="me", help="who the printed web client link signs in")
    t = sub.add_parser("token", help="sign a short-lived user token (PARLEY_AUTH_JWT_SECRET)")
    t.add_argument("--user", required=True, help="the token's subject")
    t.add_argument("--tenant", help="the user's tenant (users of different tenants never meet)")
    t.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (default 3600)")
    t.add_argument("--audience", default=os.environ.get("PARLEY_AUTH_JWT_AUDIENCE", "parley"))
    t.add_argument("--state-dir", default=".cache/dev", help="where `parley dev` keeps its secret")
    k = sub.add_parser("api-key", help="create an API key acting as a user (server-to-server clients)")
    k.add_argument("--user", required=True, help="the user the key acts as (a token's sub, tenant/sub with one)")
    k.add_argument("--name", default="", help="a label to tell keys apart")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        print(f"applied {db.migrate(ServiceSettings().database_url)} migration(s)")
        return 0
    if args.command == "seed":
        asyncio.run(seed(ServiceSettings()))
        return 0
    if args.command == "token":
        return token(args)
    if args.command == "api-key":
        print(asyncio.run(create_api_key(ServiceSettings(), args.user, args.name)))
        return 0
    if args.command == "ledger":
        from services import ledger

        return ledger.main(args.conversations)
    return dev(args)


if __name__ == "__main__":
    sys.exit(main())
