"""Fixtures: the Flask app and its test client, and the real stack (gunicorn + gevent worker)
driven by the official openai SDK, with the stand-in CLI or the real gemini CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import openai
import pytest

from proxy import create_app
from tests.mock_gemini_api import MockGeminiApi
from tests.proxy_server import FAKE_GEMINI, REAL_GEMINI, ProxyServer, api_key_config, wait_until


@pytest.fixture
def app(tmp_path: Path):
    os.environ.setdefault("GEMINI_API_KEY", "test-key")
    app = create_app({
        "TESTING": True,
        "GEMINI_BIN": str(FAKE_GEMINI),
        "PROXY_GEMINI_CONFIG": str(api_key_config(tmp_path / "user-gemini")),
        "PROXY_RUN_DIR": str(tmp_path),
        "PROXY_HEARTBEAT_INTERVAL": 0.2,
        "PROXY_STATUS_HOLD": 1.0,
        "PROXY_CLI_INTERFACE": "headless",
    })
    yield app
    app.extensions["process_pool"].close()  # processes a chat request made it start


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def server():
    """gunicorn with the gevent worker and the stand-in CLI (fast, scriptable faults)."""
    with ProxyServer() as proxy:
        yield proxy


def make_client(base_url: str, **kwargs) -> openai.OpenAI:
    options = {"api_key": "sk-test", "max_retries": 0, "timeout": 60}
    options.update(kwargs)
    return openai.OpenAI(base_url=base_url + "/v1", **options)


@pytest.fixture
def oai(server) -> openai.OpenAI:
    return make_client(server.base_url)


@pytest.fixture(scope="session")
def mock_api():
    with MockGeminiApi() as api:
        yield api


@pytest.fixture
def mock(mock_api):
    mock_api.reset()
    yield mock_api
    mock_api.reset()


def real_cli_server(mock_api, home: Path, interface: str) -> ProxyServer:
    """gunicorn with the real gemini CLI (pinned npm install) talking to the loopback mock API,
    a process per request (no pool). HOME is an empty dir of its own, so tests can see that
    nothing is written there."""
    if not REAL_GEMINI.exists():
        pytest.fail("the pinned gemini CLI is missing: run `npm ci` (the README's test command does)")
    return ProxyServer({
        "GEMINI_BIN": str(REAL_GEMINI),
        "GOOGLE_GEMINI_BASE_URL": mock_api.base_url,
        "GEMINI_API_KEY": "test-key",
        "PROXY_STATUS_HOLD": "10",
        "PROXY_CLI_INTERFACE": interface,
        "HOME": str(home),
    })


@pytest.fixture(scope="session")
def real_server(mock_api, tmp_path_factory):
    """The real CLI driven over ACP (the default interface)."""
    with real_cli_server(mock_api, tmp_path_factory.mktemp("home"), "acp") as proxy:
        yield proxy


@pytest.fixture(scope="session")
def real_headless_server(mock_api, tmp_path_factory):
    """The real CLI driven headless (PROXY_CLI_INTERFACE=headless)."""
    with real_cli_server(mock_api, tmp_path_factory.mktemp("home"), "headless") as proxy:
        yield proxy


@pytest.fixture
def real_oai(real_server) -> openai.OpenAI:
    return make_client(real_server.base_url)


@pytest.fixture
def real_headless_oai(real_headless_server) -> openai.OpenAI:
    return make_client(real_headless_server.base_url)


def records(server: ProxyServer) -> list[dict]:
    """What the stand-in CLI recorded about each run (argv, env, stdin, pids)."""
    out = []
    for path in sorted(server.record_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    return out


def run_record(server: ProxyServer, marker: str, timeout: float = 10) -> dict:
    """The stand-in's record of the run whose stdin holds `marker` (waits for it, bounded)."""
    found: list[dict] = []

    def look() -> bool:
        found[:] = [r for r in records(server) if r.get("stdin") and marker in r["stdin"]]
        return bool(found)

    assert wait_until(look, timeout), f"no CLI run received {marker!r}"
    return found[-1]
