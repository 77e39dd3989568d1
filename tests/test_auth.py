"""Access control: PROXY_API_KEYS / PROXY_API_KEYS_FILE, Bearer keys on /v1/* and /metrics,
the open health checks, and the start-up warning when listening beyond loopback without keys."""

from __future__ import annotations

import logging
import os
import runpy
import socket
from pathlib import Path

import openai
import pytest
import requests

from proxy import create_app
from tests.conftest import make_client
from tests.proxy_server import FAKE_GEMINI, PROJECT_DIR, ProxyServer, api_key_config

KEY_A = "sk-lab-alpha-0123456789"
KEY_B = "sk-lab-beta-9876543210"


def make_app(tmp_path: Path, **config):
    os.environ.setdefault("GEMINI_API_KEY", "test-key")
    settings = {"TESTING": True, "GEMINI_BIN": str(FAKE_GEMINI), "PROXY_RUN_DIR": str(tmp_path),
                "PROXY_GEMINI_CONFIG": str(api_key_config(tmp_path / "user-gemini"))}
    settings.update(config)
    return create_app(settings)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_401(response) -> None:
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_without_keys_everything_is_open(tmp_path):
    client = make_app(tmp_path).test_client()
    assert client.get("/v1/models").status_code == 200
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions", "/v1/no-such-route", "/metrics"])
def test_missing_or_wrong_key_is_401_openai_error(tmp_path, path):
    client = make_app(tmp_path, PROXY_API_KEYS=(KEY_A, KEY_B)).test_client()
    assert_401(client.get(path))
    assert_401(client.get(path, headers=bearer("sk-wrong")))
    assert_401(client.get(path, headers=bearer(KEY_A[:-1])))          # a prefix is not the key
    assert_401(client.get(path, headers={"Authorization": KEY_A}))     # no scheme
    assert_401(client.get(path, headers={"Authorization": f"Basic {KEY_A}"}))


def test_every_configured_key_works(tmp_path):
    client = make_app(tmp_path, PROXY_API_KEYS=(KEY_A, KEY_B)).test_client()
    for key in (KEY_A, KEY_B):
        assert client.get("/v1/models", headers=bearer(key)).status_code == 200
        assert client.get("/metrics", headers=bearer(key)).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": f"bearer  {KEY_A} "}).status_code == 200


def test_health_checks_need_no_key(tmp_path):
    client = make_app(tmp_path, PROXY_API_KEYS=(KEY_A,)).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_metrics_open_leaves_only_v1_protected(tmp_path):
    client = make_app(tmp_path, PROXY_API_KEYS=(KEY_A,), PROXY_METRICS_OPEN=True).test_client()
    assert client.get("/metrics").status_code == 200
    assert_401(client.get("/v1/models"))


def test_key_file_with_comments(tmp_path):
    key_file = tmp_path / "api-keys"
    key_file.write_text(f"# lab keys\n\n{KEY_A}   # alice\n  {KEY_B}\n#{'sk-commented-out'}\n")
    client = make_app(tmp_path, PROXY_API_KEYS_FILE=str(key_file)).test_client()
    assert client.get("/v1/models", headers=bearer(KEY_A)).status_code == 200
    assert client.get("/v1/models", headers=bearer(KEY_B)).status_code == 200
    assert_401(client.get("/v1/models", headers=bearer("sk-commented-out")))
    assert_401(client.get("/v1/models", headers=bearer("# lab keys")))


def test_keys_from_env_and_file_both_count(tmp_path):
    key_file = tmp_path / "api-keys"
    key_file.write_text(KEY_B + "\n")
    client = make_app(tmp_path, PROXY_API_KEYS=(KEY_A,), PROXY_API_KEYS_FILE=str(key_file)).test_client()
    assert client.get("/v1/models", headers=bearer(KEY_A)).status_code == 200
    assert client.get("/v1/models", headers=bearer(KEY_B)).status_code == 200


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
def test_unreadable_or_empty_key_file_refuses_to_start(tmp_path, content):
    key_file = tmp_path / "api-keys"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(RuntimeError, match="PROXY_API_KEYS_FILE"):
        make_app(tmp_path, PROXY_API_KEYS_FILE=str(key_file))


