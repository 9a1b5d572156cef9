"""Builders of random-weight models that load through the same code paths as published ones."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(out_dir: Path, is_complete: Callable[[], bool], build: Callable[[Path], None]) -> Path:
    """Run `build(folder)` in a temp folder beside out_dir, then rename it into place.

    Concurrent builders (pytest workers, benchmark scripts) never see or leave a half-written
    model: `build` writes its completion marker last, the first rename wins, and the others
    discard their copy. A folder holding another build is set aside and replaced.
    """
    if is_complete():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        model_dir = work / "model"
        model_dir.mkdir()
        build(model_dir)
        for attempt in range(3):
            if is_complete():
                break
            if out_dir.exists():
                try:
                    os.rename(out_dir, work / f"stale-{attempt}")
                except OSError:
                    continue
            try:
                os.rename(model_dir, out_dir)
                break
            except OSError:
                continue
        if not is_complete():
            raise RuntimeError(f"could not install the built model into {out_dir}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir
