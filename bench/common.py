"""What every benchmark shares: percentiles and a result file that says where it ran."""

from __future__ import annotations

import json
import os
import platform
import subprocess
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
