"""The process pool (proxy/cli/pool.py), end to end: openai SDK -> gunicorn/gevent -> proxy -> a
session on a warm (or new) `gemini --acp` process -> the stand-in CLI, or the real CLI and the
loopback mock API. Which process answered a request is the `cli_pid` of its log line; the
stand-in records every prompt a process got (with its session, system prompt and cwd); hits
and misses are read from the pool's Prometheus metrics in the server's PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, multiprocess

from tests.conftest import make_client, records
from tests.proxy_server import (
    REAL_GEMINI,
    ProxyServer,
    group_alive,
    log_fields,
    open_chat_stream,
    pid_alive,
    wait_until,
)

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
                       "AAAABJRU5ErkJggg==")
# The random parts of a request body: the process's run dir and the session's cwd (in the
# session context's temp dir path).
RUN_DIR_NAME = re.compile(rb"gemini-proxy-[A-Za-z0-9_]{8}")
SESSION_DIR_NAME = re.compile(rb"s-[0-9a-f]{8}")


def pool_server(env: dict[str, str] | None = None, real_cli_api=None) -> ProxyServer:
    """A server with the pool on (session isolation unless `env` says otherwise), the stand-in CLI
    unless the real one is asked for (with the mock API it talks to)."""
    base = {"PROXY_POOL_SIZE": "1", "PROXY_CLI_INTERFACE": "auto", "PROXY_STATUS_HOLD": "10"}
    if real_cli_api is not None:
        base.update({"GEMINI_BIN": str(REAL_GEMINI), "GOOGLE_GEMINI_BASE_URL": real_cli_api.base_url})
    server = ProxyServer({**base, **(env or {})})
    metrics_dir = server.root / "metrics"
    metrics_dir.mkdir()
    server.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return server


def metric(server: ProxyServer, name: str, **labels: str) -> float:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=server.env["PROMETHEUS_MULTIPROC_DIR"])
    return sum(s.value for m in registry.collect() for s in m.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def chat(server: ProxyServer, text: str, system: str = "Be brief.", stream: bool = True, key: str = "sk-test",
         model: str = "gemini-2.5-pro", timeout: float = 30) -> tuple[str, dict[str, str]]:
    """(the answer, the request's log fields)."""
    request_id = f"pool-{secrets.token_hex(6)}"
    client = make_client(server.base_url, api_key=key, timeout=timeout,
                         default_headers={"X-Request-Id": request_id})
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    if stream:
        chunks = client.chat.completions.create(model=model, messages=messages, stream=True)
        answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        answer = client.chat.completions.create(model=model, messages=messages).choices[0].message.content
    return answer, log_fields(server, request_id, 10)


def prompts(server: ProxyServer) -> list[dict]:
    """Every prompt the stand-in processes got, with the pid of the process."""
    return [{"pid": run["pid"], **p} for run in records(server) for p in run.get("prompts") or []]


def prompt_with(server: ProxyServer, marker: str) -> dict:
    found = [p for p in prompts(server) if marker in p["text"]]
    assert len(found) == 1, found
    return found[0]


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


def assert_nothing_left(server: ProxyServer) -> None:
    assert wait_until(lambda: cli_processes(server) == {}, 10), cli_processes(server)
    assert wait_until(lambda: os.listdir(server.run_dir) == [], 10), os.listdir(server.run_dir)


def masked(body: bytes) -> bytes:
    return SESSION_DIR_NAME.sub(b"s-<session>", RUN_DIR_NAME.sub(b"gemini-proxy-<run>", body))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A pooled server with the stand-in, shared by the tests that need no setting of their own."""
    server = pool_server()
    with server:
        yield server
    assert_nothing_left(server)


# -- one process, many requests -----------------------------------------------------------------

@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
def test_warm_request_body_equals_cold(mock_api, mock, with_image):
    """The first request starts the process (cold); the second is a new session on it (warm): the
    API receives the same body but for the random names of the run dir and the session's cwd."""
    content = "what is in the picture?" if not with_image else [
        {"type": "text", "text": "what is in the picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}},
    ]
    server = pool_server(real_cli_api=mock_api)
    with server:
        bodies, fields = [], []
        for _ in range(2):
            client = make_client(server.base_url)
            request_id = f"pool-{secrets.token_hex(6)}"
            client.chat.completions.create(model="gemini-2.5-pro", extra_headers={"X-Request-Id": request_id},
                                           messages=[{"role": "system", "content": "You answer briefly."},
                                                     {"role": "user", "content": content}])
            bodies.append(mock.generate_requests()[-1].body)
            fields.append(log_fields(server, request_id, 10))
        assert [f["pool"] for f in fields] == ["miss", "hit"]
        assert fields[0]["cli_pid"] == fields[1]["cli_pid"]  # one process, two sessions
        cold, warm = bodies
        assert SESSION_DIR_NAME.search(cold) and SESSION_DIR_NAME.search(cold) != SESSION_DIR_NAME.search(warm)
        assert len(warm) == len(cold) and masked(warm) == masked(cold)
        if with_image:
            assert base64.b64encode(PNG) in warm
    assert_nothing_left(server)


def test_requests_share_a_process_each_in_a_session_of_its_own(shared):
    """Sequential requests with other system prompts and models: one process, a fresh session each,
    with its own system prompt, model and cwd; each cwd gone when its request has ended."""
    markers = [secrets.token_hex(4) for _ in range(5)]
    pids = set()
    for i, marker in enumerate(markers):
        answer, fields = chat(shared, f"FAKE:echo {marker}", system=f"System {i} {marker}",
                              model=["gemini-2.5-pro", "gemini-3-flash"][i % 2], stream=bool(i % 2))
        assert marker in answer
        pids.add(fields["cli_pid"])
    assert len(pids) == 1
    got = [prompt_with(shared, m) for m in markers]
    assert len({p["sessionId"] for p in got}) == 5 and len({p["cwd"] for p in got}) == 5
    assert [p["system_md"] for p in got] == [f"System {i} {m}" for i, m in enumerate(markers)]
    assert [p["model"] for p in got] == ["gemini-2.5-pro", "gemini-3-flash"] * 2 + ["gemini-2.5-pro"]
    assert wait_until(lambda: not any(os.path.exists(p["cwd"]) for p in got), 5)


def test_concurrent_requests_share_one_process(shared):
    """Twelve streams at once: sessions of one process, each answered whole."""
    markers = [secrets.token_hex(4) for _ in range(12)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: chat(shared, f"FAKE:slow:200 {markers[i]}", system="Shared."),
                                range(12), timeout=60))
    assert all(answer == "tick 0 tick 1 tick 2 tick 3 tick 4 " for answer, _ in results)
    assert len({fields["cli_pid"] for _, fields in results}) == 1
    assert len({prompt_with(shared, m)["sessionId"] for m in markers}) == 12


def test_concurrent_requests_with_other_system_prompts_each_get_their_own(shared):
    """Streams at once with three system prompts: a process reads its system prompt file at every
    session/new (proxy/cli/acp.py), so each session must still have been opened with its own."""
    markers = [secrets.token_hex(4) for _ in range(12)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: chat(shared, f"FAKE:slow:100 {markers[i]}", system=f"System {i % 3}"),
                                range(12), timeout=60))
    assert all(answer == "tick 0 tick 1 tick 2 tick 3 tick 4 " for answer, _ in results)
    got = [prompt_with(shared, m) for m in markers]
    assert [p["system_md"] for p in got] == [f"System {i % 3}" for i in range(12)]
    # A process serves one system prompt at a time: one that cannot switch now sends the request to
    # another (a new one if need be), up to PROXY_POOL_MAX (8).
    assert 1 <= len({fields["cli_pid"] for _, fields in results}) <= 8


