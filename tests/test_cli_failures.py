"""CLI failures, deadlines and client disconnects, with the stand-in CLI under real gunicorn."""

from __future__ import annotations

import os
import secrets
import time

import openai
import pytest
import requests

from tests.conftest import make_client, run_record
from tests.proxy_server import ProxyServer, group_alive, open_chat_stream, wait_until


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]




def run_dirs(server) -> list[str]:
    return os.listdir(server.run_dir)


def test_quota_error_is_429_with_retry_after(oai):
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gemini-cli", messages=ask("FAKE:quota"))
    assert info.value.response.headers["retry-after"] == "18"  # "retry in 17.5s", rounded up
    assert "quota" in info.value.message


def test_quota_error_in_stream_before_content_is_http_429(oai):
    with pytest.raises(openai.RateLimitError):
        list(oai.chat.completions.create(model="gemini-cli", messages=ask("FAKE:quota-noretry"), stream=True))


def test_auth_missing_says_what_to_run(oai):
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(model="gemini-cli", messages=ask("FAKE:auth"))
    assert info.value.status_code == 503
    assert "run `gemini`" in info.value.message.lower() or "Run `gemini`" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("status, expected, code", [
    (400, 400, "upstream_bad_request"), (500, 502, "upstream_error"), (503, 502, "upstream_error"),
    (401, 502, "gemini_auth_rejected"),
])
def test_api_errors_map_to_http_status(server, status, expected, code):
    response = requests.post(server.base_url + "/v1/chat/completions", timeout=30, json={
        "model": "gemini-cli", "messages": ask(f"FAKE:api-error:{status}")})
    assert response.status_code == expected
    assert response.json()["error"]["code"] == code
    assert str(status) in response.json()["error"]["message"]


def test_unexplained_exit_code_names_it(oai):
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="gemini-cli", messages=ask("FAKE:exit:7"))
    assert info.value.status_code == 502
    assert "exit code 7" in info.value.message and "fake failure" in info.value.message


def test_crash_before_content_is_502_never_an_empty_200(oai):
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="gemini-cli", messages=ask("FAKE:exit:1"))
    assert info.value.status_code == 502


def test_crash_mid_stream_puts_an_error_in_the_stream(oai):
    stream = oai.chat.completions.create(model="gemini-cli", messages=ask("FAKE:crash"), stream=True)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert got, "content came before the crash"
    assert "exit code 1" in str(info.value)


def test_crash_mid_stream_non_stream_is_502(oai):
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="gemini-cli", messages=ask("FAKE:crash"))
    assert info.value.status_code == 502


@pytest.mark.parametrize("stream", [False, True])
def test_safety_block_is_content_filter(oai, stream):
    if stream:
        chunks = list(oai.chat.completions.create(model="gemini-cli", messages=ask("FAKE:safety"), stream=True))
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["content_filter"]
    else:
        reply = oai.chat.completions.create(model="gemini-cli", messages=ask("FAKE:safety"))
        assert reply.choices[0].finish_reason == "content_filter"


def test_gemini_not_found(tmp_path):
    with ProxyServer({"GEMINI_BIN": str(tmp_path / "no-such-gemini")}) as proxy:
        with pytest.raises(openai.InternalServerError) as info:
            make_client(proxy.base_url).chat.completions.create(model="gemini-cli", messages=ask("hi"))
    assert info.value.status_code == 503
    assert "GEMINI_BIN" in info.value.message and info.value.body["code"] == "gemini_not_found"


def test_no_login_found_says_what_to_run(tmp_path):
    empty = tmp_path / "empty-gemini-config"
    empty.mkdir()
    with ProxyServer({"PROXY_GEMINI_CONFIG": str(empty), "GEMINI_API_KEY": ""}) as proxy:
        response = requests.post(proxy.base_url + "/v1/chat/completions", timeout=10,
                                 json={"model": "gemini-cli", "messages": ask("hi")})
        assert not list(proxy.record_dir.iterdir()), "no CLI was started"
    assert response.status_code == 503
    assert "Run `gemini` once" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def tight_server():
    with ProxyServer({"PROXY_REQUEST_TIMEOUT": "4", "PROXY_FIRST_TOKEN_TIMEOUT": "2",
                      "PROXY_STATUS_HOLD": "10"}) as proxy:
        yield proxy


def test_first_token_deadline_kills_the_run(tight_server):
    marker = secrets.token_hex(4)
    started = time.monotonic()
    response = requests.post(tight_server.base_url + "/v1/chat/completions", timeout=30, json={
        "model": "gemini-cli", "messages": ask(f"FAKE:hang {marker}")})
    assert response.status_code == 504
    assert "PROXY_FIRST_TOKEN_TIMEOUT" in response.json()["error"]["message"]
    assert time.monotonic() - started < 8
    run = run_record(tight_server, marker)
    assert wait_until(lambda: not group_alive(run["pgid"]), 5)


def test_request_deadline_after_content_ends_stream_with_error(tight_server):
    client = make_client(tight_server.base_url)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="gemini-cli", messages=ask("FAKE:slow:1500"), stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert got and "PROXY_REQUEST_TIMEOUT" in str(info.value)


def test_stubborn_cli_is_killed_with_sigkill(tight_server):
    marker = secrets.token_hex(4)
    response = requests.post(tight_server.base_url + "/v1/chat/completions", timeout=30, json={
        "model": "gemini-cli", "messages": ask(f"FAKE:stubborn {marker}")})
    assert response.status_code == 504
    run = run_record(tight_server, marker)
    assert wait_until(lambda: not group_alive(run["pgid"]), 5)




@pytest.mark.parametrize("directive, read_first", [
    ("FAKE:slow:400", True),        # mid-stream, while content flows
    ("FAKE:spawn-child", False),    # during silence, before the status line (the hold)
    ("FAKE:hang", True),            # during silence, after the status line: heartbeats find it
])
def test_disconnect_kills_the_whole_process_group(server, directive, read_first):
    marker = secrets.token_hex(4)
    sock = open_chat_stream(server.port, f"{directive} {marker}")
    try:
        run = run_record(server, marker)
        if read_first:
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        else:
            time.sleep(0.5)
    finally:
        sock.close()
    started = time.monotonic()
    assert wait_until(lambda: not group_alive(run["pgid"]), 8), "CLI process group still running"
    found_in = time.monotonic() - started
    assert found_in < 8
    workdir = run["cwd"].rsplit("/", 1)[0]
    assert wait_until(lambda: not os.path.exists(workdir), 5), "run dir left behind"


def test_disconnect_during_a_non_streamed_request_kills_the_run(server):
    """No body is being written, so the proxy watches the socket itself."""
    marker = secrets.token_hex(4)
    sock = open_chat_stream(server.port, f"FAKE:hang {marker}", stream=False)
    try:
        run = run_record(server, marker)
        time.sleep(0.5)
    finally:
        sock.close()
    assert wait_until(lambda: not group_alive(run["pgid"]), 8), "CLI process group still running"
    assert wait_until(lambda: any("outcome=client_closed" in line and " stream=false " in line
                                  for line in server.request_lines()), 5)


def test_nothing_left_behind_after_requests(server, oai):
    oai.chat.completions.create(model="gemini-cli", messages=ask("one"))
    list(oai.chat.completions.create(model="gemini-cli", messages=ask("two FAKE:slow:10"), stream=True))
    assert wait_until(lambda: run_dirs(server) == [], 5), run_dirs(server)
