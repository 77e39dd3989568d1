"""gemini-proxy: an OpenAI-compatible gateway that answers through the headless gemini CLI."""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, g, request

from .api import chat, messages, models, responses
from .cli.pool import ProcessPool
from .config import finish_settings, load_settings
from .service import auth, errors, health, metrics
from .service.limits import RunLimiter
from .service.timing import RequestTiming

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment, then `test_config`; then blueprints."""
    app = Flask(__name__)
    settings = load_settings()
    settings.update(test_config or {})
    app.config.update(finish_settings(settings))
    app.config["MAX_CONTENT_LENGTH"] = app.config["PROXY_MAX_BODY_BYTES"] or None
    app.config["STARTED_AT"] = int(time.time())
    app.extensions["run_limiter"] = RunLimiter(app.config["PROXY_MAX_CONCURRENT"], app.config["PROXY_QUEUE_SIZE"],
                                               app.config["PROXY_QUEUE_TIMEOUT"])
    # Per worker; it starts nothing before the worker's first request.
    app.extensions["process_pool"] = ProcessPool(app.config, app.extensions["run_limiter"])
    configure_request_log()

    app.register_blueprint(errors.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(responses.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(health.bp)
    app.before_request(start_request)   # first: the request id, also for a 401
    auth.init_app(app)                  # then: the API key check on /v1/* and /metrics
    metrics.init_app(app)
    app.after_request(end_request)
    return app


def configure_request_log() -> None:
    """The per-request line goes to stdout, as the original design promised."""
    logger = logging.getLogger("proxy.requests")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def start_request() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    g.request_id = incoming if _REQUEST_ID.match(incoming) else f"req-{secrets.token_hex(8)}"
    g.started_monotonic = time.monotonic()
    # The views that answer through the gateway (`@gateway.answering`) get the request's timing: its
    # log line and metrics, also for a request refused before its run starts.
    if getattr(current_app.view_functions.get(request.endpoint), "answers_through_gateway", False):
        g.timing = RequestTiming(g.request_id)


def end_request(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "-")
    timing: RequestTiming | None = g.get("timing")
    if timing is not None and not response.is_streamed:
        # A streamed body is still to be sent: the stream records and logs its own end.
        timing.finish(response.status_code, error_outcome(response.status_code, timing.outcome))
        response.headers["Server-Timing"] = timing.server_timing()
        if g.get("run_closes_after_response"):
            response.call_on_close(timing.emit)  # after the run's close: the line has its exit code
        else:
            timing.emit()
    return response


def error_outcome(status: int, outcome: str) -> str | None:
    """A non-streamed response's outcome: kept if already set (client_closed), else
    `error:<code>` from the ApiError answered, or plain `error`."""
    if status < 400 or outcome != "ok":
        return None
    code = g.get("error_code")
    return f"error:{code}" if code else "error"
