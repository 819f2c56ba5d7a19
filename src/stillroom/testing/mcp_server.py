"""A small MCP server for tests and examples, on the ``mcp`` package's ``MCPServer`` (mcp 2's
name for FastMCP).

    python -m stillroom.testing.mcp_server                       # over stdio
    python -m stillroom.testing.mcp_server --http --port 8765    # streamable HTTP at /mcp

Its tools: ``add`` (two integers), ``capital`` (a country's capital, from a fixed table),
``fail`` (always raises: a tool error), ``sleep`` (waits, for timeouts), ``secret_length``
(the length of the environment variable ``STILLROOM_TEST_SECRET``, to show that a secret reached
the server without being written anywhere else) and ``crash`` (ends the server's process at
once, as a server that dies mid-run).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

CAPITALS = {"france": "Paris", "japan": "Tokyo", "kenya": "Nairobi", "peru": "Lima",
            "canada": "Ottawa", "italy": "Rome"}

# WARNING: a tool error is logged at INFO, which would fill the client's captured stderr.
server = MCPServer("stillroom-test", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def capital(country: str) -> str:
    """The capital city of a country."""
    city = CAPITALS.get(country.strip().lower())
    if city is None:
        # ToolError: MCPServer passes its message on; any other exception it hides.
        raise ToolError(f"no capital known for {country!r}")
    return city


@server.tool()
def fail(message: str = "this tool always fails") -> str:
    """A tool that always raises."""
    raise ToolError(message)


@server.tool()
async def sleep(seconds: float) -> str:
    """Wait for the given number of seconds, then say so."""
    await asyncio.sleep(seconds)
    return f"slept {seconds:g} s"


@server.tool()
def secret_length() -> int:
    """The length of STILLROOM_TEST_SECRET in this server's environment (-1 when unset)."""
    return len(os.environ.get("STILLROOM_TEST_SECRET", "")) or -1


@server.tool()
def crash() -> str:
    """End the server's process at once."""
    os._exit(3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP, not stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    if args.http:
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
