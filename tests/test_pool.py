"""The warm pool (proxy/cli/pool.py), end to end: openai SDK -> gunicorn/gevent -> proxy -> warm or
cold `gemini` -> loopback mock API. Hits and misses are read from the pool's Prometheus
metrics in the server's PROMETHEUS_MULTIPROC_DIR; CLI processes are found through /proc by
their cwd inside the server's run dir."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, multiprocess

from tests.conftest import make_client
from tests.proxy_server import REAL_GEMINI, ProxyServer, group_alive, pid_alive, wait_until

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
                       "AAAABJRU5ErkJggg==")
RUN_DIR_NAME = re.compile(rb"gemini-proxy-[A-Za-z0-9_]{8}")
IMAGE_NAME = re.compile(rb"image-\d\d-[0-9a-f]{12}")


def pool_server(mock_api, root_env: dict[str, str] | None = None) -> ProxyServer:
    server = ProxyServer({
        "GEMINI_BIN": str(REAL_GEMINI),
        "GOOGLE_GEMINI_BASE_URL": mock_api.base_url,
        "PROXY_STATUS_HOLD": "10",
        "PROXY_POOL_SIZE": "1",
        "PROXY_POOL_KEYS": "2",
        **(root_env or {}),
    })
    metrics_dir = server.root / "metrics"
    metrics_dir.mkdir()
    server.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return server


@pytest.fixture(scope="module")
def warm_server(mock_api):
    if not REAL_GEMINI.exists():
        pytest.fail("the pinned gemini CLI is missing: run `npm ci`")
    server = pool_server(mock_api)
    with server:
        yield server
    assert_nothing_left(server)


def metric(server: ProxyServer, name: str) -> float:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=server.env["PROMETHEUS_MULTIPROC_DIR"])
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


def hits(server: ProxyServer) -> float:
    return metric(server, "gemini_proxy_warm_hits_total")


def misses(server: ProxyServer) -> float:
    return metric(server, "gemini_proxy_warm_misses_total")


def cli_processes(server: ProxyServer) -> dict[int, Path]:
    """pid -> run dir of every live process whose cwd is inside the server's run dir."""
    found = {}
    prefix = str(server.run_dir) + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd.startswith(prefix) and pid_alive(int(entry)):
            found[int(entry)] = Path(prefix + cwd[len(prefix):].split("/", 1)[0])
    return found


def readyz_pool(server: ProxyServer) -> tuple[dict, dict]:
    """The worker's (runs, pool) as /readyz reports them (the test servers run one worker)."""
    body = json.loads(urllib.request.urlopen(server.base_url + "/readyz", timeout=10).read())
    return body["runs"], body.get("pool") or {}


def warm_for(server: ProxyServer, system: str) -> dict[int, Path]:
    """The warm CLI processes whose system prompt file holds `system`: only once every run slot
    in use is a warm process (a request's run closes just after its reply, and would count)."""
    runs, pool = readyz_pool(server)
    if runs["in_use"] != pool.get("size"):
        return {}
    out = {}
    for pid, run_dir in cli_processes(server).items():
        try:
            if (run_dir / "system.md").read_text() == system:
                out[pid] = run_dir
        except OSError:
            continue
    return out


def assert_nothing_left(server: ProxyServer) -> None:
    assert cli_processes(server) == {}
    assert wait_until(lambda: os.listdir(server.run_dir) == [], 10), os.listdir(server.run_dir)


def chat(server: ProxyServer, system: str, content, stream: bool = True) -> str:
    client = make_client(server.base_url)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
    if not stream:
        return client.chat.completions.create(model="gemini-2.5-pro", messages=messages).choices[0].message.content
    chunks = client.chat.completions.create(model="gemini-2.5-pro", messages=messages, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def last_body(mock) -> bytes:
    requests = [r for r in mock.generate_requests() if r.rpc == "streamGenerateContent"]
    assert requests, "the mock API received no request"
    return requests[-1].body


def masked(body: bytes) -> bytes:
    return IMAGE_NAME.sub(b"image-NN-<name>", RUN_DIR_NAME.sub(b"gemini-proxy-<run>", body))


@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
def test_warm_request_body_equals_cold(warm_server, mock, with_image):
    system = f"You answer briefly. Case {secrets.token_hex(4)}."
    content = "what is in the picture?" if not with_image else [
        {"type": "text", "text": "what is in the picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}},
    ]
    hits0, misses0 = hits(warm_server), misses(warm_server)
    lines0 = len(warm_server.request_lines())

    assert chat(warm_server, system, content) == "Hello from the mock!"  # a new key: served cold
    cold = last_body(mock)
    assert (hits(warm_server), misses(warm_server)) == (hits0, misses0 + 1)
    # The pool learned the key from the cold request and starts a process for it.
    assert wait_until(lambda: len(warm_for(warm_server, system)) == 1, 15)

    assert chat(warm_server, system, content) == "Hello from the mock!"
    warm = last_body(mock)
    assert (hits(warm_server), misses(warm_server)) == (hits0 + 1, misses0 + 1)

    # The request log says which request a warm process served (a stream logs at its very end).
    assert wait_until(lambda: len(warm_server.request_lines()) >= lines0 + 2, 5)
    pools = [line.split(" pool=", 1)[1].split()[0] for line in warm_server.request_lines()[lines0:]]
    assert sorted(pools) == ["hit", "miss"]
    assert RUN_DIR_NAME.search(cold) and len(warm) == len(cold)  # same shape: only random parts differ
    assert masked(warm) == masked(cold)
    if with_image:
        assert base64.b64encode(PNG) in warm


def test_other_system_prompt_is_served_cold_and_right(warm_server, mock):
    first, other = f"Be terse {secrets.token_hex(4)}.", f"Be verbose {secrets.token_hex(4)}."
    assert chat(warm_server, first, "hi", stream=False) == "Hello from the mock!"
    assert wait_until(lambda: len(warm_for(warm_server, first)) == 1, 15)
    hits0, misses0 = hits(warm_server), misses(warm_server)

    assert chat(warm_server, other, "hi", stream=False) == "Hello from the mock!"
    body = mock.generate_requests()[-1].json
    assert body["systemInstruction"]["parts"][0]["text"] == other
    assert (hits(warm_server), misses(warm_server)) == (hits0, misses0 + 1)
    # Both keys are now warm (PROXY_POOL_KEYS=2); the first one's process was not consumed.
    assert wait_until(lambda: len(warm_for(warm_server, other)) == 1, 15)
    assert len(warm_for(warm_server, first)) == 1


def test_warm_process_killed_while_idle_is_not_handed_out(warm_server, mock):
    system = f"Killed case {secrets.token_hex(4)}."
    assert chat(warm_server, system, "hi") == "Hello from the mock!"
    assert wait_until(lambda: len(warm_for(warm_server, system)) == 1, 15)
    [(pid, run_dir)] = warm_for(warm_server, system).items()
    os.killpg(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 5)
    hits0, misses0 = hits(warm_server), misses(warm_server)

    assert chat(warm_server, system, "hi") == "Hello from the mock!"  # not fed to the dead one
    assert mock.generate_requests()[-1].json["systemInstruction"]["parts"][0]["text"] == system
    assert (hits(warm_server), misses(warm_server)) == (hits0, misses0 + 1)
    # The dead one is cleaned up and replaced.
    assert wait_until(lambda: not run_dir.exists(), 10)
    assert wait_until(lambda: len(warm_for(warm_server, system)) == 1, 15)
    assert pid not in warm_for(warm_server, system)


def test_unused_key_keeps_nothing_and_shutdown_leaves_nothing(mock_api, mock):
    # Long enough for the process to be started (a cold request holds refills back for one
    # start-up) and seen, short enough to watch it go.
    server = pool_server(mock_api, {"PROXY_POOL_MAX_IDLE": "8"})
    with server:
        assert chat(server, "Recycle me.", "hi") == "Hello from the mock!"
        assert wait_until(lambda: len(warm_for(server, "Recycle me.")) == 1, 15)
        [(first_pid, first_dir)] = warm_for(server, "Recycle me.").items()
        # PROXY_POOL_MAX_IDLE without a request: the process is closed, and nothing replaces it.
        assert wait_until(lambda: not pid_alive(first_pid) and not first_dir.exists(), 20)
        assert wait_until(lambda: metric(server, "gemini_proxy_warm_processes") == 0, 5)
        assert warm_for(server, "Recycle me.") == {}
        # The next request is served cold and makes the key warm again.
        misses0 = misses(server)
        assert chat(server, "Recycle me.", "hi") == "Hello from the mock!"
        assert misses(server) == misses0 + 1
        assert wait_until(lambda: len(warm_for(server, "Recycle me.")) == 1, 15)
        [(second_pid, _)] = warm_for(server, "Recycle me.").items()
        assert second_pid != first_pid
    assert not group_alive(second_pid)
    assert_nothing_left(server)


def test_request_reclaims_the_slot_of_an_idle_warm_process(tmp_path):
    """PROXY_MAX_CONCURRENT=1 and the slot is held by a warm process for another key: the request
    closes it and runs at once instead of queueing (stand-in CLI)."""
    server = ProxyServer({"PROXY_POOL_SIZE": "1", "PROXY_MAX_CONCURRENT": "1", "PROXY_QUEUE_TIMEOUT": "3"})
    with server:
        assert chat(server, "First key.", "hi") == "Hello from the stand-in."
        assert wait_until(lambda: len(warm_for(server, "First key.")) == 1, 10)
        [(pid, _)] = warm_for(server, "First key.").items()
        assert chat(server, "Second key.", "hi", stream=False) == "Hello from the stand-in."
        assert not pid_alive(pid)
    assert_nothing_left(server)
