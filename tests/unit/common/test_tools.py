"""Tool definitions as the REST API checks them, and the URLs Parley may call."""

from __future__ import annotations

import pytest

from services.common.tools import Tool, ToolRejected, check_tools, check_url

OBJ = {"type": "object", "properties": {"city": {"type": "string"}}}


def _hook(name: str = "weather", **kw) -> Tool:
    return Tool(kind="webhook", name=name, parameters=OBJ, url="https://tools.example.com/w", secret="x" * 16, **kw)


def test_good_tools_pass():
    check_tools([_hook(), Tool(kind="client", name="clock"), Tool(kind="mcp", name="shop", url="https://mcp.example.com")])


@pytest.mark.parametrize(
    ("tools", "why"),
    [
        ([_hook("bad name")], "1-64 letters"),
        ([_hook(), _hook()], "given twice"),
        ([Tool(kind="mcp", name="a__b", url="https://m.example.com")], "without '__'"),
        ([Tool(kind="client", name="c", url="https://x.example.com")], "no url or secret"),
        ([Tool(kind="webhook", name="w")], "needs its url"),
        ([Tool(kind="client", name="c", parameters={"type": "string"})], "of type object"),
        ([Tool(kind="client", name="c", parameters={"type": "object", "properties": 3})], "not a JSON Schema"),
        ([_hook(timeout_s=500)], "timeout_s"),
        ([_hook(allowed_tools=["x"])], "for MCP servers"),
        ([Tool(kind="client", name=f"t{i}") for i in range(33)], "at most 32"),
    ],
)
def test_bad_tools_are_refused_with_the_reason(tools, why):
    with pytest.raises(ToolRejected, match=why):
        check_tools(tools)


def test_a_secret_is_never_shown():
    shown = _hook().public()
    assert "secret" not in shown and shown["has_secret"] is True


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x",
        "https://localhost/x",
        "https://10.1.2.3/x",
        "https://192.168.0.1/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "https://[fe80::1]/x",
        "https://0.0.0.0/x",
    ],
)
async def test_non_public_addresses_are_refused(url):
    with pytest.raises(ToolRejected, match="non-public address"):
        await check_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://93.184.215.14/x", "plain http"),
        ("ftp://example.com/x", "https URL"),
        ("https://user:pw@93.184.215.14/x", "credentials"),
        ("https://no-such-host.invalid/x", "does not resolve"),
    ],
)
async def test_other_urls_refused(url, why):
    with pytest.raises(ToolRejected, match=why):
        await check_url(url, allow_private=False)


async def test_a_public_address_passes_and_the_operator_may_allow_private_ones():
    await check_url("https://93.184.215.14/hook", allow_private=False)
    await check_url("http://127.0.0.1:8080/hook", allow_private=True)
