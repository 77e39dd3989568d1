"""Stopping and losing workers: in-flight streams finish on a graceful stop, and no gemini
process outlives the worker that started it (graceful timeout passed, or worker SIGKILLed)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time

import requests

from tests.conftest import run_record
from tests.proxy_server import ProxyServer, group_alive, open_chat_stream, pid_alive, wait_until


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]




def read_until_closed(sock: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (bounded in time)."""
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data




def workers_of(master_pid: int) -> list[int]:
    with open(f"/proc/{master_pid}/task/{master_pid}/children") as f:
        return [int(pid) for pid in f.read().split()]


def test_sigterm_lets_a_running_stream_finish():
    with ProxyServer() as server:
        marker = secrets.token_hex(4)
        sock = open_chat_stream(server.port, f"FAKE:slow:300 {marker}")  # five chunks, ~1.2 s
        try:
            sock.settimeout(10)
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
            run = run_record(server, marker)
            os.kill(server.proc.pid, signal.SIGTERM)  # the gunicorn master: graceful stop
            rest = read_until_closed(sock, 20)
        finally:
            sock.close()
        stream = (first + rest).decode()
        assert all(f"tick {i}" in stream for i in range(5)), stream
        assert "data: [DONE]" in stream
        assert server.proc.wait(timeout=20) == 0
        assert wait_until(lambda: not group_alive(run["pgid"]), 5)
        assert "still in flight" not in server.log(), "nothing was left to kill"


def test_graceful_timeout_passed_kills_the_cli():
    """GRACEFUL_TIMEOUT (8 s) shorter than the request deadline: a stream still open when the
    graceful period runs out is cut, and its CLI's whole process group (a child of the CLI
    included) is killed by the worker itself, before the master would SIGKILL it."""
    env = {"GRACEFUL_TIMEOUT": "8", "PROXY_REQUEST_TIMEOUT": "60", "PROXY_FIRST_TOKEN_TIMEOUT": "60",
           "PROXY_STATUS_HOLD": "0.5"}
    with ProxyServer(env) as server:
        marker = secrets.token_hex(4)
        sock = open_chat_stream(server.port, f"FAKE:spawn-child {marker}")  # silent 30 s, a `sleep` child
        try:
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            assert wait_until(lambda: run_record(server, marker).get("grandchild_pid"), 10)
            run = run_record(server, marker)
            stopped_at = time.monotonic()
            os.kill(server.proc.pid, signal.SIGTERM)
            time.sleep(2)
            assert group_alive(run["pgid"]), "the stream was cut before the graceful period ended"
            assert wait_until(lambda: not group_alive(run["pgid"]), 12), "the CLI outlived its worker"
            gone_after = time.monotonic() - stopped_at
            # The workers give up 4 s early (half of a short graceful_timeout), then end
            # their streams and runs; the master's SIGKILL would come at 8 s.
            assert 3 <= gone_after < 8, gone_after
            read_until_closed(sock, 10)  # the connection ends too
        finally:
            sock.close()
        try:
            assert server.proc.wait(timeout=15) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError("gunicorn master did not exit after the graceful period") from None
        assert not pid_alive(run["grandchild_pid"])
        assert not pid_alive(run["ppid"])
        assert "Worker graceful timeout" in server.log()


def test_sigkilled_worker_takes_its_cli_along():
    """No cleanup code runs in a SIGKILLed worker: the CLI dies by PR_SET_PDEATHSIG."""
    with ProxyServer({"PROXY_STATUS_HOLD": "0.5"}) as server:
        marker = secrets.token_hex(4)
        sock = open_chat_stream(server.port, f"FAKE:hang {marker}")
        try:
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            run = run_record(server, marker)
            worker = run["ppid"]
            assert worker in workers_of(server.proc.pid), "the CLI's parent is a gunicorn worker"
            os.kill(worker, signal.SIGKILL)
            assert wait_until(lambda: not group_alive(run["pgid"]), 5), "orphaned CLI after SIGKILL"
        finally:
            sock.close()
        # The master starts a new worker, which serves.
        assert wait_until(lambda: workers_of(server.proc.pid) and worker not in workers_of(server.proc.pid), 10)

        def serves() -> bool:
            try:
                return requests.post(server.base_url + "/v1/chat/completions", timeout=10, json={
                    "model": "gemini-cli", "messages": ask("after")}).status_code == 200
            except requests.RequestException:
                return False

        assert wait_until(serves, 20, interval=0.5)


def test_sigkilled_worker_takes_the_clis_children_along():
    """PDEATHSIG kills the CLI; the master's child_exit kills its group and removes the run dir."""
    with ProxyServer({"PROXY_STATUS_HOLD": "0.5"}) as server:
        marker = secrets.token_hex(4)
        sock = open_chat_stream(server.port, f"FAKE:spawn-child {marker}")
        grandchild = None
        try:
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            assert wait_until(lambda: run_record(server, marker).get("grandchild_pid"), 10)
            run = run_record(server, marker)
            grandchild = run["grandchild_pid"]
            os.kill(run["ppid"], signal.SIGKILL)
            assert wait_until(lambda: not pid_alive(run["pid"]), 5), "the CLI itself dies (PDEATHSIG)"
            assert wait_until(lambda: not group_alive(run["pgid"]), 5), "orphaned child of the CLI"
            run_dir = os.path.dirname(run["cwd"])
            assert wait_until(lambda: not os.path.exists(run_dir), 5), "the dead worker's run dir is left"
        finally:
            sock.close()
            if grandchild and pid_alive(grandchild):
                os.kill(grandchild, signal.SIGKILL)  # our own test's leftover, by pid
