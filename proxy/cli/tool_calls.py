"""The gateway's end of a run's MCP tool server (proxy/cli/mcp_tool_server.py): its call reports.

The CLI shows the model the client's tools through an MCP server it starts itself. When the
model calls one, the server reports the call here, one JSON line `{"name", "arguments"}` on
the run's Unix socket, and waits for `ok` before it answers the CLI, so that a call is
always queued before anything the CLI does after it. Closing the listener closes the server's
connection, which is the server's sign to exit (an ACP session's server would otherwise
live as long as the CLI process).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_REPORT_BYTES = 16 * 1024 * 1024


class ToolCallListener:
    """Accepts the reports of one run's MCP tool server; `close()` is idempotent."""

    def __init__(self, path: Path, on_call: Callable[[dict[str, Any]], None]):
        self.path = path
        self._on_call = on_call
        # The socket lives in the run's dir (mode 0700): only this user's processes reach it.
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(8)
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="cli-tools", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections, self._connections = self._connections, []
        for sock in (self._sock, *connections):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv()
            except OSError:
                pass
            sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed with the run
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), name="cli-tool-calls", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffered = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffered += chunk
            if len(buffered) > MAX_REPORT_BYTES:
                return
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                if isinstance(report, dict):
                    self._on_call({"name": report.get("name"), "arguments": report.get("arguments")})
                try:
                    conn.sendall(b"ok\n")
                except OSError:
                    return
