"""XttsEngine on a tiny random-weight XTTS-v2 checkpoint, through coqui-tts's real code."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.tts.engine import DEFAULT_MODEL, SynthesisError, Voice, XttsEngine, resolve_model_dir, split_text

ROOT = Path(__file__).resolve().parents[3]
MODEL_CACHE = Path(os.environ.get("PARLEY_MODEL_CACHE", ROOT / ".cache" / "models"))
DEMO_VOICE = ROOT / "services" / "common" / "assets" / "demo_voice.wav"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    pytest.importorskip("TTS", reason="coqui-tts is not installed (scripts/install-tts-cpu.sh)")
    from tools.testmodels.xtts import build_xtts

    return build_xtts(MODEL_CACHE / "xtts-tiny", "tiny")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    """A few seconds of speech as WAV bytes."""
    if DEMO_VOICE.is_file():
        return DEMO_VOICE.read_bytes()
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("no demo voice and no espeak-ng/sox to make one")
    path = tmp_path_factory.mktemp("voice") / "ref.wav"
    speech = subprocess.run(
        ["espeak-ng", "-v", "en-us", "--stdout", "The quick brown fox jumps over the lazy dog, twice over."],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", "22050", "-c", "1", "-b", "16", "-e", "signed-integer", str(path)],
        input=speech,
        check=True,
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("latents")


@pytest.fixture(scope="module")
def engine(model_dir, latent_dir) -> XttsEngine:
    engine = XttsEngine(str(model_dir), latent_cache_dir=str(latent_dir))
    engine.load()
    return engine


def _as_stereo_44k(wav: bytes) -> bytes:
    """The same speech in another container layout: different bytes, same voice."""
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    out = io.BytesIO()
    sf.write(out, np.stack([audio, audio * 0.5], axis=1), 44100 if rate != 44100 else 48000, format="WAV")
    return out.getvalue()


@pytest.mark.engine
def test_loads_a_local_checkpoint_folder(model_dir, engine):
    assert not XttsEngine(str(model_dir)).ready  # nothing loads before load()
    assert engine.ready  # the module's engine, loaded from the folder's path
    assert engine.sample_rate == 24000
    engine.load()  # idempotent


@pytest.mark.engine
def test_stream_yields_int16_chunks(engine, reference):
    voice = engine.voice(reference)
    chunks = list(engine.stream("Hello there! This is a short test.", "en", voice))
    assert chunks
    for chunk in chunks:
        assert isinstance(chunk, np.ndarray)
        assert chunk.dtype == np.int16
        assert chunk.ndim == 1
        assert chunk.size > 0


@pytest.mark.engine
def test_first_chunk_comes_before_the_sentence_is_synthesised(engine, reference, monkeypatch):
    """The first chunk is handed over while XTTS has not yet produced the rest."""
    voice = engine.voice(reference)
    produced: list[int] = []
    inference_stream = engine._model.inference_stream

    def counting(*args, **kwargs):
        for chunk in inference_stream(*args, **kwargs):
            produced.append(1)
            yield chunk

    monkeypatch.setattr(engine._model, "inference_stream", counting)
    stream = engine.stream("Hello there! This is a short test of streaming.", "en", voice)
    next(stream)
    assert len(produced) == 1
    rest = list(stream)
    assert rest and len(produced) == 1 + len(rest)


@pytest.mark.engine
def test_lanes_stream_at_once_without_mixing_their_prompts(model_dir, reference):
    """Two sentences synthesised at the same moment in two lanes sound exactly as they do
    one after the other: each lane keeps its own prompt state over the shared weights."""
    engine = XttsEngine(str(model_dir), lanes=2)
    engine.load()
    engine._model.config.top_k = 1  # sampling with a single candidate: the output is deterministic
    voice = engine.voice(reference)
    texts = ["Hello there, this is the first lane.", "A different sentence, rather longer than the other one."]
    alone = [np.concatenate(list(engine.stream(t, "en", voice))) for t in texts]

    streams = [engine.stream(t, "en", voice) for t in texts]
    together: list[list[np.ndarray]] = [[], []]
    live = [0, 1]
    while live:  # step the two streams in turn, both lanes held mid-sentence
        for i in list(live):
            chunk = next(streams[i], None)
            if chunk is None:
                live.remove(i)
            else:
                together[i].append(chunk)
    for a, b in zip(alone, together):
        assert np.array_equal(a, np.concatenate(b))
    views = [engine._free.get().model for _ in range(2)]
    original = engine._model.gpt.gpt_inference
    assert views[0].gpt.gpt_inference is not views[1].gpt.gpt_inference
    assert all(v.gpt.gpt_inference.transformer is original.transformer for v in views)  # weights shared


@pytest.mark.engine
def test_text_is_normalised_for_speech_in_the_avatar_language(engine, reference, monkeypatch):
    voice = engine.voice(reference)
    spoken: list[tuple[str, str]] = []
    inference_stream = engine._model.inference_stream

    def spy(part, language, *args, **kwargs):
        spoken.append((part, language))
        return inference_stream(part, language, *args, **kwargs)

    monkeypatch.setattr(engine._model, "inference_stream", spy)
    list(engine.stream("It is 3:30 pm and costs $3.50.", "en-US", voice))
    list(engine.stream("Es kostet 12,50 € und kommt um 15:30 Uhr.", "de", voice))
    assert spoken == [
        ("It is three thirty p m and costs three dollars, fifty cents.", "en"),
        ("Es kostet zwölf Euro und fünfzig Cent und kommt um fünfzehn Uhr dreißig.", "de"),
    ]


@pytest.mark.engine
def test_long_text_is_spoken_in_parts(engine, reference, monkeypatch):
    voice = engine.voice(reference)
    text = " ".join(["This sentence is here to make the text longer than one part."] * 5)
    assert len(text) > 250  # XTTS's limit for English
    spoken: list[str] = []
    inference_stream = engine._model.inference_stream

    def spy(part, *args, **kwargs):
        spoken.append(part)
        return inference_stream(part, *args, **kwargs)

    monkeypatch.setattr(engine._model, "inference_stream", spy)
    chunks = list(engine.stream(text, "en-US", voice))
    assert len(spoken) == 2
    assert all(len(part) <= 250 and part.endswith("part.") for part in spoken)
    assert " ".join(spoken) == text
    assert len(chunks) >= 2


@pytest.mark.engine
def test_voice_is_computed_once_per_distinct_reference(engine, reference):
    before = engine.latents_computed
    first = engine.voice(reference)
    again = engine.voice(reference)
    assert isinstance(first, Voice)
    assert again is first
    assert engine.latents_computed - before <= 1  # 0 if an earlier test made it

    computed = engine.latents_computed
    other = engine.voice(_as_stereo_44k(reference))
    assert engine.latents_computed == computed + 1
    assert other.key != first.key
    assert engine.voice(_as_stereo_44k(reference)) is other
    assert engine.latents_computed == computed + 1


@pytest.mark.engine
def test_restarted_engine_loads_voices_from_disk(engine, model_dir, latent_dir, reference):
    original = engine.voice(reference)
    assert (latent_dir / f"{original.key}.pt").is_file()

    restarted = XttsEngine(str(model_dir), latent_cache_dir=str(latent_dir))
    restarted.load()
    voice = restarted.voice(reference)
    assert restarted.latents_computed == 0
    assert voice.key == original.key
    assert np.array_equal(voice.gpt_cond_latent.numpy(), original.gpt_cond_latent.numpy())
    assert np.array_equal(voice.speaker_embedding.numpy(), original.speaker_embedding.numpy())
    assert list(restarted.stream("Loaded from disk.", "en", voice))


@pytest.mark.engine
def test_published_name_resolves_through_coqui_and_the_hub_cache(model_dir, tmp_path, monkeypatch):
    """No hub here: a hub cache holding the tiny model stands in for the published files,
    and coqui's ModelManager finds it as it finds a downloaded XTTS-v2."""
    from huggingface_hub import constants
    from TTS.utils.manage import ModelManager

    item = ModelManager().models_dict["tts_models"]["multilingual"]["multi-dataset"]["xtts_v2"]
    repo = tmp_path / "hub" / ("models--" + item["repo_id"].replace("/", "--"))
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(model_dir / "config.json", snapshot)  # coqui may rewrite paths in it
    for name in ("vocab.json", "model.pth"):
        (snapshot / name).symlink_to(model_dir / name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TTS_HOME", str(tmp_path / "tts"))
    monkeypatch.setenv("COQUI_TOS_AGREED", "1")

    assert resolve_model_dir(DEFAULT_MODEL).resolve() == snapshot.resolve()


@pytest.mark.engine
@pytest.mark.parametrize("text", ["", "   ", "...!?", "\n\t"])
def test_text_with_nothing_to_speak_is_rejected(engine, reference, text):
    voice = engine.voice(reference)
    with pytest.raises(SynthesisError):
        list(engine.stream(text, "en", voice))


@pytest.mark.engine
def test_unsupported_language_is_rejected(engine, reference):
    voice = engine.voice(reference)
    with pytest.raises(SynthesisError):
        engine.stream("Hello.", "xx", voice)


@pytest.mark.engine
def test_unusable_reference_is_rejected(engine):
    from services.common.audio import AudioError

    with pytest.raises(AudioError):
        engine.voice(b"not audio at all")
    too_short = io.BytesIO()
    sf.write(too_short, np.zeros(2205, dtype=np.float32), 22050, format="WAV")
    with pytest.raises(AudioError):
        engine.voice(too_short.getvalue())


class _Sentences:
    """pysbd's interface, splitting at ". " only: enough to test the packing."""

    def segment(self, text: str) -> list[str]:
        parts = text.split(". ")
        return [p + ". " for p in parts[:-1]] + [parts[-1]]


def test_split_text_keeps_short_text_whole():
    assert split_text("Short text.", 250, _Sentences()) == ["Short text."]


def test_split_text_packs_sentences_then_clauses_then_words():
    sentences = "One two three. Four five six. Seven eight nine."
    assert split_text(sentences, 30, _Sentences()) == ["One two three. Four five six.", "Seven eight nine."]

    clauses = "alpha beta, gamma delta; epsilon zeta"
    assert split_text(clauses, 25, _Sentences()) == ["alpha beta, gamma delta;", "epsilon zeta"]

    words = "aaaa bbbb cccc dddd eeee"
    parts = split_text(words, 10, _Sentences())
    assert parts == ["aaaa bbbb", "cccc dddd", "eeee"]

    unbroken = "x" * 25
    assert split_text(unbroken, 10, _Sentences()) == ["x" * 10, "x" * 10, "x" * 5]
