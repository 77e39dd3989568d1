"""The per-worker run cap under real gunicorn: PROXY_MAX_CONCURRENT runs, a queue of
PROXY_QUEUE_SIZE waiting at most PROXY_QUEUE_TIMEOUT, then 429 with Retry-After.
(The whole service's cap is WORKERS x PROXY_MAX_CONCURRENT; one worker here.)"""

from __future__ import annotations

import secrets
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests

from tests.conftest import records
from tests.proxy_server import ProxyServer, wait_until


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def limited():
    with ProxyServer({"PROXY_MAX_CONCURRENT": "2", "PROXY_QUEUE_SIZE": "1", "PROXY_QUEUE_TIMEOUT": "2"},
                     workers=1) as proxy:
        yield proxy


def post(server: ProxyServer, text: str) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.post(server.base_url + "/v1/chat/completions", timeout=30,
                             json={"model": "gemini-cli", "messages": ask(text)})
    return response, time.monotonic() - started


def runs_started(server: ProxyServer, marker: str) -> int:
    return sum(1 for r in records(server) if r.get("stdin") and marker in r["stdin"])


def readyz_runs(server: ProxyServer) -> dict:
    return requests.get(server.base_url + "/readyz", timeout=10).json()["runs"]


def assert_busy(response: requests.Response) -> None:
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"  # ceil(PROXY_QUEUE_TIMEOUT / 2)
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "gateway_busy"
    assert "PROXY_MAX_CONCURRENT" in error["message"]


def test_two_run_one_waits_then_429_fourth_429_at_once(limited):
    marker = secrets.token_hex(4)
    text = f"FAKE:slow:1000 {marker}"  # five chunks 1 s apart: ~4 s a run
    with ThreadPoolExecutor(4) as pool:
        running: list[Future] = [pool.submit(post, limited, text) for _ in range(2)]
        assert wait_until(lambda: runs_started(limited, marker) == 2, 10)
        queued = pool.submit(post, limited, text)
        assert wait_until(lambda: readyz_runs(limited) == {"in_use": 2, "capacity": 2, "queued": 1,
                                                           "queue_size": 1}, 5)
        metrics = requests.get(limited.base_url + "/metrics", timeout=10).text
        assert "gemini_proxy_queue_length 1.0" in metrics
        assert "gemini_proxy_run_slots_in_use 2.0" in metrics

        fourth, fourth_took = post(limited, text)
        assert_busy(fourth)
        assert fourth_took < 1.0, "a full queue answers at once"
        assert "the queue is full" in fourth.json()["error"]["message"]

        third, third_took = queued.result(timeout=30)
        assert_busy(third)
        assert 1.5 <= third_took < 4.0, f"waited {third_took:.1f} s, not about PROXY_QUEUE_TIMEOUT (2 s)"
        assert "within 2 s" in third.json()["error"]["message"]

        for future in running:
            response, _ = future.result(timeout=30)
            assert response.status_code == 200
            assert "tick 4" in response.json()["choices"][0]["message"]["content"]
    assert runs_started(limited, marker) == 2, "rejected requests never started a CLI"
    # Slots and queue are free again (a run's slot is freed when it has closed, just after its
    # reply), and the server keeps serving.
    free = {"in_use": 0, "capacity": 2, "queued": 0, "queue_size": 1}
    assert wait_until(lambda: readyz_runs(limited) == free, 10), readyz_runs(limited)
    response, _ = post(limited, "still serving")
    assert response.status_code == 200


def test_queued_request_runs_when_a_slot_frees(limited):
    marker = secrets.token_hex(4)
    text = f"FAKE:slow:250 {marker}"  # ~1 s a run: frees a slot within the 2 s queue timeout
    with ThreadPoolExecutor(3) as pool:
        running = [pool.submit(post, limited, text) for _ in range(2)]
        assert wait_until(lambda: runs_started(limited, marker) == 2, 10)
        waiting = pool.submit(post, limited, text)
        responses = [f.result(timeout=30) for f in running + [waiting]]
    assert [r.status_code for r, _ in responses] == [200, 200, 200]
    assert runs_started(limited, marker) == 3
    assert responses[2][1] >= 0.5, "the third had to wait for a slot"