def test_each_api_key_has_processes_of_its_own():
    with pool_server({"PROXY_API_KEYS": "sk-one,sk-two"}) as server:
        pids = {"sk-one": set(), "sk-two": set()}
        for key in ("sk-one", "sk-two", "sk-one", "sk-two"):
            marker = secrets.token_hex(4)
            answer, fields = chat(server, f"FAKE:echo {marker}", key=key)
            assert marker in answer
            pids[key].add(fields["cli_pid"])
        assert len(pids["sk-one"]) == len(pids["sk-two"]) == 1
        assert not pids["sk-one"] & pids["sk-two"]
    assert_nothing_left(server)


def test_a_process_retires_after_its_requests_and_is_replaced():
    """PROXY_PROCESS_MAX_REQUESTS=3: the fourth request is served by another process, the first is
    closed (and its run dir removed) once it has served its three."""
    with pool_server({"PROXY_PROCESS_MAX_REQUESTS": "3"}) as server:
        served = [chat(server, f"FAKE:echo {i}")[1]["cli_pid"] for i in range(7)]
        assert served[0] == served[1] == served[2] and served[3] not in served[:3], served
        assert len(set(served)) == 3, served  # 3 + 3 + 1
        first = int(served[0])
        assert wait_until(lambda: not pid_alive(first), 10)
        assert wait_until(lambda: metric(server, "gemini_proxy_process_retirements_total", reason="requests") >= 2, 10)
        assert len(cli_processes(server)) <= 2  # the one serving, and perhaps its replacement
    assert_nothing_left(server)


