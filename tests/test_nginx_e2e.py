"""End to end through the shipped nginx site (deploy/nginx/gemini-proxy.conf) in front of
real gunicorn: streams are not buffered, and a client hanging up still kills the CLI."""

from __future__ import annotations

import json
import secrets
import time

import pytest
import requests

from tests.conftest import run_record
from tests.nginx_server import start_nginx
from tests.proxy_server import ProxyServer, group_alive, open_chat_stream, wait_until


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with ProxyServer({"PROXY_STATUS_HOLD": "1"}) as proxy:
        with start_nginx(proxy.port, tmp_path_factory.mktemp("nginx")) as nginx:
            yield proxy, nginx




def test_stream_chunks_arrive_as_they_are_made(stack):
    proxy, nginx = stack
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    with requests.post(nginx.base_url + "/v1/chat/completions", stream=True, timeout=30, json={
            "model": "gemini-cli", "stream": True, "messages": ask("FAKE:slow:500")}) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers.get("X-Request-Id")
        for line in response.iter_lines(chunk_size=1):
            if line.startswith(b"data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta:
                    arrivals.append((time.monotonic() - started, delta))
            elif line == b"data: [DONE]":
                arrivals.append((time.monotonic() - started, "[DONE]"))
    texts = [text for _, text in arrivals]
    assert texts == [f"tick {i} " for i in range(5)] + ["[DONE]"], texts
    first, end = arrivals[0][0], arrivals[-1][0]
    # Five chunks 0.5 s apart: unbuffered, the first is through nginx ~2 s before the end.
    assert end - first >= 1.5, arrivals
    gaps = [b[0] - a[0] for a, b in zip(arrivals[:3], arrivals[1:4], strict=True)]
    assert all(gap >= 0.3 for gap in gaps), arrivals


@pytest.mark.parametrize("directive", ["FAKE:slow:1000", "FAKE:hang"])
def test_client_hangup_through_nginx_kills_the_cli(stack, directive):
    proxy, nginx = stack
    marker = secrets.token_hex(4)
    sock = open_chat_stream(nginx.port, f"{directive} {marker}",
                            {"Host": "gemini-proxy.example.org", "X-Request-Id": f"e2e-{marker}"}, timeout=10)
    try:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        run = run_record(proxy, marker)
        assert group_alive(run["pgid"])
    finally:
        sock.close()
    closed_at = time.monotonic()
    assert wait_until(lambda: not group_alive(run["pgid"]), 8), "CLI still running after the client left"
    assert time.monotonic() - closed_at < 8
    # The proxy logged it as a client disconnect, under the id the client sent through nginx.
    assert wait_until(lambda: any(f"id=e2e-{marker} " in line and "outcome=client_closed" in line
                                  for line in proxy.request_lines()), 5), proxy.request_lines()[-3:]
    # nginx and the proxy both still serve.
    reply = requests.post(nginx.base_url + "/v1/chat/completions", timeout=30,
                          json={"model": "gemini-cli", "messages": ask("still there?")})
    assert reply.status_code == 200
