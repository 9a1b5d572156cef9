"""Run chosen tests many times, several at once, with the CPU kept busy beside them: a test that
fails once in a while fails here within a few dozen runs, where a quiet machine hides it.

Each run is its own pytest process (its own nats-server, Postgres cluster and S3 endpoint, from
the fixtures), so parallel runs share nothing but the CPU. A failed run's output is kept.

    scripts/repeat -n 50 -j 2 --load 1 tests/e2e/test_realtime.py::test_a_typed_turn_then_a_cancelled_response
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _burn() -> None:
    while True:
        pass


def _run(n: int, tests: list[str], logs: Path, timeout_s: float) -> tuple[int, bool, float]:
    log = logs / f"run-{n:03d}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        try:
            code = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
    passed = code == 0
    if passed:
        log.unlink()
    return n, passed, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", nargs="+", help="pytest node ids or paths (and pytest options after --)")
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("-j", "--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--load", type=int, default=1, help="processes spinning on the CPU beside the runs")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="parley-repeat-"))
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()
    failed: list[int] = []
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            jobs = [pool.submit(_run, n, args.tests, logs, args.timeout) for n in range(args.runs)]
            for job in jobs:
                n, passed, seconds = job.result()
                print(f"run {n:3d}: {'pass' if passed else 'FAIL'} in {seconds:.0f} s", flush=True)
                if not passed:
                    failed.append(n)
    finally:
        for b in burners:
            b.terminate()
    print(
        f"{args.runs - len(failed)}/{args.runs} passed, {len(failed)} failed "
        f"({args.jobs} at once, {args.load} CPU burner(s)); failed runs' output in {logs}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
