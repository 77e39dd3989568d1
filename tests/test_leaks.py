"""Nothing of one request reaches another served by the same gemini process (session isolation,
proxy/cli/acp.py), proved at the wire: what the loopback mock API receives from the real CLI.

Request A carries canaries in its system prompt, its user text, an image, its generation settings
and a tool result (and offers a tool). Request B then runs on the same process (one process per
worker: PROXY_POOL_MAX=1; the `cli_pid` of both log lines says so), after A or while A streams.
B's body must hold no canary; its systemInstruction, generationConfig and tools must equal those
of a cold run of B (a process of its own, the `real_server` fixture); B's cwd is not A's; A's
session files are gone from the CLI home. The CLI has no tool that writes a file (tools.core
allows none), so A cannot leave one in its cwd; the cwd itself is removed.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from tests.mock_gemini_api import Paced, contents_text, model_turn
from tests.proxy_server import REAL_GEMINI, ProxyServer, log_fields, wait_until

PNG_HEAD = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
                            "AAAABJRU5ErkJggg==")
TEMP_DIR = re.compile(r"The project's temporary directory is: (\S+)")
B_SYSTEM = "You are B, a plain assistant."


@dataclass
class Sent:
    """A request as sent, and what the API received for it."""

    marker: str
    fields: dict[str, str]
    body: dict


def canaries(token: str) -> dict[str, str]:
    return {name: f"CANARY-{name}-{token}" for name in ("SYS", "USER", "IMG", "STOP", "TOOL")}


def image_of(token: str) -> str:
    """A's image (base64): a PNG whose bytes end in the image canary."""
    return base64.b64encode(PNG_HEAD + canaries(token)["IMG"].encode()).decode()


