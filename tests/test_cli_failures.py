"""CLI failures, deadlines and client disconnects, with the stand-in CLI under real gunicorn.

Every test runs against both ways of driving the CLI (README "Two ways to drive the CLI"):
`headless` (PROXY_CLI_INTERFACE=headless: stream-json) and `acp` (PROXY_CLI_INTERFACE=auto:
a request without client tools is one ACP session). The stand-in fails the same way in both
(FAKE:<directive>); the guarantees checked are the same. Failures of an ACP process before it
answers `initialize` are in tests/test_acp_failures.py.
"""

from __future__ import annotations

import os
import re
import secrets
import time

import openai
import pytest
import requests

from tests.conftest import make_client, run_record
from tests.proxy_server import ProxyServer, group_alive, log_fields, open_chat_stream, pid_alive, wait_until

INTERFACES = {"headless": "headless", "acp": "auto"}  # test id -> PROXY_CLI_INTERFACE
THOUGHT = "**Thinking**\nabout it"  # what the stand-in thinks on FAKE:think (ACP only)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def run_dirs(server) -> list[str]:
    return os.listdir(server.run_dir)


def assert_run_gone(run: dict, timeout: float = 8) -> None:
    """The run's whole process group is dead and its run dir removed, within `timeout` s."""
    assert wait_until(lambda: not group_alive(run["pgid"]), timeout), "CLI process group still running"
    workdir = run["cwd"].rsplit("/", 1)[0]
    assert wait_until(lambda: not os.path.exists(workdir), 5), "run dir left behind"


