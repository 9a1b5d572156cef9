"""Speech to test and measure recognition with: espeak-ng sentences made on the spot, and real
human recordings with their reference transcripts, taken from a package index source
distribution (pocketsphinx's test data: LibriVox readings, public domain, and a short command,
BSD-licensed), fetched once into the git-ignored cache."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PARLEY_MODEL_CACHE", ROOT / ".cache" / "models")).parent / "speech"
SR = 16000
POCKETSPHINX = "pocketsphinx==5.1.1"
_SDIST = "pocketsphinx-5.1.1"


@dataclass(frozen=True)
class Recording:
    """One utterance of real speech: 16 kHz mono PCM16 WAV and what was said."""

    name: str
    path: Path
    text: str

    def pcm(self) -> np.ndarray:
        audio, rate = sf.read(self.path, dtype="int16")
        assert rate == SR and audio.ndim == 1, f"{self.path}: expected 16 kHz mono"
        return audio


def espeak(text: str, path: Path, voice: str = "en-us", rate: int = 175) -> np.ndarray:
    """espeak-ng's speech of `text` (`rate` words a minute) as 16 kHz mono PCM16, also written to `path`."""
    argv = ["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text]
    wav = subprocess.run(argv, check=True, capture_output=True).stdout
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", str(SR), "-c", "1", "-b", "16", "-e", "signed-integer", str(path)],
        input=wav,
        check=True,
        capture_output=True,
    )
    audio, _ = sf.read(path, dtype="int16")
    return audio


def human_recordings(cache: Path = CACHE) -> list[Recording]:
    """The LibriVox readings (about 25 s, one reader) and the "go forward" command."""
    base = cache / _SDIST
    if not (base / "done").exists():
        _fetch(cache)
    recordings = []
    for line in (base / "librivox" / "transcription").read_text().splitlines():
        m = re.fullmatch(r"<s> (.*) </s> \((\S+)\)", line.strip())
        if m:
            recordings.append(
                Recording(m.group(2).rsplit("-", 1)[1], base / "librivox" / f"{m.group(2)}.wav", m.group(1))
            )
    recordings.append(Recording("goforward", base / "goforward.wav", "go forward ten meters"))
    return recordings


def _fetch(cache: Path) -> None:
    """Download the source distribution (pip, no build) and keep only the recordings."""
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{_SDIST}.tar.gz"
    if not archive.exists():
        subprocess.run(
            # Only pocketsphinx itself as source: `:all:` would also build its build backend's
            # own requirements (Cython) from source to prepare the metadata, for minutes.
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "pocketsphinx", POCKETSPHINX],
            cwd=cache,
            check=True,
        )
    base = cache / _SDIST
    (base / "librivox").mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix(f"{_SDIST}/test/data/")
            keep = name.startswith("librivox/") and name.endswith((".wav", "transcription"))
            if keep or name == "goforward.raw" or member.name == f"{_SDIST}/LICENSE":
                data = tar.extractfile(member).read()
                (base / Path(name).name if member.name.endswith("LICENSE") else base / name).write_bytes(data)
    raw = np.frombuffer((base / "goforward.raw").read_bytes(), dtype="<i2")
    sf.write(base / "goforward.wav", raw, SR, subtype="PCM_16")
    for wav in (base / "librivox").glob("*.wav"):
        info = sf.info(wav)
        assert info.samplerate == SR and info.channels == 1, f"{wav}: {info}"
    archive.unlink()
    (base / "done").write_text("ok\n")
