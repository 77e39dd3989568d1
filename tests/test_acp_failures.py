"""ACP runs that fail before the CLI answers `initialize` (the stand-in's FAKE_GEMINI_ACP_STARTUP):
the same guarantees as tests/test_cli_failures.py (real HTTP statuses, deadlines, disconnects,
the process group killed, no run dir left, the log line's outcome and exit code).

A prompt cannot reach a process before `initialize` is answered, so these faults are set per
server, in its environment: each test starts and stops a ProxyServer of its own."""

from __future__ import annotations

import os
import secrets
import time

import pytest
import requests

from proxy.cli.home import LOGIN_HELP
from tests.conftest import records
from tests.proxy_server import ProxyServer, group_alive, open_chat_stream, wait_until
from tests.test_cli_failures import ask, log_fields


def acp_server(startup: str, **env: str) -> ProxyServer:
    return ProxyServer({"PROXY_CLI_INTERFACE": "auto", "FAKE_GEMINI_ACP_STARTUP": startup, **env})


def post(proxy: ProxyServer, request_id: str, stream: bool) -> requests.Response:
    return requests.post(proxy.base_url + "/v1/chat/completions", timeout=30, headers={"X-Request-Id": request_id},
                         json={"model": "gemini-cli", "stream": stream, "messages": ask("hi")})


def new_run(proxy: ProxyServer, seen: int, timeout: float = 10) -> dict:
    """The stand-in's record of the run started after `seen` records (waits for it, bounded)."""
    assert wait_until(lambda: len(records(proxy)) > seen, timeout), "no CLI run started"
    return records(proxy)[-1]


def assert_all_gone(proxy: ProxyServer, timeout: float = 8) -> None:
    """Every run's process group is dead and no run dir is left."""
    runs = records(proxy)
    assert runs and all("--acp" in run["argv"] for run in runs), [run["argv"] for run in runs]
    for pgid in [run["pgid"] for run in runs]:
        assert wait_until(lambda pgid=pgid: not group_alive(pgid), timeout), f"CLI group {pgid} still running"
    assert wait_until(lambda: os.listdir(proxy.run_dir) == [], 5), os.listdir(proxy.run_dir)


@pytest.mark.parametrize("startup, status, code, exit_code, says", [
    ("exit:41", 503, "gemini_auth_missing", 41, LOGIN_HELP),  # what the CLI exits with when it has no login
    ("auth", 503, "gemini_auth_missing", 41, LOGIN_HELP),
    ("exit:7", 502, "gemini_failed", 7, "exit code 7"),
    ("crash", 502, "gemini_failed", 1, "fake crash during start-up"),
])
def test_cli_ending_before_initialize(startup, status, code, exit_code, says):
    with acp_server(startup) as proxy:
        for stream in (False, True):  # a stream fails before its first text: a real status too
            request_id = f"init-{secrets.token_hex(6)}"
            response = post(proxy, request_id, stream)
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert error["code"] == code and says in error["message"], error
            if status == 503:
                assert response.headers["x-should-retry"] == "false"
            fields = log_fields(proxy, request_id)
            assert fields["outcome"] == f"error:{code}" and fields["exit_code"] == str(exit_code), fields
        assert_all_gone(proxy)


def test_hang_before_initialize_is_504_at_the_first_token_deadline():
    with acp_server("hang-before-init", PROXY_FIRST_TOKEN_TIMEOUT="2", PROXY_REQUEST_TIMEOUT="20",
                    PROXY_STATUS_HOLD="10") as proxy:
        for stream in (False, True):
            request_id = f"init-{secrets.token_hex(6)}"
            started = time.monotonic()
            response = post(proxy, request_id, stream)
            took = time.monotonic() - started
            assert response.status_code == 504, response.text
            assert "PROXY_FIRST_TOKEN_TIMEOUT" in response.json()["error"]["message"]
            assert 1.9 <= took < 5, took
            fields = log_fields(proxy, request_id)
            assert fields["outcome"] == "error:deadline_exceeded" and fields["exit_code"] == "0", fields  # TERM -> 0
        assert_all_gone(proxy, timeout=5)


def test_disconnect_before_initialize_kills_the_run():
    """Nothing has come from the CLI yet: the proxy still notices that the client left."""
    with acp_server("hang-before-init", PROXY_FIRST_TOKEN_TIMEOUT="60") as proxy:
        for stream in (False, True):  # non-streamed, and streamed during the status hold
            request_id = f"gone-{secrets.token_hex(6)}"
            seen = len(records(proxy))
            sock = open_chat_stream(proxy.port, "hi", headers={"X-Request-Id": request_id}, stream=stream)
            try:
                run = new_run(proxy, seen)
                time.sleep(0.5)
            finally:
                sock.close()
            started = time.monotonic()
            pgid = run["pgid"]
            assert wait_until(lambda pgid=pgid: not group_alive(pgid), 8), "CLI process group still running"
            assert time.monotonic() - started < 8
            fields = log_fields(proxy, request_id)
            assert fields["outcome"] == "client_closed", fields
        assert_all_gone(proxy)