def warm_processes(server: ProxyServer) -> int:
    """Processes ready for a request, as /readyz reports them (the test servers run one worker)."""
    return requests.get(server.base_url + "/readyz", timeout=10).json()["pool"]["size"]


def test_isolation_process_gives_every_request_a_process_of_its_own():
    """PROXY_ISOLATION=process: warm processes, each used for one request and closed with it."""
    with pool_server({"PROXY_ISOLATION": "process"}) as server:
        fields = []
        for i in range(4):
            fields.append(chat(server, f"FAKE:echo {i}")[1])
            assert wait_until(lambda: warm_processes(server) >= 1, 15)  # its replacement has started
        pids = [int(f["cli_pid"]) for f in fields]
        assert len(set(pids)) == 4
        assert [f["pool"] for f in fields] == ["miss", "hit", "hit", "hit"]
        assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), 10)
        assert all(len(run.get("prompts") or []) <= 1 for run in records(server))
    assert_nothing_left(server)


def test_isolation_process_serves_more_streams_than_processes():
    """PROXY_ISOLATION=process, PROXY_POOL_MAX=2, 8 streams at once: the 6 that find no room wait for
    a process to end and then run; every stream is whole, and the worker keeps answering (a waiter
    that spun on a closed process once blocked it until gunicorn killed it)."""
    with pool_server({"PROXY_ISOLATION": "process", "PROXY_POOL_MAX": "2", "PROXY_QUEUE_TIMEOUT": "60"}) as server:
        chat(server, "FAKE:echo warm")
        with ThreadPoolExecutor(8) as executor:
            answers = list(executor.map(lambda i: chat(server, f"FAKE:echo stream {i}", timeout=60)[0], range(8)))
        assert all(answer.endswith(f"stream {i}") for i, answer in enumerate(answers)), answers
        assert requests.get(server.base_url + "/healthz", timeout=5).status_code == 200
        assert "WORKER TIMEOUT" not in server.log() and server.log().count("Booting worker") == 1
    assert_nothing_left(server)


def test_an_unused_tenant_keeps_nothing_and_shutdown_leaves_nothing():
    server = pool_server({"PROXY_POOL_MAX_IDLE": "3"})
    with server:
        pid = int(chat(server, "FAKE:echo hi")[1]["cli_pid"])
        assert pid_alive(pid)
        # PROXY_POOL_MAX_IDLE without a request: the process is closed, and nothing replaces it.
        assert wait_until(lambda: not pid_alive(pid), 15)
        assert wait_until(lambda: metric(server, "gemini_proxy_cli_processes") == 0, 5)
        assert cli_processes(server) == {}
        # The next request starts a process again.
        second = chat(server, "FAKE:echo again")[1]
        assert second["pool"] == "miss" and int(second["cli_pid"]) != pid
        last = int(second["cli_pid"])
    assert not group_alive(last)
    assert_nothing_left(server)


