"""Reading a CLI run's stream-json events as an answer: text deltas, silence, the end.

`read_answer` yields `Delta` for each piece of assistant text, `Silence` whenever the CLI
has said nothing for a heartbeat interval, and one `Finished` at the end; it raises
`ApiError` for a failed run or a passed deadline, and `ClientGone` when the client left.
Streamed and non-streamed replies are both built from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .cli_errors import classify_failure
from .cli_run import EOF, CliRun
from .errors import ApiError, no_retry_headers
from .openai_format import usage_from_stats

SAFETY_MARKER = "blocked due to safety"


@dataclass
class Delta:
    text: str


@dataclass
class Silence:
    pass


@dataclass
class Finished:
    finish_reason: str
    usage: dict[str, int] | None


class ClientGone(Exception):
    """The client closed its connection; the run is no longer wanted."""


@dataclass
class Deadlines:
    """Seconds, from the request's start, by which the first text and the end must come."""

    started: float  # time.monotonic() at request start
    total: float
    first_token: float

    def remaining(self, got_text: bool) -> tuple[float, str]:
        now = time.monotonic()
        total_left = self.started + self.total - now
        if got_text:
            return total_left, "request"
        first_left = self.started + self.first_token - now
        return (first_left, "first-token") if first_left < total_left else (total_left, "request")


def read_answer(run: CliRun, *, model: str, cli_model: str, deadlines: Deadlines, heartbeat: float,
                client_gone: Callable[[], bool] = lambda: False) -> Iterator[Delta | Silence | Finished]:
    got_text = False
    result: dict | None = None
    warnings: list[str] = []
    while True:
        left, which = deadlines.remaining(got_text)
        if left <= 0:
            # Retrying would likely time out again, at the cost of another full run.
            raise ApiError(504, _deadline_message(which, deadlines), code="deadline_exceeded",
                           headers=no_retry_headers())
        event = run.next_event(min(heartbeat, left))
        if event is None:
            if client_gone():
                raise ClientGone()
            yield Silence()
            continue
        if event is EOF:
            break
        kind = event.get("type")
        if kind == "message" and event.get("role") == "assistant":
            text = event.get("content")
            if isinstance(text, str) and text:
                got_text = True
                yield Delta(text)
        elif kind == "error":
            warnings.append(str(event.get("message", "")))
        elif kind == "result":
            result = event
    exit_code = run.finish()
    stats = result.get("stats") if result else None
    if result and result.get("status") == "success":
        yield Finished("stop", usage_from_stats(stats))
        return
    if result and not result.get("error") and any(SAFETY_MARKER in w for w in warnings):
        yield Finished("content_filter", usage_from_stats(stats))
        return
    error = (result or {}).get("error") or {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    if not message and warnings:
        message = "; ".join(w for w in warnings if w)
    raise classify_failure(exit_code, message, run.stderr_tail, model, cli_model)


def _deadline_message(which: str, deadlines: Deadlines) -> str:
    if which == "first-token":
        return (f"The model sent no answer within {deadlines.first_token:g} s "
                "(PROXY_FIRST_TOKEN_TIMEOUT); the gemini run was stopped.")
    return f"The request took longer than {deadlines.total:g} s (PROXY_REQUEST_TIMEOUT); the gemini run was stopped."