def test_env_parsing_of_key_list():
    from proxy.config import load_settings

    settings = load_settings({"PROXY_API_KEYS": f" {KEY_A}, ,{KEY_B},", "PROXY_METRICS_OPEN": "true"})
    assert settings["PROXY_API_KEYS"] == (KEY_A, KEY_B)
    assert settings["PROXY_METRICS_OPEN"] is True
    assert load_settings({})["PROXY_API_KEYS"] == ()


def test_keys_never_logged(tmp_path, caplog):
    client = make_app(tmp_path, PROXY_API_KEYS=(KEY_A,)).test_client()
    with caplog.at_level(logging.DEBUG):
        client.get("/v1/models", headers=bearer("sk-presented-wrong-key"))
        client.get("/v1/models", headers=bearer(KEY_A))
    assert "sk-presented-wrong-key" not in caplog.text and KEY_A not in caplog.text


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "api-keys"
    key_file.write_text(f"# test keys\n{KEY_A}\n")
    with ProxyServer({"PROXY_API_KEYS": KEY_B, "PROXY_API_KEYS_FILE": str(key_file)}) as proxy:
        yield proxy


def test_through_gunicorn_with_the_openai_sdk(keyed_server):
    for key in (KEY_A, KEY_B):
        reply = make_client(keyed_server.base_url, api_key=key).chat.completions.create(
            model="gemini-cli", messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content
    with pytest.raises(openai.AuthenticationError) as info:
        make_client(keyed_server.base_url, api_key="sk-wrong-key-xyz").chat.completions.create(
            model="gemini-cli", messages=[{"role": "user", "content": "hello"}])
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    assert requests.get(keyed_server.base_url + "/healthz", timeout=10).status_code == 200
    assert requests.get(keyed_server.base_url + "/metrics", timeout=10).status_code == 401
    # The rejected chat request is logged (with its id and outcome), its key never.
    log = keyed_server.log()
    assert "outcome=error:invalid_api_key" in log
    assert "sk-wrong-key-xyz" not in log and KEY_A not in log and KEY_B not in log
    assert "NO API key" not in log


class _FakeListener:
    def __init__(self, family, address):
        self.sock = self
        self.family = family
        self._address = address

    def getsockname(self):
        return self._address


class _FakeLog:
    def __init__(self):
        self.lines: list[str] = []

    def warning(self, message, *args):
        self.lines.append(message % args)


class _FakeArbiter:
    def __init__(self, listeners):
        self.LISTENERS = listeners
        self.log = _FakeLog()


@pytest.mark.parametrize("listeners, env, warned", [
    ([_FakeListener(socket.AF_INET, ("0.0.0.0", 8765))], {}, True),
    ([_FakeListener(socket.AF_INET, ("172.17.0.1", 8765))], {}, True),
    ([_FakeListener(socket.AF_INET6, ("::", 8765, 0, 0))], {}, True),
    ([_FakeListener(socket.AF_INET, ("172.17.0.1", 8765))], {"PROXY_API_KEYS": KEY_A}, False),
    ([_FakeListener(socket.AF_INET, ("0.0.0.0", 8765))], {"PROXY_API_KEYS_FILE": "/etc/keys"}, False),
    ([_FakeListener(socket.AF_INET, ("127.0.0.1", 8765))], {}, False),
    ([_FakeListener(socket.AF_INET6, ("::1", 8765, 0, 0))], {}, False),
    ([_FakeListener(socket.AF_UNIX, "/run/gemini-proxy.sock")], {}, False),
])
def test_start_up_warning_beyond_loopback_without_keys(monkeypatch, listeners, env, warned):
    """gunicorn.conf.py's when_ready hook (the master, once), with stand-in listeners: the
    tests bind 127.0.0.1 only."""
    for name in ("PROXY_API_KEYS", "PROXY_API_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    conf = runpy.run_path(str(PROJECT_DIR / "gunicorn.conf.py"))
    arbiter = _FakeArbiter(listeners)
    conf["when_ready"](arbiter)
    assert bool(arbiter.log.lines) == warned
    if warned:
        assert "NO API key" in arbiter.log.lines[0] and "PROXY_API_KEYS" in arbiter.log.lines[0]
