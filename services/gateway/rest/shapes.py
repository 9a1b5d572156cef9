"""What the REST API accepts and answers: request bodies and fields, responses, and the errors
every route may answer, so the OpenAPI schema (and clients generated from it) says it all."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
RoleTitle = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
Persona = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=8000)]
Language = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z]{2}(-[A-Za-z0-9]{2,8})?$"),
    AfterValidator(str.lower),
]
"""ISO 639-1, optionally with a region: `en`, `pt-br`, `zh-cn`."""


class Problem(BaseModel):
    """Every error the API answers itself: `detail` says why."""

    detail: str


class Unprocessable(BaseModel):
    """422: a request that does not fit the schema (`detail` lists each field's error, as
    FastAPI reports them) or whose content cannot be used (`detail` says why)."""

    detail: str | list[dict[str, Any]]


def problems(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for error statuses, e.g. `problems(s404="no such avatar")`."""
    return {int(code[1:]): {"model": Problem, "description": text} for code, text in described.items()}


ROUTER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **problems(
        s401="no credential, or an expired or invalid one (`WWW-Authenticate: Bearer`)",
        s403="a browser origin that is not allowed",
        s413="the request body is over its limit",
        s503="the gateway is not ready, or a service it needs did not answer",
    ),
    422: {"model": Unprocessable, "description": "the request does not fit the schema, or its content cannot be used"},
}
"""What any route may answer besides its own results: the credential check, the origin
allowlist, the body limit and the readiness check run before every route, so the schema
(and clients generated from it) know every status a call can get."""
VOICE_UPLOAD = problems(s413="the voice file is too large", s415="the voice file is not decodable audio")


ToolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class ToolIn(BaseModel):
    """One tool (docs/rest.md, "Tools")."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["client", "webhook", "mcp"]
    name: ToolName = Field(description="the function's name; for `mcp`, the server's label")
    description: str = Field("", max_length=2000)
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments, an object")
    url: str | None = Field(None, max_length=2000, description="`webhook`: where calls are POSTed; `mcp`: the server")
    secret: str | None = Field(
        None, min_length=16, max_length=512, description="`webhook`: the HMAC-SHA256 key; never shown again"
    )
    timeout_s: float = Field(10.0, ge=0.1, le=120)
    allowed_tools: list[ToolName] | None = Field(None, max_length=128, description="`mcp`: offer only these")


class ToolsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tools: list[ToolIn] = Field(max_length=32)


class ToolOut(BaseModel):
    kind: str
    name: str
    description: str
    parameters: dict[str, Any]
    url: str | None
    has_secret: bool
    timeout_s: float
    allowed_tools: list[str] | None


class AvatarOut(BaseModel):
    id: str
    name: str
    role_title: str | None
    persona_prompt: str = Field(description="may hold {name}, {role} and {language}, filled in when it is used")
    language: str
    has_voice: bool
    public: bool = Field(description="a public avatar has no owner: everyone may use it, nobody may change it")
    tools: list[ToolOut] = Field(default_factory=list)
    version: int = Field(1, description="counts the avatar's changes, its tools included")
    created_at: dt.datetime
    updated_at: dt.datetime


class AvatarPatch(BaseModel):
    """The fields to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    role_title: RoleTitle | None = Field(default=None, description="null or empty clears it")
    persona_prompt: Persona | None = None
    language: Language | None = None

    @model_validator(mode="after")
    def _only_role_title_clears(self) -> AvatarPatch:
        for field in ("name", "persona_prompt", "language"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class ConversationIn(BaseModel):
    avatar_ids: list[str] = Field(default_factory=list, max_length=10, description="defaults to the demo avatar")


class LastMessage(BaseModel):
    role: str
    avatar_id: str | None
    text: str = Field(description="its first 200 characters")
    created_at: dt.datetime


class ConversationOut(BaseModel):
    id: str
    avatar_ids: list[str]
    title: str | None
    created_at: dt.datetime
    updated_at: dt.datetime = Field(description="its latest message's time, or its creation")
    last_message: LastMessage | None


class ConversationPage(BaseModel):
    items: list[ConversationOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class MessageOut(BaseModel):
    id: str
    role: str
    avatar_id: str | None
    reply_to: str | None
    source: str | None
    text: str
    status: str
    error: str | None
    audio_key: str | None
    audio_url: str | None
    audio_duration_s: float | None
    audio_expired: bool = False
    """The reply's audio was deleted after the retention period; its text stays."""
    timings: dict
    created_at: str
    removed: bool = Field(False, description="taken out of the history by the client: the LLM no longer sees it")


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class ApiKeyIn(BaseModel):
    name: str = Field(default="", max_length=100)


class ApiKeyOut(BaseModel):
    id: str
    name: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None


class ApiKeyCreated(BaseModel):
    id: str
    name: str
    key: str = Field(description="the key itself; it is not shown again")
