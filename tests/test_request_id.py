"""X-Request-Id: the id sent back in the header is the id= of the request's log line."""

from __future__ import annotations

import re

import pytest
import requests

from tests.proxy_server import wait_until


def log_line_for(server, request_id: str) -> str | None:
    for line in server.request_lines():
        if re.search(rf"\bid={re.escape(request_id)}\s", line + " "):
            return line
    return None


@pytest.mark.parametrize("stream", [False, True])
def test_header_matches_the_log_line(server, stream):
    response = requests.post(server.base_url + "/v1/chat/completions", timeout=30, json={
        "model": "gemini-cli", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    assert response.content is not None  # a stream logs its line at its end
    assert response.status_code == 200
    request_id = response.headers["X-Request-Id"]
    assert re.fullmatch(r"req-[0-9a-f]{16}", request_id)
    assert wait_until(lambda: log_line_for(server, request_id), 5), f"no log line with id={request_id}"
    line = log_line_for(server, request_id)
    assert f"stream={str(stream).lower()}" in line and "status=200" in line and "outcome=ok" in line


def test_client_id_is_kept_and_logged(server):
    response = requests.post(server.base_url + "/v1/chat/completions", timeout=30,
                             headers={"X-Request-Id": "lab-trace-42"},
                             json={"model": "gemini-cli", "messages": [{"role": "user", "content": "hi"}]})
    assert response.headers["X-Request-Id"] == "lab-trace-42"
    assert wait_until(lambda: log_line_for(server, "lab-trace-42"), 5)
