"""Random-weight Whisper models that faster-whisper loads exactly like published ones.

No model hub is reachable from CI or from the development machines, and no pretrained
weights may be fetched. Tests and benchmarks therefore run the real loading and decoding
code (faster-whisper over CTranslate2) on models built here: the published architecture
sizes with seeded random weights, and an offline byte-level BPE tokenizer laid out like
Whisper's (text tokens up to 50256, then Whisper's special tokens in Whisper's order).

A random model transcribes gibberish, but the pipeline needs it to transcribe *something*:
the special-token rows of the (tied) token embedding are scaled down so that greedy
decoding never picks end-of-text, a language tag or a timestamp, and the no-speech
probability stays near zero; text tokens that decode to whitespace only are zeroed so the
stripped text is never empty. The filler tokens that pad the vocabulary are ordinary
vocabulary entries spelling pseudo-words, so whatever the model generates reads as words.

    python -m tools.testmodels.whisper OUT_DIR --size tiny
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tools.testmodels import build_once

MARKER = ".complete"

EOT_ID = 50257
"""Whisper's <|endoftext|>; every id from here up is a special or timestamp token."""

# Whisper's language tokens, in the order of openai/whisper's LANGUAGES (token order).
LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu "
    "ta no th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn "
    "bs kk sq sw gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn "
    "mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
).split()

SPECIAL_ROW_SCALE = 0.05
"""Special-token embedding rows are multiplied by this: their logits stay near 0 while the
best of ~50k random text logits is several standard deviations above it."""


@dataclass(frozen=True)
class WhisperSize:
    d_model: int
    layers: int
    heads: int
    ffn: int
    n_mels: int
    languages: int
    quantization: str

    @property
    def vocab_size(self) -> int:
        # text + eot, sot, languages, translate, transcribe, sot_lm, sot_prev,
        # no-speech, no-timestamps, then 1501 timestamps (0.00 .. 30.00)
        return EOT_ID + 2 + self.languages + 6 + 1501


