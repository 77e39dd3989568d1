"""The MCP server through which a run's model sees the client's tools (stdio, JSON-RPC 2.0).

The CLI offers the model tools only from MCP servers, so each run that has client tools gets
this server (started by the CLI, as settings.json `mcpServers` says). It lists the request's
tools and, when the model calls one, reports the call to the gateway over the run's Unix
socket (proxy/cli/tool_calls.py) and waits for its `ok`. No client tool is ever executed here:
- headless (`--hold`): the call is never answered; the gateway returns the turn's calls to
  the client and ends the run, so the API gets no further request from it.
- ACP: the call is answered at once with an empty result, so that the CLI goes on to the
  turn's next call; the session's turn limit (`model.maxSessionTurns: 1`) then ends the prompt
  before the results could be sent to the API.
The server exits when the gateway closes the socket (the request is over): an ACP session
cannot be closed, so its server would otherwise live as long as the CLI process.

Run as `python -I -S mcp_tool_server.py TOOLS_JSON SOCKET [--hold]`: a standalone script
(standard library only, nothing of the gateway imported) because its start-up is on the
CLI's. It writes nothing but its replies on stdout and the calls on the socket.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading

PROTOCOL_VERSION = "2025-06-18"
ACK_TIMEOUT = 5.0  # seconds to wait for the gateway's `ok` to a report


class Gateway:
    """The persistent connection to the gateway's listener."""

    def __init__(self, path: str):
        self.acks = threading.Semaphore(0)
        self.sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
        except OSError:
            return  # no gateway (gone already): calls are simply not reported
        self.sock = sock
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                os._exit(0)  # the gateway is done with this run
            for _ in range(data.count(b"\n")):
                self.acks.release()

    def report(self, params: dict) -> None:
        """One line per call: {"name", "arguments"}; then wait for the gateway's `ok`."""
        if self.sock is None:
            return
        line = json.dumps({"name": params.get("name"), "arguments": params.get("arguments")}) + "\n"
        try:
            self.sock.sendall(line.encode("utf-8"))
        except OSError:
            return
        self.acks.acquire(timeout=ACK_TIMEOUT)


def main(tools_path: str, socket_path: str, hold: bool) -> None:
    with open(tools_path, encoding="utf-8") as f:
        tools = json.load(f)
    gateway = Gateway(socket_path)
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict) or "method" not in message:
            continue
        method, request_id = message["method"], message.get("id")
        if method == "tools/call":
            gateway.report(message.get("params") or {})
            if not hold and request_id is not None:
                reply(request_id, {"content": [{"type": "text", "text": ""}]})
            continue
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--hold" in sys.argv[3:])