def test_a_request_reclaims_the_slot_of_another_keys_idle_process():
    """PROXY_MAX_CONCURRENT=1 and the slot is held by the idle process of another key: the request
    closes it and runs at once instead of queueing."""
    with pool_server({"PROXY_MAX_CONCURRENT": "1", "PROXY_QUEUE_TIMEOUT": "3",
                      "PROXY_API_KEYS": "sk-one,sk-two"}) as server:
        first = int(chat(server, "FAKE:echo hi", key="sk-one")[1]["cli_pid"])
        started = time.monotonic()
        answer, fields = chat(server, "FAKE:echo there", key="sk-two", stream=False)
        assert "there" in answer and time.monotonic() - started < 3
        assert int(fields["cli_pid"]) != first
        assert wait_until(lambda: not pid_alive(first), 5)
    assert_nothing_left(server)


def test_a_process_killed_while_idle_is_not_handed_out(shared):
    pid = int(chat(shared, "FAKE:echo before")[1]["cli_pid"])
    os.killpg(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 5)
    answer, fields = chat(shared, "FAKE:echo after")
    assert "after" in answer and int(fields["cli_pid"]) != pid


# -- a shared process in trouble -----------------------------------------------------------------

def stream_outcome(server: ProxyServer, text: str, key: str = "sk-test", timeout: float = 30) -> tuple[int, str]:
    """(HTTP status, body) of a streamed request, read to its end."""
    response = requests.post(server.base_url + "/v1/chat/completions", timeout=timeout, stream=True,
                             headers={"Authorization": f"Bearer {key}"},
                             json={"model": "gemini-cli", "stream": True,
                                   "messages": [{"role": "user", "content": text}]})
    return response.status_code, response.text


def test_a_crash_fails_the_requests_on_that_process_only():
    """A process crashes mid-stream: every request on it gets an error (a 5xx, or an error event in its
    stream) promptly; the other key's request on its own process is untouched; the pool replaces it."""
    with pool_server({"PROXY_API_KEYS": "sk-one,sk-two", "PROXY_STATUS_HOLD": "0.5"}) as server:
        victim = int(chat(server, "FAKE:echo warm", key="sk-one")[1]["cli_pid"])
        bystander = int(chat(server, "FAKE:echo warm", key="sk-two")[1]["cli_pid"])
        results: dict[str, tuple[int, str]] = {}

        def run(name: str, text: str, key: str) -> None:
            results[name] = stream_outcome(server, text, key)

        threads = [threading.Thread(target=run, args=(f"slow{i}", "FAKE:slow:1000", "sk-one")) for i in range(2)]
        threads.append(threading.Thread(target=run, args=("other", "FAKE:slow:300", "sk-two")))
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        started = time.monotonic()
        results["crash"] = stream_outcome(server, "FAKE:crash", "sk-one")
        for thread in threads:
            thread.join(30)
        assert time.monotonic() - started < 10
        for name in ("slow0", "slow1", "crash"):
            status, body = results[name]
            assert status >= 500 or ('"error"' in body and "[DONE]" in body), (name, status, body[-300:])
        status, body = results["other"]
        assert status == 200 and "tick 4" in body and '"error"' not in body, body[-300:]
        assert not pid_alive(victim)
        assert int(chat(server, "FAKE:echo after", key="sk-one")[1]["cli_pid"]) not in (victim, bystander)
        assert int(chat(server, "FAKE:echo after", key="sk-two")[1]["cli_pid"]) == bystander
    assert_nothing_left(server)


