"""Random-weight XTTS-v2 checkpoints that coqui-tts loads exactly like the published one.

No model hub is reachable from CI or from the development machines, and no pretrained
weights may be fetched. Tests and benchmarks therefore run the real XTTS code (coqui-tts's
`Xtts.load_checkpoint` and `inference_stream`) on a checkpoint folder built here with the
published file layout: `config.json` (an `XttsConfig`), `model.pth` (`{"model": state_dict}`)
and `vocab.json` (a `tokenizers` BPE with XTTS's special and language tokens). Nothing
else is needed for inference: no DVAE, mel statistics or separate speaker-encoder file.

The tokenizer is character-level (a BPE with an alphabet and no merges) over the scripts
the XTTS text cleaners emit; "full" pads it with unreachable entries to the published
6681 text tokens, so the full model has the published parameter count.

A random GPT would talk forever: the stop audio token's row of the output head is zeroed
and its bias set very low, so it is never sampled and every generation runs to the cap
that `model_args.gpt_max_audio_tokens` sets in config.json (XTTS generates at most that
value minus 3 audio tokens, about 46 ms of audio each). The cap is part of the
architecture (it sizes the audio position embedding), which is why it lives in the
checkpoint and the engine needs no test-only switch.

    python -m tools.testmodels.xtts OUT_DIR --size tiny
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tools.testmodels import build_once

MARKER = ".complete"
FORMAT = 1
"""Bump when the builder's output changes, so cached folders are rebuilt."""

LANGUAGES = "en es fr de it pt pl tr ru nl cs ar zh-cn hu ko ja hi".split()
"""XTTS-v2's languages, as in its published config."""

HEAD_SPECIALS = ["[STOP]", "[UNK]", "[SPACE]"]
"""Ids 0, 1, 2 as in the published vocab; `[START]` and the language tags follow the
alphabet."""

STOP_AUDIO_TOKEN = 1025
STOP_LOGIT_BIAS = -1.0e4


@dataclass(frozen=True)
class XttsSize:
    layers: int
    model_dim: int
    heads: int
    text_tokens: int | None
    """Vocabulary size to pad to; None keeps the bare alphabet."""
    max_audio_tokens: int


SIZES: dict[str, XttsSize] = {
    # 32 -> 29 generated tokens: with the default stream_chunk_size of 20 a stream yields
    # two chunks (one full, one final), about 1.3 s of audio.
    "tiny": XttsSize(layers=2, model_dim=256, heads=4, text_tokens=None, max_audio_tokens=32),
    # The published XTTS-v2 sizes and cap (605 -> up to 602 tokens, about 28 s of audio).
    "full": XttsSize(layers=30, model_dim=1024, heads=16, text_tokens=6681, max_audio_tokens=605),
}

# Published XTTS-v2 inference and voice-cloning settings (config.json of v2.0.3).
INFERENCE_SETTINGS = {
    "temperature": 0.75,
    "length_penalty": 1.0,
    "repetition_penalty": 5.0,
    "top_k": 50,
    "top_p": 0.85,
    "num_gpt_outputs": 1,
    "gpt_cond_len": 30,
    "gpt_cond_chunk_len": 4,
    "max_ref_len": 30,
    "sound_norm_refs": False,
}


def _alphabet() -> list[str]:
    """Every character the XTTS cleaners can hand the tokenizer for its 17 languages:
    ASCII, Latin accents, Greek, Cyrillic, Arabic, Devanagari (Chinese, Japanese and
    Korean are romanised before tokenising). Anything else encodes as [UNK]."""
    ranges = [(0x21, 0x7E), (0xA1, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F)]
    chars = [chr(c) for lo, hi in ranges for c in range(lo, hi + 1)]
    return [c for c in chars if c.isprintable() and not c.isspace()]


