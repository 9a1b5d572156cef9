"""An avatar's tools: what the REST API stores and the orchestrator offers the LLM.

Three kinds (docs/rest.md, "Tools"):
- `client`: the client runs it; the native protocol gets a `tool.call` event and answers with a
  `tool.result` message;
- `webhook`: Parley POSTs the arguments to the tool's HTTPS URL, signed with the tool's secret
  (HMAC-SHA256 over the body) and with the call's id as the idempotency key;
- `mcp`: an MCP server over streamable HTTP; its tools are listed once per conversation and
  offered to the LLM as `<name>__<tool>`.

A tool's secret is written, never read back: `public()` says only whether it has one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MCP_SEPARATOR = "__"
MAX_TOOLS = 32
MAX_SCHEMA_BYTES = 16 * 1024


class ToolRejected(ValueError):
    """A tool definition or URL that cannot be used; the message says why."""


class Tool(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["client", "webhook", "mcp"]
    name: str
    """The function's name; for `mcp`, the server's label (its tools are `<name>__<tool>`)."""
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON Schema of the arguments (an object); for `mcp` the server's own schemas are used."""
    url: str | None = None
    secret: str | None = None
    """`webhook`: the key of the body's HMAC-SHA256 signature."""
    timeout_s: float = 10.0
    allowed_tools: list[str] | None = None
    """`mcp`: offer only these of the server's tools (default: all it lists)."""

    def public(self) -> dict[str, Any]:
        out = msgspec.to_builtins(self)
        out.pop("secret", None)
        out["has_secret"] = bool(self.secret)
        return out

    def function(self) -> dict[str, Any]:
        """As the OpenAI chat completions API takes it in `tools`."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def decode_tools(raw: list[dict[str, Any]] | None) -> list[Tool]:
    """Tools as stored (trusted: they were checked when written)."""
    return [msgspec.convert(t, Tool) for t in raw or []]


def check_tools(tools: list[Tool]) -> None:
    """Names, kinds and schemas; URLs are checked apart (`check_url`, which resolves them)."""
    import jsonschema

    if len(tools) > MAX_TOOLS:
        raise ToolRejected(f"at most {MAX_TOOLS} tools")
    seen: set[str] = set()
    for t in tools:
        if not NAME.match(t.name) or (t.kind == "mcp" and MCP_SEPARATOR in t.name):
            raise ToolRejected(f"tool name {t.name!r}: 1-64 letters, digits, _ or - (an MCP label without '__')")
        if t.name in seen:
            raise ToolRejected(f"tool name {t.name!r} is given twice")
        seen.add(t.name)
        if not 0.1 <= t.timeout_s <= 120:
            raise ToolRejected(f"tool {t.name!r}: timeout_s must be within 0.1-120")
        if t.kind == "client" and (t.url or t.secret):
            raise ToolRejected(f"tool {t.name!r}: a client tool has no url or secret")
        if t.kind != "client" and not t.url:
            raise ToolRejected(f"tool {t.name!r}: a {t.kind} tool needs its url")
        if t.kind != "mcp" and t.allowed_tools is not None:
            raise ToolRejected(f"tool {t.name!r}: allowed_tools is for MCP servers")
        if t.parameters.get("type") != "object":
            raise ToolRejected(f"tool {t.name!r}: parameters must be a JSON Schema of type object")
        if len(msgspec.json.encode(t.parameters)) > MAX_SCHEMA_BYTES:
            raise ToolRejected(f"tool {t.name!r}: parameters over {MAX_SCHEMA_BYTES} bytes")
        try:
            jsonschema.Draft202012Validator.check_schema(t.parameters)
        except jsonschema.SchemaError as exc:
            raise ToolRejected(f"tool {t.name!r}: parameters is not a JSON Schema: {exc.message}") from None


async def check_url(url: str, allow_private: bool) -> None:
    """A tool URL Parley may call: HTTPS to a public address. Loopback, private, link-local and
    other non-public addresses (and plain HTTP) only where the operator allows them
    (`PARLEY_TOOLS_ALLOW_PRIVATE_URLS`, for tools inside the deployment and for tests).
    Every address the name resolves to is checked, at write time and again before each call."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ToolRejected(f"tool url {url!r}: an https URL is needed")
    if parts.username or parts.password:
        raise ToolRejected("tool url: credentials in the URL are refused; a webhook signs with its secret")
    if parts.scheme == "http" and not allow_private:
        raise ToolRejected(f"tool url {url!r}: plain http is refused; use https")
    if allow_private:
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(5):
            infos = await loop.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ToolRejected(f"tool url host {parts.hostname!r} does not resolve: {exc.strerror}") from None
    except TimeoutError:
        raise ToolRejected(f"tool url host {parts.hostname!r} does not resolve: no answer in 5 s") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise ToolRejected(f"tool url host {parts.hostname!r} is a non-public address ({address}): refused")
