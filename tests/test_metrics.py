"""GET /metrics under gunicorn with two workers: prometheus_client's multiprocess mode sums
both workers' numbers, whichever worker answers the scrape."""

from __future__ import annotations

import os
import secrets
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import records
from tests.proxy_server import ProxyServer, group_alive, open_chat_stream, pid_alive, wait_until


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def scrape(server: ProxyServer) -> dict[tuple[str, frozenset], float]:
    response = requests.get(server.base_url + "/metrics", timeout=10)
    assert response.status_code == 200, f"{response.text}\n{server.log()[-4000:]}"
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples, name: str, **labels) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(value for (sample, got), value in samples.items() if sample == name and want <= got)


def chat(server: ProxyServer, text: str, stream: bool = False) -> requests.Response:
    response = requests.post(server.base_url + "/v1/chat/completions", timeout=30, stream=stream,
                             json={"model": "gemini-cli", "messages": ask(text), "stream": stream})
    if stream:
        assert response.content is not None  # read to the end
    return response


@pytest.fixture(scope="module")
def metrics_server():
    with ProxyServer({"PROXY_FIRST_TOKEN_TIMEOUT": "2", "PROXY_STATUS_HOLD": "1"}, workers=2) as proxy:
        yield proxy


def test_counts_from_both_workers(metrics_server):
    server = metrics_server
    before = scrape(server)
    served_by: set[int] = set()
    sent = 0
    # Concurrent slow requests on separate connections land on both workers; bounded rounds.
    for _ in range(5):
        marker = secrets.token_hex(4)
        with ThreadPoolExecutor(8) as pool:
            texts = [f"FAKE:slow:150 {marker} {i}" for i in range(8)]
            statuses = list(pool.map(lambda text: chat(server, text).status_code, texts))
        assert statuses == [200] * 8
        sent += 8
        served_by |= {r["ppid"] for r in records(server) if r.get("stdin") and marker in r["stdin"]}
        if len(served_by) >= 2:
            break
    assert len(served_by) == 2, f"all requests went to one worker: {served_by}"

    # A request ends (and is counted) once its run is closed, just after its response was sent.
    assert wait_until(lambda: total(scrape(server), "gemini_proxy_requests_in_progress") == 0, 10)
    # Every scrape (any worker may answer) sees the sum over both workers.
    for _ in range(4):
        after = scrape(server)
        name = "gemini_proxy_requests_total"
        assert total(after, name, model="gemini-cli", status="200", outcome="ok") - \
            total(before, name, model="gemini-cli", status="200", outcome="ok") == sent
        assert total(after, "gemini_proxy_cli_exit_codes_total", code="0") - \
            total(before, "gemini_proxy_cli_exit_codes_total", code="0") == sent
        for histogram in ("gemini_proxy_spawn_seconds_count",
                          "gemini_proxy_time_to_first_token_seconds_count",
                          "gemini_proxy_request_duration_seconds_count",
                          "gemini_proxy_prompt_tokens_count", "gemini_proxy_completion_tokens_count",
                          "gemini_proxy_tokens_per_second_count"):
            assert total(after, histogram) - total(before, histogram) == sent, histogram
        # slow:150 takes >= 0.6 s: no request lands in the 0.5 s duration bucket.
        assert total(after, "gemini_proxy_request_duration_seconds_bucket", le="0.5") == \
            total(before, "gemini_proxy_request_duration_seconds_bucket", le="0.5")
        # Both workers' capacity (PROXY_MAX_CONCURRENT=64 each), nothing in flight now.
        assert total(after, "gemini_proxy_run_capacity") == 128
        assert total(after, "gemini_proxy_run_slots_in_use") == 0
        assert total(after, "gemini_proxy_requests_in_progress") == 0
        assert total(after, "gemini_proxy_queue_length") == 0