def build_vocab_json(text_tokens: int | None = None) -> str:
    """An XTTS-shaped vocab.json: [STOP] [UNK] [SPACE], the alphabet, the language tags,
    [START], then (if asked) unreachable filler entries up to `text_tokens`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = HEAD_SPECIALS + [f"[{lang}]" for lang in LANGUAGES] + ["[START]"]
    tokens = HEAD_SPECIALS + _alphabet() + specials[len(HEAD_SPECIALS) :]
    if text_tokens is not None:
        if text_tokens < len(tokens):
            raise ValueError(f"text_tokens={text_tokens} is below the {len(tokens)} tokens needed")
        # Multi-character entries without merges: the BPE can never produce them.
        tokens += [f"<unused{i}>" for i in range(text_tokens - len(tokens))]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(specials)
    return tokenizer.to_str()


def _build(work: Path, spec: XttsSize, seed: int) -> None:
    """Write config.json, vocab.json and model.pth for `spec` into `work`."""
    import torch
    from tokenizers import Tokenizer
    from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig
    from TTS.tts.models.xtts import Xtts

    vocab_json = build_vocab_json(spec.text_tokens)
    (work / "vocab.json").write_text(vocab_json, encoding="utf-8")
    tokenizer = Tokenizer.from_str(vocab_json)

    args = XttsArgs(
        gpt_layers=spec.layers,
        gpt_n_model_channels=spec.model_dim,
        gpt_n_heads=spec.heads,
        gpt_max_audio_tokens=spec.max_audio_tokens,
        gpt_max_text_tokens=402,
        gpt_max_prompt_tokens=70,
        # What load_checkpoint derives from vocab.json, so the saved config is truthful.
        gpt_number_text_tokens=max(tokenizer.get_vocab().values()) + 1,
        gpt_start_text_token=tokenizer.token_to_id("[START]"),
        gpt_stop_text_token=tokenizer.token_to_id("[STOP]"),
        gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024,
        gpt_stop_audio_token=STOP_AUDIO_TOKEN,
        gpt_code_stride_len=1024,
        gpt_use_masking_gt_prompt_approach=True,
        gpt_use_perceiver_resampler=True,
        decoder_input_dim=spec.model_dim,
        d_vector_dim=512,
        cond_d_vector_in_each_upsampling_layer=True,
    )
    config = XttsConfig(model_args=args, audio=XttsAudioConfig(), languages=list(LANGUAGES), **INFERENCE_SETTINGS)
    config.save_json(str(work / "config.json"))

    torch.manual_seed(seed)
    model = Xtts(config)
    with torch.no_grad():
        head = model.gpt.mel_head
        head.weight[STOP_AUDIO_TOKEN] = 0.0
        head.bias[STOP_AUDIO_TOKEN] = STOP_LOGIT_BIAS
    torch.save({"model": model.state_dict()}, work / "model.pth")


def _spec(size: str, max_audio_tokens: int | None) -> XttsSize:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    spec = SIZES[size]
    if max_audio_tokens is not None:
        if max_audio_tokens < 4:
            raise ValueError("max_audio_tokens must be at least 4 (XTTS generates it minus 3)")
        spec = replace(spec, max_audio_tokens=max_audio_tokens)
    return spec


def _marker_text(size: str, seed: int, spec: XttsSize) -> str:
    return f"format={FORMAT} size={size} seed={seed} max_audio_tokens={spec.max_audio_tokens}\n"


def is_complete(out_dir: str | Path, size: str = "tiny", seed: int = 0, *, max_audio_tokens: int | None = None) -> bool:
    expected = _marker_text(size, seed, _spec(size, max_audio_tokens))
    try:
        return (Path(out_dir) / MARKER).read_text(encoding="utf-8") == expected
    except OSError:
        return False


def build_xtts(out_dir: str | Path, size: str = "tiny", seed: int = 0, *, max_audio_tokens: int | None = None) -> Path:
    """Build (once) a random-weight XTTS-v2 checkpoint folder of the given size into out_dir.

    `max_audio_tokens` overrides the size's cap on generated audio (see the module
    docstring), e.g. for a full-size benchmark that should speak ~3 s per sentence (68).
    Returns at once when out_dir already holds this build. The folder is built in a
    temporary folder beside out_dir, its marker written last, and renamed into place, so
    concurrent builders never see or leave a half-written model: the first rename wins
    and the others discard their copy. The same arguments give the same weights.
    """
    spec = _spec(size, max_audio_tokens)
    out_dir = Path(out_dir).absolute()

    def build(model_dir: Path) -> None:
        _build(model_dir, spec, seed)
        (model_dir / MARKER).write_text(_marker_text(size, seed, spec), encoding="utf-8")

    return build_once(out_dir, lambda: is_complete(out_dir, size, seed, max_audio_tokens=max_audio_tokens), build)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-audio-tokens", type=int, default=None, help="override the size's generation cap")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = build_xtts(args.out_dir, args.size, args.seed, max_audio_tokens=args.max_audio_tokens)
    megabytes = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6
    print(f"{path} ({args.size}, seed {args.seed}): {megabytes:.0f} MB, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