def test_a_hung_process_gives_its_requests_504s_and_is_replaced():
    """The process stops answering anything: each request on it gets its first-token 504; their
    cancels are not confirmed, so the process is killed and a new one serves the next request."""
    with pool_server({"PROXY_FIRST_TOKEN_TIMEOUT": "2", "PROXY_STATUS_HOLD": "10"}) as server:
        pid = int(chat(server, "FAKE:echo warm")[1]["cli_pid"])
        with ThreadPoolExecutor(3) as pool:
            started = time.monotonic()
            outcomes = list(pool.map(lambda t: stream_outcome(server, t), ["FAKE:freeze", "FAKE:silent:5", "hi"]))
            took = time.monotonic() - started
        assert [status for status, _ in outcomes] == [504, 504, 504], outcomes
        assert took < 6, took
        assert wait_until(lambda: not pid_alive(pid), 10), "the hung process was not killed"
        answer, fields = chat(server, "FAKE:echo after")
        assert "after" in answer and int(fields["cli_pid"]) != pid
    assert_nothing_left(server)


def test_a_client_leaving_cancels_its_session_and_the_process_stays():
    with pool_server({"PROXY_POOL_MAX": "1"}) as server:
        marker = secrets.token_hex(4)
        pid = int(chat(server, "FAKE:echo warm")[1]["cli_pid"])
        sock = open_chat_stream(server.port, f"FAKE:hang {marker}")
        try:
            assert wait_until(lambda: any(marker in p["text"] for p in prompts(server)), 10)
            time.sleep(0.5)
        finally:
            sock.close()
        entry = prompt_with(server, marker)
        assert entry["pid"] == pid
        assert wait_until(lambda: run_phase(server, pid) == "cancelled", 10), "no session/cancel reached the CLI"
        assert wait_until(lambda: not os.path.exists(entry["cwd"]), 10), "the session's cwd is left"
        assert pid_alive(pid)
        answer, fields = chat(server, "FAKE:echo after")
        assert "after" in answer and int(fields["cli_pid"]) == pid
    assert_nothing_left(server)


def run_phase(server: ProxyServer, pid: int) -> str | None:
    """The stand-in process's last recorded phase (`cancelled` after a session/cancel)."""
    return next((run.get("phase") for run in records(server) if run["pid"] == pid), None)


def test_an_unconfirmed_cancel_kills_the_process():
    """A session deaf to its cancel: the process is killed (its other session gets an error)."""
    with pool_server({"PROXY_STATUS_HOLD": "0.5"}) as server:
        pid = int(chat(server, "FAKE:echo warm")[1]["cli_pid"])
        other: dict[str, tuple[int, str]] = {}
        thread = threading.Thread(target=lambda: other.update(r=stream_outcome(server, "FAKE:slow:2000")))
        thread.start()
        sock = open_chat_stream(server.port, "FAKE:stubborn")
        try:
            assert wait_until(lambda: any("FAKE:stubborn" in p["text"] for p in prompts(server)), 10)
        finally:
            sock.close()
        assert wait_until(lambda: not pid_alive(pid), 12), "the process outlived its unconfirmed cancel"
        thread.join(30)
        status, body = other["r"]
        assert status >= 500 or '"error"' in body, body[-300:]
        assert int(chat(server, "FAKE:echo after")[1]["cli_pid"]) != pid
    assert_nothing_left(server)


def test_a_message_nobody_asked_for_retires_the_process():
    with pool_server() as server:
        pid = int(chat(server, "FAKE:echo warm")[1]["cli_pid"])
        answer, fields = chat(server, "FAKE:stray")
        assert answer == "Hello from the stand-in." and int(fields["cli_pid"]) == pid
        assert wait_until(lambda: not pid_alive(pid), 10)
        assert int(chat(server, "FAKE:echo after")[1]["cli_pid"]) != pid
        assert metric(server, "gemini_proxy_process_retirements_total", reason="unclean") == 1
    assert_nothing_left(server)
