"""Prometheus metrics, served at GET /metrics, summed over all gunicorn workers.

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a directory (a private temp dir when
unset) before the workers start, so prometheus_client keeps each worker's values in
files there and /metrics, whichever worker answers, reads them all. Without that variable
(the Flask app outside gunicorn, unit tests) the process's own registry is served.

Chat request metrics are observed in one place: when RequestTiming.emit() logs the
request's line (proxy.timing.observers). The run slot gauges follow the RunLimiter (limiter.listeners);
they and the in-progress gauge are summed over live workers only.
"""

from __future__ import annotations

import os
import struct
import time

from flask import Blueprint, Flask, Response, g
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from . import timing
from .limits import RunLimiter

bp = Blueprint("metrics", __name__)

REQUESTS = Counter("gemini_proxy_requests_total",
                   "Chat completion requests, by model, HTTP status and outcome.",
                   ["model", "status", "outcome"])
RUN_SLOTS_IN_USE = Gauge("gemini_proxy_run_slots_in_use",
                         "gemini processes holding a run slot: runs of requests in flight plus warm pool "
                         "processes (gemini_proxy_warm_processes).", multiprocess_mode="livesum")
REQUESTS_IN_PROGRESS = Gauge("gemini_proxy_requests_in_progress",
                             "Chat requests between arrival and end, queued ones included.",
                             multiprocess_mode="livesum")
RUN_CAPACITY = Gauge("gemini_proxy_run_capacity",
                     "gemini run slots (WORKERS x PROXY_MAX_CONCURRENT).", multiprocess_mode="livesum")
QUEUE_LENGTH = Gauge("gemini_proxy_queue_length",
                     "Requests waiting for a run slot (all workers).", multiprocess_mode="livesum")
SPAWN_SECONDS = Histogram("gemini_proxy_spawn_seconds", "Time to start the gemini CLI process.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
TTFT_SECONDS = Histogram("gemini_proxy_time_to_first_token_seconds",
                         "From request arrival to the first answer text.", ["model"],
                         buckets=(0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120))
DURATION_SECONDS = Histogram("gemini_proxy_request_duration_seconds",
                             "From request arrival to the end of the answer.", ["model"],
                             buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
TOKENS_PER_SECOND = Histogram("gemini_proxy_tokens_per_second", "Completion tokens per second of generation.",
                              ["model"], buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000))
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
PROMPT_TOKENS = Histogram("gemini_proxy_prompt_tokens", "Prompt tokens per request (as the CLI reports).",
                          ["model"], buckets=_TOKEN_BUCKETS)
COMPLETION_TOKENS = Histogram("gemini_proxy_completion_tokens", "Completion tokens per request.",
                              ["model"], buckets=_TOKEN_BUCKETS)
CLI_EXITS = Counter("gemini_proxy_cli_exit_codes_total",
                    "gemini CLI exits, by exit code (negative: killed by that signal).", ["code"])
CLIENT_DISCONNECTS = Counter("gemini_proxy_client_disconnects_total",
                             "Requests whose client went away before the answer ended (the run is killed).")
DEADLINE_KILLS = Counter("gemini_proxy_deadline_kills_total",
                         "Runs killed at PROXY_FIRST_TOKEN_TIMEOUT or PROXY_REQUEST_TIMEOUT.")


def request_started() -> None:
    """before_request (after start_request made g.timing for a chat request)."""
    t = g.get("timing")
    if t is not None:
        REQUESTS_IN_PROGRESS.inc()
        t.counted_in_progress = True


def observe_request(t: timing.RequestTiming) -> None:
    """Everything about one chat request, from its RequestTiming (called by emit())."""
    if getattr(t, "counted_in_progress", False):
        REQUESTS_IN_PROGRESS.dec()
    model = t.model or "-"
    REQUESTS.labels(model, str(t.status or 0), t.outcome).inc()
    if t.spawn_ms is not None:
        SPAWN_SECONDS.observe(t.spawn_ms / 1000)
    if t.ttft_ms is not None:
        TTFT_SECONDS.labels(model).observe(t.ttft_ms / 1000)
    if t.total_ms is not None:
        DURATION_SECONDS.labels(model).observe(t.total_ms / 1000)
    if t.tokens_per_s is not None:
        TOKENS_PER_SECOND.labels(model).observe(t.tokens_per_s)
    if t.prompt_tokens is not None:
        PROMPT_TOKENS.labels(model).observe(t.prompt_tokens)
    if t.completion_tokens is not None:
        COMPLETION_TOKENS.labels(model).observe(t.completion_tokens)
    if t.exit_code is not None:
        CLI_EXITS.labels(str(t.exit_code)).inc()
    if t.outcome == "client_closed":
        CLIENT_DISCONNECTS.inc()
    elif t.outcome == "error:deadline_exceeded":
        DEADLINE_KILLS.inc()


def observe_limiter(limiter: RunLimiter) -> None:
    RUN_SLOTS_IN_USE.set(limiter.in_use)
    QUEUE_LENGTH.set(limiter.queued)


def registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return collected
    return REGISTRY


@bp.get("/metrics")
def metrics() -> Response:
    # A worker that is just starting creates its files empty and then sizes them; a scrape
    # reading one in between fails to parse it (struct.error). Such a race passes in a moment.
    for attempt in range(3):
        try:
            return Response(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
        except (struct.error, RuntimeError):
            if attempt == 2:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def init_app(app: Flask) -> None:
    if observe_request not in timing.observers:
        timing.observers.append(observe_request)
    limiter: RunLimiter = app.extensions["run_limiter"]
    limiter.listeners.append(observe_limiter)
    RUN_CAPACITY.set(limiter.capacity)
    observe_limiter(limiter)
    app.before_request(request_started)
    app.register_blueprint(bp)
