"""The Realtime API's function tools and `tool_choice`, checked, as Parley's client tools.

A session's (or one response's) `tools` are functions the client runs: each becomes a
`services.common.tools.Tool` of kind `client`, carried on the session's turns beside the
avatar's own tools (a name the avatar's tools already use is refused). Remote MCP servers are
set on the avatar (REST), not per session. docs/openai-realtime.md, "Tools".
"""

from __future__ import annotations

from typing import Any

import msgspec

from services.common.tools import Tool, ToolRejected, check_tools

from .config import Refused

CLIENT_TOOL_TIMEOUT_S = 60.0
"""How long a reply waits for a Realtime client's `function_call_output`."""
CHOICES = ("auto", "none", "required")


def function_tools(raw: list[Any], param: str, taken: set[str]) -> list[dict]:
    """The tools as stored on a turn (`Tool` builtins); `taken`: names of the avatar's tools."""
    tools = []
    for n, t in enumerate(raw):
        where = f"{param}[{n}]"
        if not isinstance(t, dict):
            raise Refused("invalid_type", "a tool must be an object", where)
        kind = t.get("type")
        if kind == "mcp":
            message = "remote MCP servers are set on the avatar (PUT /v1/avatars/{id}/tools), not per session"
            raise Refused("unsupported", message, where + ".type")
        if kind != "function":
            raise Refused("invalid_value", f"tool type '{kind}' is not supported: use function tools", where + ".type")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise Refused("missing_required_parameter", "a function tool needs its name", where + ".name")
        if name in taken:
            raise Refused("invalid_value", f"the avatar has a tool named '{name}' already", where + ".name")
        try:
            tools.append(
                Tool(
                    kind="client",
                    name=name,
                    description=str(t.get("description") or "")[:2000],
                    parameters=t.get("parameters") or {"type": "object", "properties": {}},
                    timeout_s=CLIENT_TOOL_TIMEOUT_S,
                )
            )
        except (TypeError, msgspec.ValidationError) as exc:
            raise Refused("invalid_value", f"the function tool is not valid: {exc}", where) from None
    try:
        check_tools(tools)
    except ToolRejected as exc:
        raise Refused("invalid_value", str(exc), param) from None
    return [msgspec.to_builtins(t) for t in tools]


def choice(given: Any, tools: list[dict], param: str) -> str | dict:
    """`auto`, `none`, `required`, or `{"type": "function", "name": <one of the tools>}`."""
    if given in CHOICES:
        return given
    if isinstance(given, dict) and given.get("type") == "function":
        if given.get("name") not in {t["name"] for t in tools}:
            message = f"tool_choice names no function tool: '{given.get('name')}'"
            raise Refused("invalid_value", message, param + ".name")
        return {"type": "function", "function": {"name": given["name"]}}
    raise Refused("invalid_value", "tool_choice must be auto, none, required or a function tool", param)


def described(tools: list[dict]) -> list[dict]:
    """As the session reports them: OpenAI's function tool objects."""
    return [
        {"type": "function", "name": t["name"], "description": t["description"], "parameters": t["parameters"]}
        for t in tools
    ]


def described_choice(stored: str | dict) -> str | dict:
    if isinstance(stored, dict):
        return {"type": "function", "name": stored["function"]["name"]}
    return stored
