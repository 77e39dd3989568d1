"""GET /healthz and GET /readyz: what each reports, and that /readyz says what is missing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import requests

from proxy import create_app
from proxy.service import health
from tests.proxy_server import FAKE_GEMINI, api_key_config


@pytest.fixture(autouse=True)
def fresh_version_cache():
    health._cache.clear()
    yield
    health._cache.clear()


def make_app(tmp_path: Path, **config):
    os.environ.setdefault("GEMINI_API_KEY", "test-key")
    settings = {"TESTING": True, "GEMINI_BIN": str(FAKE_GEMINI), "PROXY_RUN_DIR": str(tmp_path),
                "PROXY_GEMINI_CONFIG": str(api_key_config(tmp_path / "user-gemini")),
                "PROXY_MAX_CONCURRENT": 3, "PROXY_QUEUE_SIZE": 5}
    settings.update(config)
    return create_app(settings)


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_healthz_is_always_ok(tmp_path):
    client = make_app(tmp_path, GEMINI_BIN=str(tmp_path / "missing")).test_client()
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_ready_with_version_credentials_and_runs(tmp_path):
    client = make_app(tmp_path).test_client()
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["status"] == "ready" and body["missing"] == []
    assert body["gemini"]["ok"] and body["gemini"]["version"] == "0.61.0-fake"
    assert body["credentials"] == {"ok": True, "auth_type": "gemini-api-key"}
    assert body["runs"] == {"in_use": 0, "capacity": 3, "queued": 0, "queue_size": 5}


def test_readyz_reports_slots_in_use(tmp_path):
    app = make_app(tmp_path)
    slot = app.extensions["run_limiter"].acquire()
    try:
        assert app.test_client().get("/readyz").get_json()["runs"]["in_use"] == 1
    finally:
        slot.release()
    assert app.test_client().get("/readyz").get_json()["runs"]["in_use"] == 0


def test_readyz_missing_gemini(tmp_path):
    client = make_app(tmp_path, GEMINI_BIN=str(tmp_path / "no-such-gemini")).test_client()
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 503
    assert body["status"] == "not_ready" and body["missing"] == ["gemini"]
    assert "could not be run" in body["gemini"]["problem"]


def test_readyz_gemini_version_fails(tmp_path):
    broken = script(tmp_path / "gemini", "echo 'node: not found' >&2; exit 127")
    body = make_app(tmp_path, GEMINI_BIN=str(broken)).test_client().get("/readyz").get_json()
    assert body["missing"] == ["gemini"] and "exited 127" in body["gemini"]["problem"]
    assert "node: not found" in body["gemini"]["problem"]


def test_readyz_gemini_version_hangs_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(health, "VERSION_TIMEOUT", 1.0)
    stuck = script(tmp_path / "gemini", "exec sleep 30")
    response = make_app(tmp_path, GEMINI_BIN=str(stuck)).test_client().get("/readyz")
    assert response.status_code == 503 and "did not finish" in response.get_json()["gemini"]["problem"]


def test_readyz_caches_the_version_check(tmp_path):
    counter = tmp_path / "count"
    gemini = script(tmp_path / "gemini", f"echo x >> {counter}; echo 1.2.3")
    client = make_app(tmp_path, GEMINI_BIN=str(gemini)).test_client()
    for _ in range(3):
        assert client.get("/readyz").get_json()["gemini"]["version"] == "1.2.3"
    assert counter.read_text().count("x") == 1


def test_readyz_missing_credentials(tmp_path, monkeypatch):
    empty = tmp_path / "empty-config"
    empty.mkdir()
    client = make_app(tmp_path, PROXY_GEMINI_CONFIG=str(empty)).test_client()
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 503 and body["missing"] == ["credentials"]
    assert "Run `gemini` once" in body["credentials"]["problem"]


def test_health_through_gunicorn(server):
    assert requests.get(server.base_url + "/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(server.base_url + "/readyz", timeout=20)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
