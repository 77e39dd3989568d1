"""The README's "Adding a route" example, as it stands there: its blueprint registered on
`create_app()`, streamed and collected through with the stand-in CLI; and what a route must get
from the app without doing anything for it: the API key check, the error shape, the run, the
request log line and the metrics."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys

import pytest
from prometheus_client import REGISTRY

from proxy import create_app
from tests.proxy_server import FAKE_GEMINI, PROJECT_DIR, api_key_config

README = PROJECT_DIR / "README.md"


def example_source() -> str:
    """The first Python block of the README's "Adding a route" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Adding a route\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Adding a route section has no python block"
    return match.group(1)


@pytest.fixture
def summarize(tmp_path):
    """The example, as a module of its own (its own name, so nothing else can shadow it)."""
    path = tmp_path / "summarize_route_example.py"
    path.write_text(example_source(), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("summarize_route_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture
def app_with_route(tmp_path, summarize, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    app = create_app({
        "TESTING": True, "GEMINI_BIN": str(FAKE_GEMINI), "PROXY_RUN_DIR": str(tmp_path),
        "PROXY_GEMINI_CONFIG": str(api_key_config(tmp_path / "user-gemini")), "PROXY_API_KEYS": ("sk-route",),
        "PROXY_HEARTBEAT_INTERVAL": 0.2, "PROXY_STATUS_HOLD": 1.0, "PROXY_POOL_SIZE": 0,
    })
    app.register_blueprint(summarize.bp)
    yield app
    app.extensions["process_pool"].close()


AUTH = {"Authorization": "Bearer sk-route"}


def requests_counted(model: str, status: str) -> float:
    return REGISTRY.get_sample_value("gemini_proxy_requests_total",
                                     {"model": model, "status": status, "outcome": "ok"}) or 0.0


def test_the_example_streams_through_the_gateway(app_with_route, tmp_path, caplog):
    client = app_with_route.test_client()
    before = requests_counted("gemini-cli", "200")
    with caplog.at_level(logging.INFO, logger="proxy.requests"):
        response = client.post("/v1/summarize", headers=AUTH, json={"text": "A long story.", "stream": True})
        body = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert "".join(e.get("text", "") for e in events) == "Hello from the stand-in."
    assert events[-1] == {"done": True}
    # What came with the app: the log line (from inside the stream) and the metrics.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("chat id=")]
    assert lines and " status=200 outcome=ok " in lines[-1] and " model=gemini-cli " in lines[-1]
    assert requests_counted("gemini-cli", "200") == before + 1
    assert [p for p in tmp_path.glob("gemini-proxy-*")] == []  # the run is gone


def test_the_example_collects_through_the_gateway(app_with_route):
    response = app_with_route.test_client().post("/v1/summarize", headers=AUTH, json={"text": "A long story."})
    assert response.status_code == 200
    assert response.get_json() == {"summary": "Hello from the stand-in."}
    assert response.headers["X-Request-Id"] and "ttft;dur=" in response.headers["Server-Timing"]


def test_the_example_gets_the_apps_key_check_and_error_shape(app_with_route):
    client = app_with_route.test_client()
    refused = client.post("/v1/summarize", json={"text": "x"})
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "invalid_api_key"
    bad = client.post("/v1/summarize", headers=AUTH, json={"text": ""})
    assert bad.status_code == 400
    assert bad.get_json() == {"error": {"message": "`text` must be a non-empty string.",
                                        "type": "invalid_request_error", "param": "text", "code": "invalid_request"}}
    unknown = client.post("/v1/summarize", headers=AUTH, json={"text": "x", "model": "nope"})
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "model_not_found"
