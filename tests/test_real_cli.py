"""End to end with the real gemini CLI (pinned npm install) against the loopback mock API:
openai SDK -> gunicorn/gevent -> proxy -> real `gemini` -> mock Gemini API."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import time
from pathlib import Path

import openai
import pytest

from proxy.config import PROJECT_DIR, resolve_gemini_bin
from tests.conftest import make_client
from tests.proxy_server import group_alive, wait_until
from tests.test_chat_api import MODEL_IDS

MAPPED = {"gemini-cli": "gemini-3-flash"} | {m: m for m in MODEL_IDS if m != "gemini-cli"}
# The CLI (0.61.0, getBackendModelMappings) itself sends two legacy names as their newest GA
# successors when the account has access to them, as an API key does: the proxy passes the
# mapped `-m`, and this is what the API then sees.
CLI_UPGRADES = {"gemini-3-flash": "gemini-3.8-flash", "gemini-3.1-flash-lite": "gemini-3.5-flash-lite"}
# A 1x1 PNG.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
                       "AAAABJRU5ErkJggg==")


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def last_body(mock) -> dict:
    requests = mock.generate_requests()
    assert requests, "the mock API received no generate request"
    return requests[-1].json


def user_parts(body: dict) -> list[dict]:
    turns = [c for c in body["contents"] if c.get("role") == "user"]
    return turns[-1]["parts"]


def prompt_text(body: dict) -> str:
    """The user's text part (the first part is the CLI's own <session_context>)."""
    texts = [p["text"] for p in user_parts(body) if "text" in p and "<session_context>" not in p["text"]]
    return texts[0]


def test_non_stream_answer_and_usage_come_from_the_api(real_oai, mock):
    mock.configure(chunks=["Bonjour", " tout", " le monde"],
                   usage={"promptTokenCount": 11, "candidatesTokenCount": 4, "totalTokenCount": 15})
    reply = real_oai.chat.completions.create(model="gemini-cli", messages=ask("say hi"))
    assert reply.choices[0].message.content == "Bonjour tout le monde"
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (11, 4, 15)


def test_stream_answer_and_usage_come_from_the_api(real_server, mock):
    mock.configure(chunks=["one ", "two ", "three"], chunk_delay_s=0.05,
                   usage={"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12})
    strict = make_client(real_server.base_url, _strict_response_validation=True)
    chunks = list(strict.chat.completions.create(model="gemini-2.5-pro", messages=ask("count"), stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert chunks[-1].usage.prompt_tokens == 9 and chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.total_tokens == 12


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_each_model_id_reaches_the_api_as_its_mapped_model(real_oai, mock, model_id):
    reply = real_oai.chat.completions.create(model=model_id, messages=ask("which model?"))
    assert reply.model == model_id
    mapped = MAPPED[model_id]
    assert mock.generate_requests()[-1].model == CLI_UPGRADES.get(mapped, mapped)


@pytest.mark.parametrize("status, error_class, http_status", [
    (400, openai.BadRequestError, 400),
    (404, openai.NotFoundError, 404),
    (429, openai.RateLimitError, 429),
    (500, openai.InternalServerError, 502),
    (503, openai.InternalServerError, 502),
])
def test_api_errors_become_openai_errors_quickly(real_oai, mock, status, error_class, http_status):
    mock.configure(status=status, retry_after_s=17 if status == 429 else None)
    started = time.monotonic()
    with pytest.raises(error_class) as info:
        real_oai.chat.completions.create(model="gemini-cli", messages=ask("fail please"))
    assert time.monotonic() - started < 15, "the CLI's retries stretched the failure"
    assert info.value.status_code == http_status
    if status == 429:
        assert info.value.response.headers["retry-after"] == "17"
    if status == 404:
        assert "gemini-3-flash" in info.value.message


def test_api_error_in_a_stream_before_content_is_a_real_status(real_oai, mock):
    mock.configure(status=429, retry_after_s=3)
    with pytest.raises(openai.RateLimitError):
        list(real_oai.chat.completions.create(model="gemini-cli", messages=ask("x"), stream=True))


def test_safety_block_is_content_filter(real_oai, mock):
    mock.configure(safety_block=True)
    reply = real_oai.chat.completions.create(model="gemini-cli", messages=ask("something bad"))
    assert reply.choices[0].finish_reason == "content_filter"


def test_system_prompt_and_history_reach_the_model(real_oai, mock):
    marker = secrets.token_hex(4)
    real_oai.chat.completions.create(model="gemini-cli", messages=[
        {"role": "system", "content": f"Answer in French. {marker}"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times 3?"},
    ])
    body = last_body(mock)
    assert body["systemInstruction"]["parts"][0]["text"] == f"Answer in French. {marker}"
    text = prompt_text(body)
    for piece in ("What is 2+2?", "\n4\n", "And times 3?", "[[User #", "[[Assistant #"):
        assert piece in text
    # No tools for a chat gateway, and the CLI's 25 KB agent prompt is gone.
    assert body.get("tools") in (None, [{"functionDeclarations": []}])
    assert len(mock.generate_requests()[-1].body) < 2048


# Over ACP (proxy/cli/acp.py), with and without a client tool, and headless (PROXY_CLI_INTERFACE=headless):
# interface -> (the client fixture, what the request adds).
DUMMY_TOOL = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}
INTERFACES = {"acp": ("real_oai", {}), "acp-tools": ("real_oai", {"tools": [DUMMY_TOOL]}),
              "headless": ("real_headless_oai", {})}


def client_for(request, interface: str) -> tuple[openai.OpenAI, dict]:
    fixture, extra = INTERFACES[interface]
    return request.getfixturevalue(fixture), extra


@pytest.mark.parametrize("interface", list(INTERFACES))
@pytest.mark.parametrize("text", [
    "mail bob@example.com about it",
    "read @/etc/hostname please",
    "/init",
    "$ls",
    "@generalist please do it",
    "@cli_help what now",
    "look at @.gemini/settings.json and @../home/.gemini/oauth_creds.json",
])
def test_user_text_is_inert(request, mock, text, interface):
    client, extra = client_for(request, interface)
    client.chat.completions.create(model="gemini-cli", messages=ask(text), **extra)
    body = last_body(mock)
    parts = user_parts(body)
    # Headless: after the primer newline. ACP: as it is, but a leading / or $ gets a zero-width space.
    expected = "\n" + text if interface == "headless" else ("\u200b" if text[0] in "/$" else "") + text
    assert prompt_text(body) == expected
    assert not any("inlineData" in p for p in parts), "a file was attached"
    assert not any("system_note" in p.get("text", "") or "Content from" in p.get("text", "") for p in parts)


@pytest.mark.parametrize("interface", list(INTERFACES))
def test_image_parts_reach_the_model_as_images(request, mock, interface):
    client, extra = client_for(request, interface)
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    client.chat.completions.create(model="gemini-cli", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture? (from bob@example.com)"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}], **extra)
    parts = user_parts(last_body(mock))
    images = [p["inlineData"] for p in parts if "inlineData" in p]
    assert images == [{"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}]
    text = prompt_text(last_body(mock))
    # Headless attaches images as @files, so the user's own @ is escaped there; ACP sends text as is.
    assert "what is in this picture?" in text
    assert ("bob\\@example.com" if interface == "headless" else "bob@example.com") in text


def _cli_pids_under(run_dir: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(str(run_dir)):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_disconnect_kills_the_real_cli(real_server, mock):
    mock.configure(chunks=[f"part {i} " for i in range(30)], chunk_delay_s=0.5)
    body = json.dumps({"model": "gemini-cli", "stream": True, "messages": ask("long answer")}).encode()
    sock = socket.create_connection(("127.0.0.1", real_server.port), timeout=20)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        deadline = time.monotonic() + 20
        while b"part 0" not in received and time.monotonic() < deadline:
            received += sock.recv(65536)
        assert b"part 0" in received
        pids = _cli_pids_under(real_server.run_dir)
        assert pids, "no gemini process found"
        pgids = {os.getpgid(pid) for pid in pids}
    finally:
        sock.close()
    assert wait_until(lambda: not any(group_alive(g) for g in pgids), 10)
    assert wait_until(lambda: os.listdir(real_server.run_dir) == [], 5)


def test_twenty_requests_leave_nothing_on_disk(real_oai, real_server, mock):
    home = Path(real_server.env["HOME"])
    user_config = Path(real_server.env["PROXY_GEMINI_CONFIG"])
    before = sorted(p.name for p in user_config.iterdir())
    for i in range(20):
        reply = real_oai.chat.completions.create(model="gemini-cli", messages=ask(f"secret {i}"),
                                                 stream=bool(i % 2))
        if i % 2:
            list(reply)
    assert wait_until(lambda: os.listdir(real_server.run_dir) == [], 5), os.listdir(real_server.run_dir)
    assert sorted(p.name for p in user_config.iterdir()) == before
    assert not (home / ".gemini").exists(), "the CLI wrote into the user's home"


def test_pinned_cli_is_the_fallback(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert resolve_gemini_bin(None) == str(PROJECT_DIR / "node_modules" / ".bin" / "gemini")
