"""The Realtime session as the client configured it, and `session.update` checked field by field.

Everything is validated before anything is applied: a refused update changes nothing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import msgspec

from services.common import db

from ..wire import Opening
from . import protocol as rt

IN_RATE = 24000
"""The API's PCM rate, both ways."""
FORMATS = {"audio/pcm": IN_RATE, "audio/pcmu": 8000, "audio/pcma": 8000}
"""The audio formats a session may use, each at its one rate: PCM16, or G.711 µ-law / A-law
as telephone bridges send it."""
PUSH_TO_TALK_MS = 3_600_000
"""Push-to-talk: no silence ends a turn (the client commits it); an hour bounds a forgotten one."""
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z]{2})?$")
EAGERNESS = {"high": (200, 800), "medium": (200, 1600), "auto": (200, 1600), "low": (300, 2400)}
"""semantic_vad's eagerness as the smart policy's (short, long) waits: how soon a pause is
judged, and the longest a person may pause mid-thought (docs/openai-realtime.md)."""


class Refused(Exception):
    """A client event Parley will not act on: answered with an OpenAI-shaped error event."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass
class Config:
    """The session as the client configured it (OpenAI's defaults where it did not)."""

    model: str
    instructions: str | None = None
    modalities: list[str] = field(default_factory=lambda: ["audio"])
    voice: str | None = None
    """As the client named it; None: the avatar's name is reported."""
    transcription: rt.Transcription | None = field(default_factory=lambda: rt.Transcription(model="parley-whisper"))
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    interrupt_response: bool = True
    turn_type: str = "server_vad"
    """`server_vad` (silence alone), `semantic_vad` (Parley's smart policy), or `none`
    (push-to-talk: the client's `input_audio_buffer.commit` ends each turn)."""
    eagerness: str = "auto"
    create_response: bool = True
    """False: a committed turn is stored unanswered until the client's `response.create`."""
    idle_timeout_ms: int | None = None
    """Prompt a caller silent this long after the avatar has spoken (realtime/idle.py)."""
    tools: list[dict] = field(default_factory=list)
    """The session's function tools as client tools (`Tool` builtins, realtime/tools.py)."""
    tool_choice: str | dict = "auto"
    """As the LLM takes it (a named function: `{"type": "function", "function": {"name": ...}}`)."""
    input_format: str = "audio/pcm"
    output_format: str = "audio/pcm"
    """Keys of FORMATS."""

    @property
    def hold(self) -> bool:
        """The client asks for each response to a spoken turn (as push-to-talk always does)."""
        return self.turn_type == "none" or not self.create_response


def updated(
    current: Config, s: rt.SessionIn, taken: set[str]
) -> tuple[Config, str | rt.VoiceRef | None | msgspec.UnsetType, list[rt.Warning]]:
    """The configuration `session.update` asks for, the voice it names (resolved by the
    caller), and the settings Parley took at their nearest behaviour instead (a warning each,
    reported in `session.updated`); `taken`: the names of the avatar's own tools."""
    from .tools import choice, function_tools

    warnings: list[rt.Warning] = []

    if s.type not in (msgspec.UNSET, "realtime"):
        raise Refused("unsupported", "only realtime sessions are supported (no transcription sessions)", "type")
    cfg = dataclasses.replace(current)
    audio = s.audio or rt.AudioIn()
    a_in = audio.input or rt.AudioInputIn()
    a_out = audio.output or rt.AudioOutputIn()
    if s.model is not msgspec.UNSET:
        cfg.model = s.model
    if s.instructions is not msgspec.UNSET:
        cfg.instructions = s.instructions or None
    given = s.output_modalities if s.output_modalities is not msgspec.UNSET else s.modalities
    if given is not msgspec.UNSET:
        cfg.modalities = modalities(given, "session.output_modalities")
    if s.tools is not msgspec.UNSET:
        cfg.tools = function_tools(_without_mcp(s.tools or [], warnings), "session.tools", taken)
    if s.tool_choice is not msgspec.UNSET:
        cfg.tool_choice = choice(s.tool_choice, cfg.tools, "session.tool_choice")
    cfg.input_format = check_format(a_in.format, s.input_audio_format, "session.audio.input.format", cfg.input_format)
    cfg.output_format = check_format(
        a_out.format, s.output_audio_format, "session.audio.output.format", cfg.output_format
    )
    transcription = a_in.transcription
    if transcription is msgspec.UNSET:
        transcription = s.input_audio_transcription
    if transcription is None:
        cfg.transcription = None
    elif transcription is not msgspec.UNSET:
        language = (transcription.language or "").lower() or None
        if language is not None and not _LANGUAGE.match(language):
            param = "session.audio.input.transcription.language"
            raise Refused("invalid_value", f"'{transcription.language}' is not an ISO-639-1 language code", param)
        cfg.transcription = rt.Transcription(
            model=transcription.model or "parley-whisper", language=language, prompt=transcription.prompt
        )
    turn = a_in.turn_detection if a_in.turn_detection is not msgspec.UNSET else s.turn_detection
    if turn is not msgspec.UNSET:
        apply_turn_detection(cfg, turn, warnings)
    voice = a_out.voice if a_out.voice is not msgspec.UNSET else s.voice
    return cfg, voice, warnings


def _without_mcp(tools: list, warnings: list[rt.Warning]) -> list:
    """Remote MCP servers are an avatar's (REST), not a session's: left out, with a warning."""
    kept = [t for t in tools if not (isinstance(t, dict) and t.get("type") == "mcp")]
    if len(kept) < len(tools):
        message = "remote MCP servers are set on the avatar (PUT /v1/avatars/{id}/tools), not per session: left out"
        warnings.append(rt.Warning(param="session.tools", message=message))
    return kept


def describe(
    cfg: Config,
    avatar: db.Avatar,
    session_id: str,
    conversation_id: str,
    expires_at: int,
    warnings: list[rt.Warning] | None = None,
) -> rt.Session:
    """The session as `session.created` and `session.updated` report it."""
    turn: rt.TurnDetection | rt.SemanticVad | None
    if cfg.turn_type == "none":
        turn = None
    elif cfg.turn_type == "semantic_vad":
        turn = rt.SemanticVad(
            eagerness=cfg.eagerness, create_response=cfg.create_response, interrupt_response=cfg.interrupt_response
        )
    else:
        turn = rt.TurnDetection(
            threshold=cfg.threshold,
            prefix_padding_ms=cfg.prefix_padding_ms,
            silence_duration_ms=cfg.silence_duration_ms,
            create_response=cfg.create_response,
            interrupt_response=cfg.interrupt_response,
            idle_timeout_ms=cfg.idle_timeout_ms,
        )
    from .tools import described, described_choice

    return rt.Session(
        id=session_id,
        tools=described(cfg.tools),
        tool_choice=described_choice(cfg.tool_choice),
        model=cfg.model,
        output_modalities=cfg.modalities,
        instructions=cfg.instructions or "",
        audio=rt.Audio(
            input=rt.AudioInput(
                format=audio_format(cfg.input_format), transcription=cfg.transcription, turn_detection=turn
            ),
            output=rt.AudioOutput(format=audio_format(cfg.output_format), voice=cfg.voice or avatar.name),
        ),
        expires_at=expires_at,
        parley=rt.ParleyInfo(
            conversation_id=conversation_id, avatar_id=avatar.id, avatar_name=avatar.name, warnings=warnings or []
        ),
    )


def modalities(given: list[str], param: str) -> list[str]:
    """`["audio"]` (audio with its transcript) or `["text"]`; the beta's `["text", "audio"]` is audio."""
    if not given or not set(given) <= {"text", "audio"}:
        raise Refused("invalid_value", "output_modalities must be ['audio'] or ['text']", param)
    return ["audio"] if "audio" in given else ["text"]


def check_format(fmt, beta: str | msgspec.UnsetType, param: str, current: str) -> str:
    """The format asked for (FORMATS), or `current` when none is; another one is refused
    rather than misheard."""
    if beta is not msgspec.UNSET:
        if beta not in BETA_FORMATS:
            raise Refused(
                "unsupported", f"audio format '{beta}' is not supported: use {', '.join(BETA_FORMATS)}", param
            )
        current = BETA_FORMATS[beta]
    if fmt in (msgspec.UNSET, None):
        return current
    if fmt.type not in FORMATS or fmt.rate not in (None, FORMATS[fmt.type]):
        rate = f" at {fmt.rate} Hz" if fmt.rate else ""
        choices = "audio/pcm at 24000 Hz, audio/pcmu or audio/pcma at 8000 Hz"
        raise Refused("unsupported", f"audio format '{fmt.type}'{rate} is not supported: use {choices}", param)
    return fmt.type


def audio_format(kind: str) -> rt.AudioFormat:
    """As the session reports it: PCM with its rate, G.711 by its type alone."""
    return rt.AudioFormat(type=kind, rate=IN_RATE if kind == "audio/pcm" else None)


def apply_turn_detection(
    cfg: Config, turn: rt.TurnDetectionIn | None, warnings: list[rt.Warning] | None = None
) -> None:
    """Values outside the API are refused; an API setting Parley does not honour exactly is
    taken at its nearest behaviour, with a warning."""
    param = "session.audio.input.turn_detection"
    warnings = warnings if warnings is not None else []
    if turn is None:
        cfg.turn_type = "none"
        cfg.idle_timeout_ms = None
        return
    kind = turn.type
    if kind not in ("server_vad", "semantic_vad"):
        message = f"turn detection '{kind}' is not supported: server_vad is used"
        warnings.append(rt.Warning(param=param + ".type", message=message))
        kind = "server_vad"
    if turn.eagerness is not None and turn.eagerness not in EAGERNESS:
        message = f"eagerness must be one of {', '.join(EAGERNESS)}"
        raise Refused("invalid_value", message, param + ".eagerness")
    cfg.create_response = turn.create_response is not False
    if turn.threshold is not None:
        if not 0.0 < turn.threshold < 1.0:
            raise Refused("invalid_value", "threshold must lie between 0 and 1", param + ".threshold")
        cfg.threshold = turn.threshold
    if turn.prefix_padding_ms is not None:
        if not 0 <= turn.prefix_padding_ms <= 2000:
            raise Refused("invalid_value", "prefix_padding_ms must lie in 0..2000", param + ".prefix_padding_ms")
        cfg.prefix_padding_ms = turn.prefix_padding_ms
    if turn.silence_duration_ms is not None:
        if not 100 <= turn.silence_duration_ms <= 5000:
            raise Refused("invalid_value", "silence_duration_ms must lie in 100..5000", param + ".silence_duration_ms")
        cfg.silence_duration_ms = turn.silence_duration_ms
    if turn.interrupt_response is not None:
        cfg.interrupt_response = turn.interrupt_response
    if turn.idle_timeout_ms is not None and not 1000 <= turn.idle_timeout_ms <= 600_000:
        raise Refused("invalid_value", "idle_timeout_ms must lie in 1000..600000", param + ".idle_timeout_ms")
    cfg.idle_timeout_ms = turn.idle_timeout_ms
    cfg.turn_type = kind
    cfg.eagerness = turn.eagerness or "auto"


def turn_choice(choice: str | dict) -> str | dict | None:
    """A tool choice as a turn carries it: `auto` is the LLM's own default, so it is left unset."""
    return None if choice == "auto" else choice


def apply_stt(cfg: Config, opening: Opening) -> None:
    """The session's recognition and barge-in as the client configured them."""
    t, o = cfg.transcription, opening.stt
    opening.barge_in = cfg.interrupt_response and cfg.turn_type != "none"
    opening.resume_ms = 0  # a cancelled response cannot be resumed: every barge-in is final
    o.hold = cfg.hold
    o.language = t.language if t else None
    o.end_of_turn_ms = PUSH_TO_TALK_MS if cfg.turn_type == "none" else cfg.silence_duration_ms
    o.turn_policy = "smart" if cfg.turn_type == "semantic_vad" else "vad"
    o.turn_short_ms, o.turn_long_ms = EAGERNESS[cfg.eagerness] if o.turn_policy == "smart" else (None, None)
    o.vad_threshold = cfg.threshold
    o.pad_ms = cfg.prefix_padding_ms
    o.instructions = cfg.instructions
    o.tools = cfg.tools or None
    o.tool_choice = turn_choice(cfg.tool_choice)
    o.prompt = t.prompt if t else None


def stt_view(cfg: Config) -> tuple:
    """What the STT session is opened with: a change reopens it."""
    t = cfg.transcription
    return (
        cfg.turn_type,
        cfg.hold,
        cfg.eagerness,
        cfg.threshold,
        cfg.prefix_padding_ms,
        cfg.silence_duration_ms,
        cfg.instructions,
        msgspec.json.encode([cfg.tools, cfg.tool_choice]),
        t.language if t else None,
        t.prompt if t else None,
    )
