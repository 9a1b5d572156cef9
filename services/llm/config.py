"""Orchestrator settings. Any OpenAI-compatible endpoint: vLLM, Ollama, llama.cpp, OpenRouter, OpenAI."""

from __future__ import annotations

from services.common.settings import ServiceSettings


class LlmSettings(ServiceSettings):
    http_port: int = 8003
    llm_base_url: str = "http://127.0.0.1:11434/v1"
    llm_api_key: str | None = None
    llm_model: str = "llama3.2"
    llm_temperature: float = 0.7
    llm_max_tokens: int = 400
    llm_cache_size: int = 10000
    """Conversations whose avatars and history one replica keeps in memory."""
    llm_avatar_cache_s: float = 30.0
    """How soon an edited avatar (persona, voice, deletion) reaches conversations already cached."""
    llm_connect_timeout_s: float = 5.0
    llm_first_token_timeout_s: float = 15.0
    llm_stall_timeout_s: float = 15.0
    """The longest a reply's stream may go without a token once it has begun: an endpoint that
    hangs mid-reply fails the reply (`llm_timeout`) instead of holding the turn until
    `llm_total_timeout_s`."""
    llm_stream_usage: bool = True
    """Ask the stream for its token usage (`stream_options.include_usage`); off for an endpoint
    that refuses the field."""
    llm_total_timeout_s: float = 120.0
    llm_history_messages: int = 10
    # The first spoken piece may end at a clause after this many words (0: whole sentences only).
    llm_first_clause_words: int = 4
    llm_concurrency: int = 64
    # How long a newer turn waits for the reply it interrupted to stop before taking over.
    llm_turn_wait_s: float = 10.0
    # Tools (docs/rest.md, "Tools"): rounds of calls in one reply before it must answer in words,
    # the most one result may hold, and the filler said while a slow call runs.
    llm_tool_max_rounds: int = 4
    llm_tool_max_result_bytes: int = 65536
    llm_tool_retries: int = 2
    """Webhook attempts after the first, on a 5xx, a timeout or no connection (same idempotency key)."""
    llm_tool_filler_after_s: float = 1.0
    """A round of calls still running this long has the avatar say a short filler (0: never)."""