@pytest.fixture(scope="module", params=list(INTERFACES))
def interface(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def server(interface):
    """This module's own gunicorn + stand-in, once per interface (overrides conftest's)."""
    with ProxyServer({"PROXY_CLI_INTERFACE": INTERFACES[interface]}) as proxy:
        yield proxy


@pytest.fixture
def oai(server) -> openai.OpenAI:
    return make_client(server.base_url)


def test_requests_run_over_the_interface_under_test(server, interface):
    marker = secrets.token_hex(4)
    response = requests.post(server.base_url + "/v1/chat/completions", timeout=30, json={
        "model": "gemini-cli", "messages": ask(f"hi {marker}")})
    assert response.status_code == 200
    record = run_record(server, marker)
    assert ("--acp" in record["argv"]) == (interface == "acp"), record["argv"]
    assert (record.get("mode") == "acp") == (interface == "acp")


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


@pytest.mark.parametrize("directive, status", [("FAKE:quota", 429), ("FAKE:api-error:500", 502)])
def test_api_error_is_answered_at_once(server, directive, status):
    """An ACP process outlives an API error: the error must not wait for it to exit (it once
    waited 1 s). Timed against a plain answer, so that a loaded machine slows both."""
    took = {}
    for text in ("hi", directive):
        started = time.monotonic()
        response = requests.post(server.base_url + "/v1/chat/completions", timeout=30, json={
            "model": "gemini-cli", "messages": ask(text)})
        took[text] = time.monotonic() - started
    assert response.status_code == status
    assert took[directive] < took["hi"] + 0.6, took


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


# (exit code headless, exit code ACP): an ACP process outlives an API error and exits 0 on the
# SIGTERM of the run's close, as the real CLI does; headless exits with the status & 0xFF.
# None: an ACP run that answered, closed with its stdin and then (if it has not exited within
# cli_run.OWN_EXIT_GRACE, as on a loaded machine) SIGTERM: 0, or -15 if that lands in its exit.
@pytest.mark.parametrize("directive, stream, status, outcome, exit_codes", [
    ("hi", False, 200, "ok", (0, None)),
    ("hi", True, 200, "ok", (0, None)),
    ("FAKE:quota", False, 429, "error:rate_limit_exceeded", (173, 0)),
    ("FAKE:quota", True, 429, "error:rate_limit_exceeded", (173, 0)),
    ("FAKE:api-error:503", False, 502, "error:upstream_error", (247, 0)),
    ("FAKE:exit:7", False, 502, "error:gemini_failed", (7, 7)),
    ("FAKE:exit:7", True, 502, "error:gemini_failed", (7, 7)),
    ("FAKE:auth", False, 503, "error:gemini_auth_missing", (41, 41)),
    ("FAKE:crash", False, 502, "error:gemini_failed", (1, 1)),
    ("FAKE:crash", True, 200, "error:gemini_failed", (1, 1)),  # content was sent: the error is in the stream
])
def test_log_line_has_the_outcome_and_exit_code(server, interface, directive, stream, status, outcome, exit_codes):
    marker, request_id = secrets.token_hex(4), f"fail-{secrets.token_hex(6)}"
    response = requests.post(server.base_url + "/v1/chat/completions", timeout=30,
                             headers={"X-Request-Id": request_id},
                             json={"model": "gemini-cli", "stream": stream, "messages": ask(f"{directive} {marker}")})
    assert response.content is not None  # a stream logs its line at its end
    assert response.status_code == status
    fields = log_fields(server, request_id)
    assert fields["status"] == str(status) and fields["outcome"] == outcome, fields
    expected = exit_codes[interface == "acp"]
    assert fields["exit_code"] in ((str(expected),) if expected is not None else ("0", "-15")), fields
    assert_run_gone(run_record(server, marker), timeout=5)


@pytest.mark.parametrize("stream", [False, True])
def test_thoughts_are_reasoning_content(oai, interface, stream):
    """ACP streams the model's thoughts, before its text; headless stream-json drops them."""
    expected = THOUGHT if interface == "acp" else None
    if stream:
        order, thoughts, text = [], [], []
        for chunk in oai.chat.completions.create(model="gemini-cli", messages=ask("ponder FAKE:think"), stream=True):
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            reasoning = (delta.model_extra or {}).get("reasoning_content")
            if reasoning:
                thoughts.append(reasoning)
                order.append("thought")
            if delta.content:
                text.append(delta.content)
                order.append("text")
        assert "".join(text) == "Hello from the stand-in."
        assert ("".join(thoughts) or None) == expected
        assert order == sorted(order, key=lambda kind: kind != "thought"), order  # thoughts first
    else:
        reply = oai.chat.completions.create(model="gemini-cli", messages=ask("ponder FAKE:think"))
        message = reply.choices[0].message
        assert message.content == "Hello from the stand-in."
        assert (message.model_extra or {}).get("reasoning_content") == expected
        assert reply.choices[0].finish_reason == "stop"


def test_gemini_not_found(tmp_path, interface):
    with ProxyServer({"GEMINI_BIN": str(tmp_path / "no-such-gemini"),
                      "PROXY_CLI_INTERFACE": INTERFACES[interface]}) as proxy:
        with pytest.raises(openai.InternalServerError) as info:
            make_client(proxy.base_url).chat.completions.create(model="gemini-cli", messages=ask("hi"))
        assert wait_until(lambda: run_dirs(proxy) == [], 5), run_dirs(proxy)
    assert info.value.status_code == 503
    assert "GEMINI_BIN" in info.value.message and info.value.body["code"] == "gemini_not_found"


def test_no_login_found_says_what_to_run(tmp_path, interface):
    empty = tmp_path / "empty-gemini-config"
    empty.mkdir()
    with ProxyServer({"PROXY_GEMINI_CONFIG": str(empty), "GEMINI_API_KEY": "",
                      "PROXY_CLI_INTERFACE": INTERFACES[interface]}) as proxy:
        response = requests.post(proxy.base_url + "/v1/chat/completions", timeout=10,
                                 json={"model": "gemini-cli", "messages": ask("hi")})
        assert not list(proxy.record_dir.iterdir()), "no CLI was started"
    assert response.status_code == 503
    assert "Run `gemini` once" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def tight_server(interface):
    with ProxyServer({"PROXY_REQUEST_TIMEOUT": "4", "PROXY_FIRST_TOKEN_TIMEOUT": "2",
                      "PROXY_STATUS_HOLD": "10", "PROXY_CLI_INTERFACE": INTERFACES[interface]}) as proxy:
        yield proxy


@pytest.mark.parametrize("stream", [False, True])
def test_first_token_deadline_kills_the_run(tight_server, stream):
    marker, request_id = secrets.token_hex(4), f"ftt-{secrets.token_hex(6)}"
    started = time.monotonic()
    response = requests.post(tight_server.base_url + "/v1/chat/completions", timeout=30,
                             headers={"X-Request-Id": request_id},
                             json={"model": "gemini-cli", "stream": stream, "messages": ask(f"FAKE:hang {marker}")})
    assert response.status_code == 504
    assert "PROXY_FIRST_TOKEN_TIMEOUT" in response.json()["error"]["message"]
    assert time.monotonic() - started < 8
    assert_run_gone(run_record(tight_server, marker), timeout=5)
    fields = log_fields(tight_server, request_id)
    assert fields["outcome"] == "error:deadline_exceeded" and fields["exit_code"] == "0", fields  # TERM -> 0


def test_request_deadline_after_content_ends_stream_with_error(tight_server):
    client = make_client(tight_server.base_url)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="gemini-cli", messages=ask("FAKE:slow:1500"), stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert got and "PROXY_REQUEST_TIMEOUT" in str(info.value)


def test_stubborn_cli_is_killed_with_sigkill(tight_server):
    marker, request_id = secrets.token_hex(4), f"stubborn-{secrets.token_hex(6)}"
    response = requests.post(tight_server.base_url + "/v1/chat/completions", timeout=30,
                             headers={"X-Request-Id": request_id},
                             json={"model": "gemini-cli", "messages": ask(f"FAKE:stubborn {marker}")})
    assert response.status_code == 504
    assert_run_gone(run_record(tight_server, marker), timeout=5)
    fields = log_fields(tight_server, request_id)
    assert fields["outcome"] == "error:deadline_exceeded" and fields["exit_code"] == "-9", fields


@pytest.mark.parametrize("directive, read_first", [
    ("FAKE:slow:400", True),        # mid-stream, while content flows
    ("FAKE:spawn-child", False),    # during silence, before the status line (the hold)
    ("FAKE:hang", True),            # during silence, after the status line: heartbeats find it
])
def test_disconnect_kills_the_whole_process_group(server, directive, read_first):
    marker, request_id = secrets.token_hex(4), f"gone-{secrets.token_hex(6)}"
    sock = open_chat_stream(server.port, f"{directive} {marker}", headers={"X-Request-Id": request_id})
    try:
        run = run_record(server, marker)
        if read_first:
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        else:
            time.sleep(0.5)
            run = run_record(server, marker)  # with the grandchild's pid by now
            assert run.get("grandchild_pid"), run
    finally:
        sock.close()
    started = time.monotonic()
    assert_run_gone(run, timeout=8)
    assert time.monotonic() - started < 8
    if run.get("grandchild_pid"):
        assert not pid_alive(run["grandchild_pid"]), "the CLI's child outlived it"
    fields = log_fields(server, request_id)
    assert fields["outcome"] == "client_closed" and re.fullmatch(r"-?\d+", fields["exit_code"]), fields


def test_disconnect_during_a_non_streamed_request_kills_the_run(server):
    """No body is being written, so the proxy watches the socket itself."""
    marker, request_id = secrets.token_hex(4), f"gone-{secrets.token_hex(6)}"
    sock = open_chat_stream(server.port, f"FAKE:hang {marker}", stream=False, headers={"X-Request-Id": request_id})
    try:
        run = run_record(server, marker)
        time.sleep(0.5)
    finally:
        sock.close()
    assert_run_gone(run, timeout=8)
    fields = log_fields(server, request_id)
    assert fields["outcome"] == "client_closed" and fields["stream"] == "false", fields


def test_nothing_left_behind_after_requests(server, oai):
    oai.chat.completions.create(model="gemini-cli", messages=ask("one"))
    list(oai.chat.completions.create(model="gemini-cli", messages=ask("two FAKE:slow:10"), stream=True))
    assert wait_until(lambda: run_dirs(server) == [], 5), run_dirs(server)