def test_errors_deadlines_and_disconnects(metrics_server):
    server = metrics_server
    before = scrape(server)
    assert chat(server, "FAKE:exit:7").status_code == 502
    assert chat(server, "FAKE:hang").status_code == 504  # PROXY_FIRST_TOKEN_TIMEOUT=2
    assert chat(server, "FAKE:quota").status_code == 429

    # A client that hangs up mid-stream.
    marker = secrets.token_hex(4)
    with open_chat_stream(server.port, f"FAKE:slow:400 {marker}", timeout=10) as sock:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")

    def counted(name, **labels):
        return total(scrape(server), name, **labels) - total(before, name, **labels)

    assert wait_until(lambda: counted("gemini_proxy_client_disconnects_total") == 1, 10)
    after = scrape(server)
    assert total(after, "gemini_proxy_deadline_kills_total") - total(before, "gemini_proxy_deadline_kills_total") == 1
    name = "gemini_proxy_requests_total"
    assert total(after, name, status="502") - total(before, name, status="502") == 1
    assert total(after, name, status="504", outcome="error:deadline_exceeded") - \
        total(before, name, status="504", outcome="error:deadline_exceeded") == 1
    assert total(after, name, status="429") - total(before, name, status="429") == 1
    assert total(after, name, outcome="client_closed") - total(before, name, outcome="client_closed") == 1
    assert total(after, "gemini_proxy_cli_exit_codes_total", code="7") - \
        total(before, "gemini_proxy_cli_exit_codes_total", code="7") == 1


def test_in_flight_gauge_and_dead_worker(metrics_server):
    """The in-use and in-progress gauges count a running stream; when its worker is SIGKILLed, the
    master's child_exit hook drops that worker's live gauges, while counters keep its counts."""
    server = metrics_server
    marker = secrets.token_hex(4)
    sock = open_chat_stream(server.port, f"FAKE:slow:3000 {marker}", timeout=10)
    try:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        during = scrape(server)
        assert total(during, "gemini_proxy_run_slots_in_use") == 1  # the warm pool is off here
        assert total(during, "gemini_proxy_requests_in_progress") == 1
        requests_before = total(scrape(server), "gemini_proxy_requests_total")
        run = [r for r in records(server) if r.get("stdin") and marker in r["stdin"]][-1]
        os.kill(run["ppid"], signal.SIGKILL)  # the worker that owns the run
        assert wait_until(lambda: not pid_alive(run["ppid"]), 10)
        assert wait_until(lambda: not group_alive(run["pgid"]), 10), "the CLI outlived its worker"
    finally:
        sock.close()
    # The master replaces the worker; the dead one's gauge no longer counts.
    assert wait_until(lambda: total(scrape(server), "gemini_proxy_run_slots_in_use") == 0, 10)
    assert total(scrape(server), "gemini_proxy_requests_in_progress") == 0
    # ... and the replacement worker's capacity comes back once it has booted.
    assert wait_until(lambda: total(scrape(server), "gemini_proxy_run_capacity") == 128, 20)
    assert total(scrape(server), "gemini_proxy_requests_total") >= requests_before
    assert chat(server, "after the kill").status_code == 200


def test_private_dir_is_made_and_removed_and_stale_files_cleared(tmp_path):
    before = set(Path(tempfile.gettempdir()).glob("gemini-proxy-metrics-*"))
    with ProxyServer() as proxy:
        assert chat(proxy, "hello").status_code == 200
        made = set(Path(tempfile.gettempdir()).glob("gemini-proxy-metrics-*")) - before
        assert made and any(list(d.glob("*.db")) for d in made)
    assert not any(d.exists() for d in made), "private metrics dir left behind"

    # A dir of our own: *.db files of an earlier run are removed at start, the dir is kept.
    own = tmp_path / "prom"
    own.mkdir()
    (own / "counter_999999.db").write_bytes(b"stale from an earlier run")
    with ProxyServer({"PROMETHEUS_MULTIPROC_DIR": str(own)}) as proxy:
        assert not (own / "counter_999999.db").exists()
        assert chat(proxy, "hello").status_code == 200
        # Counted when its run has closed, just after the reply.
        assert wait_until(lambda: total(scrape(proxy), "gemini_proxy_requests_total", status="200") == 1, 10)
    assert own.is_dir()
