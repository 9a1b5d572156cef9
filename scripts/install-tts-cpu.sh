#!/usr/bin/env bash
# Install coqui-tts (XTTS-v2) into the active venv on a CPU-only machine.
#
# Needs a venv that already has the base dependencies and a CPU torch (2.13.0+cpu).
# torchaudio goes in first, as the index's 2.11.0 wheel repacked without its CUDA-linked
# compiled extension (see requirements/tts-cpu.txt); then the pinned list, with torch
# constrained to the installed build so that pip errors out instead of downloading another
# torch with GBs of CUDA libraries. Idempotent: returns at once (well under a second) when
# everything pinned is already installed.
#
#   . .venv/bin/activate && scripts/install-tts-cpu.sh
#
# PYTHON=/path/to/python overrides the interpreter (default: the active venv's python).
# On GPU images torch and torchaudio come as a matching CUDA pair: do not use this script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="$ROOT/requirements/tts-cpu.txt"

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
    PY="$VIRTUAL_ENV/bin/python"
else
    echo "install-tts-cpu: activate the project's venv first (or set PYTHON=...)" >&2
    exit 2
fi

# Small helpers in Python: read installed versions without importing anything heavy.
helper() {
    "$PY" - "$@" <<'PYEOF'
import base64
import hashlib
import re
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LOCAL = "pyonly"  # local version label of the repacked torchaudio


def pins(req):
    for line in Path(req).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, ver = line.partition("==")
            yield name.strip(), ver.strip()


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def missing(req):
    """Print what is not installed as pinned; exit 1 if anything is."""
    if installed("torch") is None:
        print("install-tts-cpu: torch is not installed in this venv; install the base deps first", file=sys.stderr)
        sys.exit(2)
    todo = []
    for name, ver in pins(req):
        have = installed(name)
        # A pin matches the installed public version; local labels (+pyonly) don't count.
        if have is None or have.split("+", 1)[0] != ver:
            todo.append(f"{name}=={ver}")
        elif norm(name) == "torchaudio" and have != f"{ver}+{LOCAL}":
            todo.append(f"{name}=={ver}+{LOCAL}")
    print(" ".join(todo))
    sys.exit(1 if todo else 0)


def torchaudio_pin(req):
    print(dict((norm(n), v) for n, v in pins(req))["torchaudio"])


def repack(src, out_dir):
    """Copy a torchaudio wheel without torchaudio/lib/*.so, as version X+pyonly."""
    src = Path(src)
    with zipfile.ZipFile(src) as zin:
        old_info = next(n.split("/", 1)[0] for n in zin.namelist() if ".dist-info/" in n)
        name, ver = old_info[: -len(".dist-info")].rsplit("-", 1)
        new_ver = f"{ver}+{LOCAL}"
        new_info = f"{name}-{new_ver}.dist-info"
        dst = Path(out_dir) / src.name.replace(f"-{ver}-", f"-{new_ver}-", 1)
        record = []
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
            for item in zin.infolist():
                path = item.filename
                if re.fullmatch(rf"{name}/lib/[^/]+\.so(\.[0-9.]+)?", path) or path == f"{old_info}/RECORD":
                    continue
                data = zin.read(item)
                if path.startswith(f"{old_info}/"):
                    path = new_info + path[len(old_info):]
                    if path == f"{new_info}/METADATA":
                        data = re.sub(rb"(?m)^Version: .*$", f"Version: {new_ver}".encode(), data, count=1)
                item.filename = path
                zout.writestr(item, data)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                record.append(f"{path},sha256={digest},{len(data)}")
            record.append(f"{new_info}/RECORD,,")
            zout.writestr(f"{new_info}/RECORD", "\n".join(record) + "\n")
    print(dst)


globals()[sys.argv[1]](*sys.argv[2:])
PYEOF
}

rc=0
todo="$(helper missing "$REQ")" || rc=$?
if [[ $rc -eq 0 ]]; then
    echo "install-tts-cpu: coqui-tts CPU stack already installed"
    exit 0
elif [[ $rc -ne 1 ]]; then
    exit "$rc"
fi
echo "install-tts-cpu: installing $(wc -w <<<"$todo") pinned packages"

pip_q() { "$PY" -m pip --disable-pip-version-check -qq "$@"; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [[ " $todo " == *" torchaudio=="* ]]; then
    ta_version="$(helper torchaudio_pin "$REQ")"
    pip_q download --no-deps --only-binary=:all: -d "$TMP/dl" "torchaudio==$ta_version"
    mkdir -p "$TMP/wheel"
    wheel="$(helper repack "$TMP"/dl/torchaudio-*.whl "$TMP/wheel")"
    pip_q install --no-deps "$wheel"
fi

# torchaudio is now X+pyonly, which satisfies the X pin, so pip leaves it alone.
echo "torch==$("$PY" -c 'from importlib.metadata import version; print(version("torch"))')" >"$TMP/constraints.txt"
pip_q install -r "$REQ" -c "$TMP/constraints.txt"

"$PY" -c "import TTS; from TTS.tts.models.xtts import Xtts" >/dev/null
echo "install-tts-cpu: coqui-tts $("$PY" -c 'from importlib.metadata import version; print(version("coqui-tts"))') installed; import TTS works"
