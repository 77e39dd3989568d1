"""Reading a CLI run's stream-json events as an answer: text, tool calls, silence, the end.

`read_answer` yields `Delta` for each piece of assistant text, `ToolCalled` for each call of
a client tool, `Silence` whenever the CLI has said nothing for a heartbeat interval, and one
`Finished` at the end; it raises `ApiError` for a failed run or a passed deadline, and
`ClientGone` when the client left. Every API front-end, streamed or not, builds its reply
from these events.

A model turn that calls client tools ends the run: the CLI prints a `tool_use` event for
every call of the turn while the turn streams, then calls them all through the run's MCP
tool server, which reports the first call on the run's socket (`tool_called`) and never
answers. By then every `tool_use` line is in the stdout pipe (the CLI writes stdout
synchronously before it calls a tool), so draining stdout collects the whole turn.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..api.openai_format import json_text, usage_from_stats
from ..conversation import ToolCall
from ..service.errors import ApiError, no_retry_headers
from .failures import classify_failure
from .process import EOF, TOOL_CALLED, CliRun

# After the first tool call reaches the MCP server: stdout is drained until it has been quiet
# this long with nothing left in the pipe, and for no longer than SETTLE_MAX.
SETTLE_QUIET = 0.05
CLI_ADDED_ARGUMENT = "wait_for_previous"
SETTLE_MAX = 1.0

SAFETY_MARKER = "blocked due to safety"


@dataclass
class Delta:
    text: str


@dataclass
class Thinking:
    """A piece of the model's thoughts (reasoning), streamed before its answer."""

    text: str


@dataclass
class ToolCalled:
    call: ToolCall


@dataclass
class Silence:
    pass


@dataclass
class Finished:
    finish_reason: str  # stop, length, content_filter or tool_calls (OpenAI's names)
    usage: dict[str, int] | None


@dataclass
class AnswerShape:
    """What the request fixed that reading the answer needs."""

    tool_names: dict[str, str]  # the names the CLI reports client tool calls under -> client names
    # The CLI adds this argument to every tool's schema; it is the client's only if it declared it.
    own_wait_for_previous: frozenset[str] = frozenset()
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = None


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
                shape: AnswerShape | None = None,
                client_gone: Callable[[], bool] = lambda: False) -> Iterator[Delta | ToolCalled | Silence | Finished]:
    shape = shape or AnswerShape(tool_names={})
    state = {"output": False}  # text or a tool call came: the first-token deadline is met
    calls: list[ToolCall] = []
    result: dict | None = None
    warnings: list[str] = []
    for event in run_events(run, deadlines, heartbeat, client_gone, lambda: state["output"]):
        if isinstance(event, Silence):
            yield event
            continue
        if event is EOF:
            break
        kind = event.get("type")
        if kind == "message" and event.get("role") == "assistant":
            text = event.get("content")
            if isinstance(text, str) and text:
                state["output"] = True
                yield Delta(text)
        elif kind == "tool_use":
            call = _client_call(event, shape, calls)
            if call is not None:
                calls.append(call)
                state["output"] = True
                yield ToolCalled(call)
        elif kind == TOOL_CALLED or (kind == "tool_result" and calls):
            # The turn is over and its calls are being run: collect the rest of them (the socket's
            # report can overtake the stdout lines that preceded it), and end here.
            for call in _settle(run, shape, calls):
                calls.append(call)
                yield ToolCalled(call)
            if calls:
                yield Finished("tool_calls", None)
                return
        elif kind == "error":
            warnings.append(str(event.get("message", "")))
        elif kind == "result":
            result = event
            if result.get("status") == "success":
                # The answer is whole; the CLI's own exit takes ~100 ms more, nobody need wait for it.
                run.answered = True
                usage = usage_from_stats(result.get("stats"))
                yield Finished("length" if _hit_limit(result.get("stats"), shape.max_output_tokens) else "stop", usage)
                return
    exit_code = run.finish()
    stats = result.get("stats") if result else None
    if result and not result.get("error") and any(SAFETY_MARKER in w for w in warnings):
        yield Finished("content_filter", usage_from_stats(stats))
        return
    error = (result or {}).get("error") or {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    if not message and warnings:
        message = "; ".join(w for w in warnings if w)
    raise classify_failure(exit_code, message, run.stderr_tail, model, cli_model)


def run_events(run: CliRun, deadlines: Deadlines, heartbeat: float, client_gone: Callable[[], bool],
               answering: Callable[[], bool]) -> Iterator[dict | object | Silence]:
    """The run's events up to EOF, with a Silence for each heartbeat interval without one; raises
    the deadline's 504 (the first-token deadline until `answering()` is true) or ClientGone."""
    while True:
        left, which = deadlines.remaining(answering())
        if left <= 0:
            raise deadline_error(which, deadlines)
        event = run.next_event(min(heartbeat, left))
        if event is None:
            if client_gone():
                raise ClientGone()
            yield Silence()
            continue
        yield event
        if event is EOF:
            return


def _client_call(event: dict, shape: AnswerShape, calls: list[ToolCall]) -> ToolCall | None:
    """A `tool_use` event as the client's call, or None (a built-in tool, or one call too many)."""
    name = shape.tool_names.get(str(event.get("tool_name")))
    if name is None or (calls and not shape.parallel_tool_calls):
        return None
    arguments = dict(event.get("parameters") or {}) if isinstance(event.get("parameters"), dict) else {}
    if name not in shape.own_wait_for_previous:
        arguments.pop(CLI_ADDED_ARGUMENT, None)
    return ToolCall(id=f"call_{secrets.token_hex(12)}", name=name, arguments=json_text(arguments))


def _settle(run: CliRun, shape: AnswerShape, calls: list[ToolCall]) -> Iterator[ToolCall]:
    """The rest of the turn's calls: what stdout still holds once the tool server has been called."""
    known = list(calls)
    deadline = time.monotonic() + SETTLE_MAX
    while time.monotonic() < deadline:
        event = run.next_event(SETTLE_QUIET)
        if event is None:
            if run.stdout_pending() == 0:
                return
            continue
        if event is EOF:
            return
        if event.get("type") == "tool_use":
            call = _client_call(event, shape, known)
            if call is not None:
                known.append(call)
                yield call


def _hit_limit(stats: dict | None, limit: int | None) -> bool:
    """Whether the answer stopped at `max_tokens`: the CLI reports no finish reason, so its output
    token count (with the thoughts', which count against the same limit) is compared with it."""
    if not limit or not stats:
        return False
    output = int(stats.get("output_tokens") or 0)
    thoughts = max(0, int(stats.get("total_tokens") or 0) - int(stats.get("input_tokens") or 0) - output)
    return output + thoughts >= limit


def deadline_error(which: str, deadlines: Deadlines) -> ApiError:
    """The 504 for a passed deadline; retrying would likely time out again, at the cost of a run."""
    if which == "first-token":
        message = (f"The model sent no answer within {deadlines.first_token:g} s "
                   "(PROXY_FIRST_TOKEN_TIMEOUT); the gemini run was stopped.")
    else:
        message = (f"The request took longer than {deadlines.total:g} s (PROXY_REQUEST_TIMEOUT); "
                   "the gemini run was stopped.")
    return ApiError(504, message, code="deadline_exceeded", headers=no_retry_headers())
