"""The words signal: the chance that what the person said so far is a finished turn.

As LiveKit's turn detector does it: the user's words, lower-cased and without punctuation
(Whisper writes a full stop after an unfinished sentence too), as an unfinished chat message;
a small language model's probability that the message ends there is the signal. An instruct
model not tuned for this (the embedded SmolLM2) writes the sentence's closing punctuation
before its end-of-message token, so both count: P(end token) + P(". ? !") next. It is a
low number even for a finished sentence (a few per cent), hence its own threshold
(docs/benchmarks.md, "Turn taking"). Any OpenAI-compatible server that returns
`logprobs` on `/v1/completions` serves it (llama.cpp's llama-server, vLLM).
"""

from __future__ import annotations

import math
import re

import httpx

_WORD = re.compile(r"[\w']+")
_CLOSING = {".", "?", "!"}


class WordsError(RuntimeError):
    """The scoring server failed or answered in a form this does not read."""


def normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


class WordsScorer:
    """Scores transcripts over HTTP; calls from many sessions go out concurrently and the
    server batches them (llama-server's slots, vLLM's continuous batching)."""

    def __init__(
        self,
        base_url: str,
        model: str = "",
        end_token: str = "<|im_end|>",
        template: str = "<|im_start|>user\n{text}",
        timeout_s: float = 2.0,
        top: int = 20,
    ):
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.end_token, self.template, self.top = model, end_token, template, top
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def probability(self, text: str) -> float:
        """P(the message ends here) after `text`; tokens outside the server's top few count 0."""
        words = normalise(text)
        if not words:
            return 0.0
        body = {"prompt": self.template.format(text=words), "max_tokens": 1, "logprobs": self.top, "temperature": 0}
        if self.model:
            body["model"] = self.model
        try:
            response = await self._http.post(self.url, json=body)
            response.raise_for_status()
            top = _top_logprobs(response.json()["choices"][0]["logprobs"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise WordsError(f"turn scoring at {self.url} failed: {exc!r}") from None
        return sum(math.exp(lp) for token, lp in top if self._ends(token) and isinstance(lp, (int, float)))

    def _ends(self, token: str) -> bool:
        # llama-server writes special tokens (the end of message among them) as empty text.
        return token in (self.end_token, "") or token.strip() in _CLOSING

    async def close(self) -> None:
        await self._http.aclose()


def _top_logprobs(logprobs: dict) -> list[tuple[str, float]]:
    """The first token's alternatives, from OpenAI's completions form (`top_logprobs`: one
    token-to-logprob map per token, as vLLM writes it) or the chat form llama-server writes
    (`content`: per token, a list of `{"token", "logprob"}`)."""
    if "top_logprobs" in logprobs:
        return list(logprobs["top_logprobs"][0].items())
    return [(t["token"], t["logprob"]) for t in logprobs["content"][0]["top_logprobs"]]
