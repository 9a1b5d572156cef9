"""An MCP server over streamable HTTP on a free loopback port (the `mcp` package's own server),
for the MCP tool tests: `find_lesson` answers, `grade` raises, and every JSON-RPC method asked
is counted (`asked`), so a test can see how often the tools were listed."""

from __future__ import annotations

import json
from collections import Counter

from mcp.server.mcpserver import MCPServer

from tests.fakes.threaded import ThreadedServer


class FakeMcp(ThreadedServer):
    def __init__(self) -> None:
        super().__init__()
        self.asked: Counter[str] = Counter()
        server = MCPServer("lessons")

        @server.tool()
        def find_lesson(topic: str) -> dict:
            """Find the lesson on a topic."""
            return {"lesson": f"The lesson on {topic}", "minutes": 20}

        @server.tool()
        def grade(answer: str) -> str:
            """Grade an answer."""
            raise ValueError("the grader is broken")

        app = server.streamable_http_app()

        async def counting(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            chunks = []

            async def replay():
                msg = await receive()
                chunks.append(msg.get("body", b""))
                try:
                    self.asked[json.loads(b"".join(chunks)).get("method", "")] += 1
                except (ValueError, AttributeError):
                    pass
                return msg

            return await app(scope, replay, send)

        self.serve(counting)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"