def request_a(token: str) -> dict:
    """A chat request full of canaries: system prompt, user text, image, settings, a tool result."""
    c = canaries(token)
    image = image_of(token)
    return {
        "model": "gemini-2.5-pro", "temperature": 0.123, "top_p": 0.456, "seed": 4242, "max_tokens": 777,
        "stop": [c["STOP"]],
        "tools": [{"type": "function", "function": {"name": "get_secret", "description": c["TOOL"],
                                                    "parameters": {"type": "object", "properties": {}}}}],
        "messages": [
            {"role": "system", "content": f"You are A. {c['SYS']}"},
            {"role": "user", "content": [
                {"type": "text", "text": f"{c['USER']} what is the secret?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                  "function": {"name": "get_secret", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": c["TOOL"]},
            {"role": "user", "content": f"And now? {token}"},
        ],
    }


def request_b(marker: str) -> dict:
    return {"model": "gemini-2.5-pro",
            "messages": [{"role": "system", "content": B_SYSTEM}, {"role": "user", "content": f"client B {marker}"}]}


def send(server: ProxyServer, body: dict, marker: str, mock, stream: bool = False) -> Sent:
    request_id = f"leak-{secrets.token_hex(6)}"
    response = requests.post(server.base_url + "/v1/chat/completions", timeout=60,
                             headers={"X-Request-Id": request_id}, json=body | {"stream": stream})
    assert response.status_code == 200, response.text
    if stream:
        assert "data: [DONE]" in response.text
    bodies = [b for b in mock.stream_bodies() if marker in contents_text(b)]
    assert len(bodies) == 1, f"{len(bodies)} API requests carry {marker}"
    return Sent(marker, log_fields(server, request_id, 10), bodies[0])


def temp_dir(body: dict) -> str:
    """The session's CLI temp dir, as the CLI tells the model (`<home>/.gemini/tmp/<slug>`)."""
    match = TEMP_DIR.search(contents_text(body))
    assert match, "no session context in the request"
    return match.group(1).replace("\\n", "")


def assert_clean(b: Sent, cold: dict, a_tokens: list[str]) -> None:
    """B's request holds nothing of any A, and is set up as a cold run of B."""
    text = json.dumps(b.body)
    assert "CANARY" not in text
    for token in a_tokens:
        assert token not in text and image_of(token) not in text
    assert b.body["systemInstruction"] == cold["systemInstruction"]
    assert b.body.get("generationConfig") == cold.get("generationConfig")
    assert b.body.get("tools") == cold.get("tools")


def assert_a_is_a(a: Sent, token: str) -> None:
    """A got its own system prompt, settings and tool (the canaries went where they belong)."""
    c = canaries(token)
    assert a.body["systemInstruction"]["parts"][0]["text"] == f"You are A. {c['SYS']}"
    config = a.body["generationConfig"]
    assert (config["temperature"], config["topP"], config["seed"], config["maxOutputTokens"]) == (0.123, 0.456, 4242,
                                                                                                   777)
    assert config["stopSequences"] == [c["STOP"]]
    assert [d["name"] for t in a.body["tools"] for d in t.get("functionDeclarations") or []] == ["mcp_fn_get_secret"]
    assert c["TOOL"] in contents_text(a.body) and c["USER"] in contents_text(a.body)
    assert image_of(token) in contents_text(a.body)


@pytest.fixture(scope="module")
def one_process(mock_api):
    """A pooled server whose worker keeps one gemini process (PROXY_POOL_MAX=1) for everyone."""
    if not REAL_GEMINI.exists():
        pytest.fail("the pinned gemini CLI is missing: run `npm ci`")
    server = ProxyServer({"GEMINI_BIN": str(REAL_GEMINI), "GOOGLE_GEMINI_BASE_URL": mock_api.base_url,
                          "PROXY_CLI_INTERFACE": "auto", "PROXY_POOL_SIZE": "1", "PROXY_POOL_MAX": "1",
                          "PROXY_STATUS_HOLD": "10", "PROXY_PROCESS_MAX_REQUESTS": "500"})
    with server:
        yield server
    assert wait_until(lambda: os.listdir(server.run_dir) == [], 10)


@pytest.fixture(scope="module")
def cold_b(real_server, mock_api) -> dict:
    """What the API receives for B from a process of its own (no pool)."""
    marker = secrets.token_hex(4)
    mock_api.reset()
    try:
        return send(real_server, request_b(marker), marker, mock_api).body
    finally:
        mock_api.reset()


def a_script(body) -> list[dict] | None:
    """The model answers A in text (not by calling its tool again)."""
    return model_turn([{"text": "A's answer."}]) if "CANARY-USER" in contents_text(body) else None


def test_b_after_a_on_the_same_process_gets_nothing_of_a(one_process, cold_b, mock):
    mock.configure(script=a_script)
    token = secrets.token_hex(4)
    a = send(one_process, request_a(token), token, mock)
    assert_a_is_a(a, token)
    # A's session is over: its cwd and the CLI's files for it are gone.
    a_dir = temp_dir(a.body)
    assert wait_until(lambda: not os.path.exists(a_dir), 5), f"{a_dir} is left"
    assert not any(os.path.exists(d) for d in (a_dir.replace("/tmp/", "/history/"),))
    marker = secrets.token_hex(4)
    b = send(one_process, request_b(marker), marker, mock)
    assert b.fields["cli_pid"] == a.fields["cli_pid"], "A and B ran on different processes"
    assert b.fields["pool"] == "hit"
    assert_clean(b, cold_b, [token])
    assert temp_dir(b.body) != a_dir


@pytest.mark.parametrize("a_pace", ["first-token-late", "streaming-slowly"])
def test_b_while_a_streams_on_the_same_process_gets_nothing_of_a(one_process, cold_b, mock, a_pace):
    """B is sent while A is under way on the same process: while A's API request has not yet been
    answered (the process may not switch its system prompt file yet), and while A streams."""
    def script(body):
        if "CANARY-USER" not in contents_text(body):
            return None
        events = model_turn([{"text": f"A part {i}. "} for i in range(4)])
        return Paced(events, 1.5, 0.0) if a_pace == "first-token-late" else Paced(events, 0.0, 0.5)

    mock.configure(script=script)
    token, marker = secrets.token_hex(4), secrets.token_hex(4)
    finished: dict[str, float] = {}

    def run_a() -> Sent:
        sent = send(one_process, request_a(token), token, mock, stream=True)
        finished["a"] = time.monotonic()
        return sent

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_a)
        assert wait_until(lambda: any(token in contents_text(b) for b in mock.stream_bodies()), 15)
        finished["b sent"] = time.monotonic()
        b = send(one_process, request_b(marker), marker, mock, stream=True)
        finished["b"] = time.monotonic()
        a = future.result(timeout=60)
    assert finished["b sent"] < finished["a"], "B was not sent while A was under way"
    if a_pace == "streaming-slowly":
        assert finished["b"] < finished["a"], "B did not run while A streamed"
    assert b.fields["cli_pid"] == a.fields["cli_pid"]
    assert_a_is_a(a, token)
    assert_clean(b, cold_b, [token])
    assert temp_dir(b.body) != temp_dir(a.body)


def test_fifty_random_alternations_of_two_clients(one_process, cold_b, mock):
    """Two clients, A (canaries, its own settings and tool) and B, in a random order, sometimes at once."""
    mock.configure(script=a_script)
    rng = random.Random(20261203)
    tokens: list[str] = []
    sent_a: list[tuple[Sent, str]] = []
    sent_b: list[Sent] = []
    lock = threading.Lock()

    def one(kind: str) -> None:
        marker = secrets.token_hex(4)
        if kind == "a":
            with lock:
                tokens.append(marker)
            sent = send(one_process, request_a(marker), marker, mock, stream=rng.random() < 0.5)
            with lock:
                sent_a.append((sent, marker))
        else:
            sent = send(one_process, request_b(marker), marker, mock, stream=rng.random() < 0.5)
            with lock:
                sent_b.append(sent)

    rounds = 0
    with ThreadPoolExecutor(2) as pool:
        while rounds < 50:
            kinds = [rng.choice("ab") for _ in range(rng.choice((1, 2)))][:50 - rounds]
            list(pool.map(one, kinds, timeout=120))
            rounds += len(kinds)
    assert len(sent_a) + len(sent_b) == 50 and sent_a and sent_b
    assert len({s.fields["cli_pid"] for s in [x for x, _ in sent_a] + sent_b}) == 1
    for b in sent_b:
        assert_clean(b, cold_b, tokens)
    for a, token in sent_a:
        assert_a_is_a(a, token)
        others = [t for t in tokens if t != token]
        assert not any(t in json.dumps(a.body) for t in others), "one A's request holds another A's canary"
    dirs = [temp_dir(s.body) for s in [x for x, _ in sent_a] + sent_b]
    assert len(set(dirs)) == 50, "two requests shared a session cwd"
    assert wait_until(lambda: not any(os.path.exists(d) for d in dirs), 10)


def test_the_check_can_fail(one_process, cold_b, mock):
    """A's own request, checked as if it were B's, fails every part of the check."""
    mock.configure(script=a_script)
    token = secrets.token_hex(4)
    a = send(one_process, request_a(token), token, mock)
    with pytest.raises(AssertionError):
        assert_clean(a, cold_b, [token])
    leaked = Sent(a.marker, a.fields, dict(cold_b, contents=a.body["contents"]))
    with pytest.raises(AssertionError):
        assert_clean(leaked, cold_b, [token])  # only the turns leak: still caught
