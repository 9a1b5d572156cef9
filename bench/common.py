"""What every benchmark shares: percentiles and a result file that says where it ran."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_result(path: str | Path, result: dict, **machine: object) -> Path:
    """Write the result as JSON with the machine, the commit and any settings that matter."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {
        **result,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "git": commit.stdout.strip(), **machine},
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return out


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process now, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Usage:
    """This process's CPU over a stretch of work, in cores (all threads), and its memory after."""

    def __init__(self) -> None:
        self._cpu = self._cpu_s()
        self._wall = time.perf_counter()

    @staticmethod
    def _cpu_s() -> float:
        t = os.times()
        return t.user + t.system

    def done(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        return {"cpu_cores": (self._cpu_s() - self._cpu) / wall if wall > 0 else 0.0, "rss_mib": rss_mib()}
