"""The MCP server through which a run's model sees the client's tools (stdio, JSON-RPC 2.0).

The CLI offers the model tools only from MCP servers, so each run that has client tools gets
this server (started by the CLI, as settings.json `mcpServers` says; it dies with the CLI).
It lists the request's tools and, when the model calls one, tells the gateway over the run's
Unix socket and never answers: the gateway returns the calls to the client and ends the run,
so no client tool is ever executed here and the API gets no further request from the run.

Run as `python -I mcp_tool_server.py TOOLS_JSON SOCKET`: a standalone script (standard
library only, nothing of the gateway imported) because its start-up is on the CLI's.
It writes nothing but its replies on stdout and the calls on the socket.
"""

from __future__ import annotations

import json
import socket
import sys

PROTOCOL_VERSION = "2025-06-18"


def main(tools_path: str, socket_path: str) -> None:
    with open(tools_path, encoding="utf-8") as f:
        tools = json.load(f)
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict) or "method" not in message:
            continue
        method, request_id = message["method"], message.get("id")
        if method == "tools/call":
            notify_gateway(socket_path, message.get("params") or {})
            continue  # never answered: the gateway ends the run
        if request_id is None:
            continue  # a notification (initialized, cancelled): nothing to answer
        if method == "initialize":
            requested = (message.get("params") or {}).get("protocolVersion")
            result = {"protocolVersion": requested or PROTOCOL_VERSION, "capabilities": {"tools": {}},
                      "serverInfo": {"name": "gemini-proxy-client-tools", "version": "1"}}
            reply(request_id, result)
        elif method == "tools/list":
            reply(request_id, {"tools": tools})
        elif method == "ping":
            reply(request_id, {})
        else:
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request_id,
                                         "error": {"code": -32601, "message": f"no method {method}"}}) + "\n")
            sys.stdout.flush()


def reply(request_id: object, result: dict) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}) + "\n")
    sys.stdout.flush()


def notify_gateway(socket_path: str, params: dict) -> None:
    """One line per call: {"name", "arguments"}. A gateway that is gone is no error."""
    line = json.dumps({"name": params.get("name"), "arguments": params.get("arguments")}) + "\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(socket_path)
            sock.sendall(line.encode("utf-8"))
    except OSError:
        pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