SIZES: dict[str, WhisperSize] = {
    "tiny": WhisperSize(384, 4, 6, 1536, 80, 99, "int8"),
    "base": WhisperSize(512, 6, 8, 2048, 80, 99, "int8"),
    "small": WhisperSize(768, 12, 12, 3072, 80, 99, "int8"),
    "large-v3": WhisperSize(1280, 32, 20, 5120, 128, 100, "float16"),
}

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A person talks to an avatar, and the avatar
answers in its own voice, one sentence at a time, with the text shown alongside.
Hello there, how are you today? I am fine, thank you, and I hope that you are well too.
Could you tell me what the weather will be like tomorrow morning in the city?
It should be sunny with a light breeze, although some clouds may arrive in the evening.
We walked along the river until the sun went down, talking about books, music and food.
Please remember to bring your umbrella, because the forecast says it might rain later.
She said that the meeting had been moved to Thursday afternoon at half past three.
Numbers such as one, two, three, four, five, six, seven, eight, nine and ten are common.
Speech recognition turns spoken words into written text; speech synthesis does the reverse.
Good morning, good afternoon, good evening and good night. See you soon, goodbye!
What time is it? Where are we going? Why did they leave so early? Who is coming with us?
"""

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]


def _pseudo_word(k: int) -> str:
    """The k-th three-syllable pseudo-word ("kamipo"); unique for k < 70**3."""
    n = len(_SYLLABLES)
    return _SYLLABLES[k // (n * n) % n] + _SYLLABLES[k // n % n] + _SYLLABLES[k % n]


def special_tokens(languages: int) -> list[str]:
    """Whisper's special tokens from id 50257 on, timestamps included, in Whisper's order."""
    no_speech = "<|nospeech|>" if languages >= 100 else "<|nocaptions|>"
    return (
        ["<|endoftext|>", "<|startoftranscript|>"]
        + [f"<|{code}|>" for code in LANGUAGES[:languages]]
        + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", no_speech]
        + ["<|notimestamps|>"]
        + ["<|%.2f|>" % (i * 0.02) for i in range(1501)]
    )


def build_tokenizer_json(languages: int) -> str:
    """A Whisper-shaped tokenizer.json built offline: trained BPE, filler words, specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT.splitlines(), trainer)

    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    k = 0
    while len(vocab) < EOT_ID - 1:
        word = "\u0120" + _pseudo_word(k)  # "Ġ" is the byte-level space: " kamipo"
        k += 1
        if word not in vocab:
            vocab[word] = len(vocab)
    # The published multilingual vocabulary ends its text tokens with an empty token at
    # 50256; CTranslate2 (4.8) tells multilingual models from English-only ones by it.
    vocab[""] = EOT_ID - 1
    spec["added_tokens"] = [
        {
            "id": EOT_ID + i,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, content in enumerate(special_tokens(languages))
    ]
    return json.dumps(spec, ensure_ascii=False)


def _blank_text_ids(tokenizer) -> list[int]:
    """Text token ids that decode to whitespace or nothing (a stripped transcript of only
    these would be empty)."""
    return [i for i in range(EOT_ID) if not tokenizer.decode([i]).strip()]


def _build_hf(hf_dir: Path, size: WhisperSize, seed: int) -> None:
    """Write a transformers Whisper checkpoint with seeded random weights into hf_dir."""
    import torch
    from tokenizers import Tokenizer
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    hf_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_json = build_tokenizer_json(size.languages)
    (hf_dir / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (hf_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "WhisperTokenizer",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "model_max_length": 1024,
            }
        ),
        encoding="utf-8",
    )
    WhisperFeatureExtractor(feature_size=size.n_mels).save_pretrained(str(hf_dir))

    tokenizer = Tokenizer.from_str(tokenizer_json)
    sot = tokenizer.token_to_id("<|startoftranscript|>")
    no_timestamps = tokenizer.token_to_id("<|notimestamps|>")
    blank = tokenizer.token_to_id("\u0120")
    assert tokenizer.get_vocab_size() == size.vocab_size

    config = WhisperConfig(
        vocab_size=size.vocab_size,
        num_mel_bins=size.n_mels,
        d_model=size.d_model,
        encoder_layers=size.layers,
        decoder_layers=size.layers,
        encoder_attention_heads=size.heads,
        decoder_attention_heads=size.heads,
        encoder_ffn_dim=size.ffn,
        decoder_ffn_dim=size.ffn,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=EOT_ID,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=[blank, EOT_ID],
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        # proj_out is tied to embed_tokens, so this shapes both inputs and output logits.
        emb = model.model.decoder.embed_tokens.weight
        emb[EOT_ID:] *= SPECIAL_ROW_SCALE
        emb[_blank_text_ids(tokenizer)] = 0.0

    gen = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        pad_token_id=EOT_ID,
        max_length=448,
        suppress_tokens=[],
        begin_suppress_tokens=[blank, EOT_ID],
        no_timestamps_token_id=no_timestamps,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": tokenizer.token_to_id(f"<|{code}|>") for code in LANGUAGES[: size.languages]},
        task_to_id={
            "translate": tokenizer.token_to_id("<|translate|>"),
            "transcribe": tokenizer.token_to_id("<|transcribe|>"),
        },
    )
    model.generation_config = gen
    if size.quantization == "float16":
        model = model.half()  # halves the temporary checkpoint; converted to float16 anyway
    model.save_pretrained(str(hf_dir))


def _convert(hf_dir: Path, ct2_dir: Path, quantization: str) -> None:
    import ctranslate2

    converter = ctranslate2.converters.TransformersConverter(
        str(hf_dir),
        copy_files=["tokenizer.json", "preprocessor_config.json"],
        load_as_float16=quantization == "float16",
        low_cpu_mem_usage=True,
    )
    converter.convert(str(ct2_dir), quantization=quantization, force=True)


@contextlib.contextmanager
def _quiet_transformers():
    """No weight-loading progress bars in test and benchmark logs."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _marker_text(size: str, seed: int) -> str:
    return f"size={size} seed={seed}\n"


def is_complete(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> bool:
    marker = Path(out_dir) / MARKER
    try:
        return marker.read_text(encoding="utf-8") == _marker_text(size, seed)
    except OSError:
        return False


def build_whisper(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Build (once) a random-weight CTranslate2 Whisper of a published size into out_dir.

    Returns at once when out_dir already holds this size and seed. The model is built in a
    temporary folder beside out_dir and renamed into place, so concurrent builders (pytest
    workers, benchmark scripts) never see or leave a half-written model: the first rename
    wins and the others discard their copy.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    out_dir = Path(out_dir).absolute()
    spec = SIZES[size]

    def build(model_dir: Path) -> None:
        with _quiet_transformers():
            _build_hf(model_dir.parent / "hf", spec, seed)
            _convert(model_dir.parent / "hf", model_dir, spec.quantization)
        (model_dir / MARKER).write_text(_marker_text(size, seed), encoding="utf-8")

    return build_once(out_dir, lambda: is_complete(out_dir, size, seed), build)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = build_whisper(args.out_dir, args.size, args.seed)
    megabytes = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6
    elapsed = time.perf_counter() - start
    print(f"{path} ({args.size}, seed {args.seed}): {megabytes:.0f} MB, {elapsed:.1f} s")


if __name__ == "__main__":
    main()
