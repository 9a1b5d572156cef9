"""`parley`: operator commands. `migrate` and `seed` for any deployment, `dev` for a local stack."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import signal
import sys
import time
from pathlib import Path

from services import common
from services.common import db, ids, objectstore
from services.common.personas import DEFAULT_PERSONA
from services.common.settings import ServiceSettings

DEMO_VOICE = Path(common.__file__).parent / "assets" / "demo_voice.wav"


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
        await db.Database(pool).avatars.upsert(
            db.Avatar(
                id=ids.DEMO_AVATAR_ID,
                name="Ada",
                role_title="Parley's demo avatar",
                persona_prompt=DEFAULT_PERSONA,
                language="en",
                voice_key=key,
                owner_id=None,
            )
        )
    finally:
        await pool.close()


def dev(args: argparse.Namespace) -> int:
    """Run the whole stack here: pip nats-server, Postgres, S3 stand-in, the LLM, five services.

    Everything is checked before anything starts where it can be (the gateway's port, the
    models), and whatever did start is stopped again on any failure: no half stack is left."""
    from ops import devstack, localmodels

    state = Path(args.state_dir).resolve()
    if not devstack.port_is_free(args.port):
        print(f"parley dev: port {args.port} is taken (another `parley dev`?): pass --port N", file=sys.stderr)
        return 2
    try:
        choice = _model_choice(args)
    except (localmodels.ModelError, ValueError) as exc:
        print(f"parley dev: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        try:
            env, lines = _start_infrastructure(stack, state, args)
            env.update(choice.env)
            os.environ.update(env)
            db.migrate(env["PARLEY_DATABASE_URL"])
            asyncio.run(seed(ServiceSettings()))
            procs = devstack.start_services(env, state / "logs", ports={"gateway": args.port})
        except Exception as exc:  # any failure to start: say it in one line, stop what started
            print(f"parley dev: {exc}", file=sys.stderr)
            return 1
        for p in procs.values():
            stack.callback(p.stop)
        _print_welcome(env, args, [*choice.lines, *lines], state)
        return _supervise(procs, state)


def _model_choice(args: argparse.Namespace):
    """The STT and TTS models `--models` names. PARLEY_STT_MODEL or PARLEY_TTS_MODEL, when set,
    wins over the choice for that stage (with the stage's other settings left to the user)."""
    from ops import localmodels
    from services.stt.whisper import check_model_folder, is_local_model

    cache = Path(args.model_cache)
    if args.models == "random":
        choice = localmodels.random_model_env(cache)
    elif args.models == "local":
        choice = localmodels.local_model_env(cache, args.whisper)
    else:
        choice = localmodels.ModelChoice(
            {}, ("STT  large-v3-turbo by name (faster-whisper downloads it)", "TTS  XTTS-v2 by name (coqui-tts)")
        )
    env, lines = dict(choice.env), list(choice.lines)
    for stage in ("STT", "TTS"):
        given = os.environ.get(f"PARLEY_{stage}_MODEL")
        if given:
            env = {k: v for k, v in env.items() if not k.startswith(f"PARLEY_{stage}_") or "_TURN_" in k}
            lines = [x for x in lines if not x.startswith(stage)] + [f"{stage}  {given} (PARLEY_{stage}_MODEL)"]
    stt = env.get("PARLEY_STT_MODEL") or os.environ.get("PARLEY_STT_MODEL", "")
    if stt and is_local_model(stt):
        check_model_folder(stt)
    return localmodels.ModelChoice(env, tuple(lines))


def _start_infrastructure(stack: contextlib.ExitStack, state: Path, args: argparse.Namespace):
    """nats-server, Postgres (unless DATABASE_URL), the S3 stand-in and, unless
    PARLEY_LLM_BASE_URL names one, the local LLM; each stopped by `stack` on the way out."""
    from ops import devstack, localmodels

    nats = devstack.NatsServer(state / "nats").start()
    stack.callback(nats.stop)
    database_url = os.environ.get("DATABASE_URL") or os.environ.get("PARLEY_DATABASE_URL")
    if not database_url:
        pg = devstack.PostgresCluster(state / "postgres").start()
        stack.callback(pg.stop)
        database_url = pg.url
    s3 = devstack.S3StandIn().start()
    stack.callback(s3.stop)
    env = {
        "PARLEY_NATS_URL": nats.url,
        "PARLEY_DATABASE_URL": database_url,
        "PARLEY_S3_ENDPOINT_URL": os.environ.get("PARLEY_S3_ENDPOINT_URL", s3.url),
        "PARLEY_S3_ACCESS_KEY_ID": os.environ.get("PARLEY_S3_ACCESS_KEY_ID", "dev"),
        "PARLEY_S3_SECRET_ACCESS_KEY": os.environ.get("PARLEY_S3_SECRET_ACCESS_KEY", "dev"),
        "PARLEY_S3_REGION": os.environ.get("PARLEY_S3_REGION", "us-east-1"),
        "PARLEY_AUTH_JWT_SECRET": os.environ.get("PARLEY_AUTH_JWT_SECRET") or _dev_secret(state),
    }
    lines = []
    if not os.environ.get("PARLEY_STT_TURN_LM_URL"):
        # Its own small server: a reply being written must not hold up the end of a turn.
        scorer = localmodels.LlamaServer(
            localmodels.gguf_path(), state / "logs" / "turn-scorer.log", threads=1, context=512
        )
        stack.callback(scorer.stop)
        scorer.start()
        turns = localmodels.turn_scorer_env(scorer)
        env.update(turns.env)
        lines += turns.lines
    if os.environ.get("PARLEY_LLM_BASE_URL"):
        model = os.environ.get("PARLEY_LLM_MODEL", "llama3.2")
        return env, [*lines, f"LLM  {model} at {os.environ['PARLEY_LLM_BASE_URL']} (PARLEY_LLM_BASE_URL)"]
    server = localmodels.LlamaServer(localmodels.gguf_path(), state / "logs" / "llm-server.log")
    stack.callback(server.stop)
    server.start()
    llm = localmodels.local_llm_env(server)
    env.update(llm.env)
    return env, [*lines, *llm.lines]


def _print_welcome(env: dict[str, str], args: argparse.Namespace, lines: list[str], state: Path) -> None:
    from services.gateway.auth import mint_token

    login = mint_token(env["PARLEY_AUTH_JWT_SECRET"], args.user, ttl_s=12 * 3600)
    print("models:")
    for line in sorted(lines, key=lambda x: ("STT", "EOT", "LLM", "TTS").index(x[:3])):
        print(f"  {line}")
    print(f"Parley is up: web client http://127.0.0.1:{args.port}/#token={login}")
    print(f"  (signed in as {args.user!r} for 12 h; `parley token --user NAME` signs in someone else)")
    print(f"websocket ws://127.0.0.1:{args.port}/v1/ws")
    print(f"API docs http://127.0.0.1:{args.port}/docs  logs in {state / 'logs'}  (Ctrl-C stops everything)")
    sys.stdout.flush()


def _supervise(procs: dict, state: Path) -> int:
    """Wait for Ctrl-C or SIGTERM (0), or for a service to die (1)."""
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


def models(args: argparse.Namespace) -> int:
    """Ready the local models once (quick when done) and say where they are."""
    from ops import localmodels

    try:
        for name in localmodels.WHISPER_MODELS:
            print(f"Whisper {name}: {localmodels.whisper_path(name, Path(args.model_cache))}")
        print(f"Smart Turn: {localmodels.smart_turn_path(Path(args.model_cache))}")
        print(f"LLM weights: {localmodels.gguf_path()}")
        print(f"llama-server: {localmodels.llama_server_binary()}")
    except localmodels.ModelError as exc:
        print(f"parley models: {exc}", file=sys.stderr)
        return 1
    return 0


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
        database = db.Database(pool)
        user_id = ids.user_id_for(user)
        await database.users.ensure(user_id, user)
        await database.keys.create(ids.new_id(), user_id, name, hash_api_key(key))
    finally:
        await pool.close()
    return key


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
        "--models",
        choices=("local", "published", "random"),
        default="local",
        help="local (default): real Whisper and a real small LLM from installed packages, offline, XTTS with "
        "tiny random weights; published: large-v3-turbo and XTTS-v2 by name (needs a model hub, a GPU is "
        "best); random: tiny random-weight Whisper and XTTS (benchmarks)",
    )
    d.add_argument("--whisper", choices=("base", "tiny.en"), default="base", help="packaged Whisper for --models local")
    d.add_argument("--port", type=int, default=8000, help="the gateway's port (web client, API)")
    d.add_argument("--model-cache", default=os.environ.get("PARLEY_MODEL_CACHE", ".cache/models"))
    d.add_argument("--user", default="me", help="who the printed web client link signs in")
    m = sub.add_parser("models", help="make the packaged local models ready (join Whisper base, build llama-server)")
    m.add_argument("--model-cache", default=os.environ.get("PARLEY_MODEL_CACHE", ".cache/models"))
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
    if args.command == "models":
        return models(args)
    if args.command == "api-key":
        print(asyncio.run(create_api_key(ServiceSettings(), args.user, args.name)))
        return 0
    if args.command == "ledger":
        from ops import ledger

        return ledger.main(args.conversations)
    return dev(args)


if __name__ == "__main__":
    sys.exit(main())
