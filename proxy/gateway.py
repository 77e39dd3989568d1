"""From a Conversation to a reply, for every API front-end: spawn, read, stream or collect.

A front-end (chat.py for OpenAI chat completions) parses its request into a `Conversation`,
calls `start_answer` (validation is done, so the run is spawned before any response exists
and early failures get a real HTTP status), and then either `collect`s the answer into one
JSON body or `stream`s it through an `Encoder` of its own that turns answer events into its
wire's SSE events. Runs are closed from the stream's `finally`, `call_on_close`, and on
every error path.
"""

from __future__ import annotations

import json
import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Protocol

from flask import Response, current_app, g, jsonify, request

from .answer import AnswerEvent, Delta, Finished, Silence, Thinking, ToolCalled
from .cli.prompt import MAX_PROMPT_BYTES, build_prompt
from .cli.runs import Run, start_run
from .cli.spec import AnswerShape, RunSpec
from .conversation import Conversation, ToolCall
from .service.errors import ApiError, no_retry_headers
from .service.timing import RequestTiming


class ClientGone(Exception):
    """The client closed its connection; the run is no longer wanted."""


@dataclass
class Deadlines:
    """Seconds, from the request's start, by which the first output and the end must come."""

    started: float  # time.monotonic() at request start
    total: float
    first_token: float

    def remaining(self, got_output: bool) -> tuple[float, str]:
        now = time.monotonic()
        total_left = self.started + self.total - now
        if got_output:
            return total_left, "request"
        first_left = self.started + self.first_token - now
        return (first_left, "first-token") if first_left < total_left else (total_left, "request")


@dataclass
class Answering:
    """A request's run and the events of its answer, with the request's timing."""

    run: Run
    events: Iterator[AnswerEvent | Silence]
    timing: RequestTiming

    def token(self) -> None:
        """An answer event arrived: the request's first (and last) token times."""
        if self.timing.first_token_at is None:
            self.timing.handed_at = self.run.handed_at
        self.timing.token()

    def close(self) -> None:
        """End the run (idempotent) and note how its process exited, if it ended with it."""
        self.run.close()
        self.timing.exit_code, self.timing.cli_pid = self.run.exit_code, self.run.pid


@dataclass
class Collected:
    """A whole answer: its text, its thoughts, its tool calls and how it ended."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finished: Finished = field(default_factory=lambda: Finished("stop", None))


class Encoder(Protocol):
    """A front-end's streaming wire format: answer events in, SSE text out."""

    def start(self) -> Iterator[str]: ...
    def event(self, item: AnswerEvent) -> Iterator[str]: ...
    def heartbeat(self) -> str: ...
    def error(self, error: ApiError) -> Iterator[str]: ...
    def end(self) -> Iterator[str]: ...


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]", re.I)


def json_body() -> object:
    """The request's JSON, or a 400 for a body that is not JSON (or too deeply nested), or that
    holds text no UTF-8 prompt can carry (an unpaired UTF-16 surrogate escape)."""
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:
        body = None
    if body is None:
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json")
    if _SURROGATE_ESCAPE.search(request.get_data(cache=True)):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "The request body holds an unpaired UTF-16 surrogate (a `\\ud800`-style "
                           "escape without its pair), which is not text.", code="invalid_json") from None
    return body


def answering(view: Callable) -> Callable:
    """Mark a view that answers through the gateway: the app then gives each of its requests a
    timing (the request log line and metrics), also when it is refused before its run starts."""
    view.answers_through_gateway = True  # type: ignore[attr-defined]
    return view


def start_answer(conversation: Conversation) -> Answering:
    """Give a validated conversation its run (a session on a warm process, or a process of its
    own) with its prompt sent, and the events of its answer."""
    config = current_app.config
    if g.get("timing") is None:  # a view not marked `@answering`: timed from here
        g.timing = RequestTiming(g.request_id)
    timing: RequestTiming = g.timing
    timing.model, timing.stream = conversation.model, conversation.stream
    interface = "headless" if config["PROXY_CLI_INTERFACE"] == "headless" else "acp"
    prompt = build_prompt(conversation, config["PROXY_DEFAULT_SYSTEM_PROMPT"], inline_images=interface == "acp")
    if len(prompt.text.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise ApiError(413, "The conversation is longer than the gemini CLI's 8 MB input limit.",
                       code="context_length_exceeded", param="messages")
    spec = RunSpec.for_conversation(conversation, prompt.system_text, interface)
    pool = current_app.extensions["process_pool"]
    run = start_run(config, pool, current_app.extensions["run_limiter"], spec,
                    AnswerShape.for_conversation(conversation, spec), prompt, g.get("tenant", ""))
    try:
        # A warm process was started before this request: its spawn is not this request's cost.
        timing.pool = "hit" if run.from_pool else ("miss" if pool.warm and interface == "acp" else "off")
        timing.spawn_ms = run.spawn_ms
        timing.session = run.session_kind
        deadlines = Deadlines(g.started_monotonic, config["PROXY_REQUEST_TIMEOUT"],
                              config["PROXY_FIRST_TOKEN_TIMEOUT"])
        events = read_events(run, deadlines, config["PROXY_HEARTBEAT_INTERVAL"], client_gone_check(request.environ))
    except BaseException:
        run.close()
        raise
    return Answering(run, events, timing)


def read_events(run: Run, deadlines: Deadlines, heartbeat: float,
                client_gone: Callable[[], bool]) -> Iterator[AnswerEvent | Silence]:
    """The run's answer up to `Finished`, with a Silence for each heartbeat interval without an
    event; raises the deadline's 504 (the first-token deadline until output came) or ClientGone,
    cancelling the run first."""
    got_output = False
    while True:
        left, which = deadlines.remaining(got_output)
        if left <= 0:
            run.cancel()
            raise deadline_error(which, deadlines)
        event = run.next_event(min(heartbeat, left))
        if event is None:
            if client_gone():
                run.cancel()
                raise ClientGone()
            yield Silence()
            continue
        got_output = got_output or isinstance(event, (Delta, Thinking, ToolCalled))
        yield event
        if isinstance(event, Finished):
            return


def deadline_error(which: str, deadlines: Deadlines) -> ApiError:
    """The 504 for a passed deadline; retrying would likely time out again, at the cost of a run."""
    if which == "first-token":
        message = (f"The model sent no answer within {deadlines.first_token:g} s "
                   "(PROXY_FIRST_TOKEN_TIMEOUT); the gemini run was stopped.")
    else:
        message = (f"The request took longer than {deadlines.total:g} s (PROXY_REQUEST_TIMEOUT); "
                   "the gemini run was stopped.")
    return ApiError(504, message, code="deadline_exceeded", headers=no_retry_headers())


def respond(conversation: Conversation, encoder: Encoder, body: Callable[[Collected], dict]) -> Response:
    """A view's whole answer: start it, then stream it through `encoder` (a streamed request), or
    collect it and reply with the JSON `body(collected)`."""
    answering = start_answer(conversation)
    if conversation.stream:
        return stream(answering, encoder)
    collected = collect(answering)
    if collected is None:
        return Response(status=499)  # the client left; nobody reads this
    return reply(answering, body(collected))


def collect(answering: Answering) -> Collected | None:
    """The whole answer, or None when the client left first. A failed or abandoned run is closed
    here; a finished one by `reply`, once the response has been sent (closing takes ~100 ms)."""
    timing = answering.timing
    collected = Collected()
    texts: list[str] = []
    thoughts: list[str] = []
    try:
        for item in answering.events:
            if isinstance(item, Delta):
                answering.token()
                texts.append(item.text)
            elif isinstance(item, Thinking):
                answering.token()
                thoughts.append(item.text)
            elif isinstance(item, ToolCalled):
                answering.token()
                collected.tool_calls.append(item.call)
            elif isinstance(item, Finished):
                collected.finished = item
                break
    except ClientGone:
        answering.close()
        timing.outcome = "client_closed"
        return None
    except BaseException:
        answering.close()
        raise
    timing.usage(collected.finished.usage)
    collected.text, collected.reasoning = "".join(texts), "".join(thoughts)
    return collected


def reply(answering: Answering, body: dict) -> Response:
    """A collected answer's JSON response; its run is closed once the response has been sent (the
    request's log line follows then, see proxy/__init__.py, so that it has the exit code)."""
    response = jsonify(body)
    response.call_on_close(answering.close)
    g.run_closes_after_response = True
    return response


def stream(answering: Answering, encoder: Encoder) -> Response:
    """The answer as server-sent events in the encoder's wire format."""
    timing, run_events = answering.timing, answering.events
    # Hold the status line until the answer starts, fails or PROXY_STATUS_HOLD passes, so that
    # what fails in the first seconds (quota, login, unknown model) gets a real HTTP status.
    held: list = []
    hold_until = time.monotonic() + current_app.config["PROXY_STATUS_HOLD"]
    try:
        for item in run_events:
            held.append(item)
            if isinstance(item, (Delta, Thinking, ToolCalled)):
                answering.token()  # the first token's time is when it came, not when it is sent
            if not isinstance(item, Silence) or time.monotonic() >= hold_until:
                break
    except ClientGone:
        answering.close()
        timing.outcome = "client_closed"
        return Response(status=499)
    except BaseException:
        answering.close()
        raise

    def finish(outcome: str) -> None:
        if timing.emitted:
            return
        answering.close()
        timing.finish(200, outcome)
        timing.emit()

    def events() -> Iterator[str]:
        outcome = "client_closed"
        try:
            yield from encoder.start()
            for item in chain(held, run_events):
                if isinstance(item, Silence):
                    yield encoder.heartbeat()
                    continue
                if isinstance(item, (Delta, Thinking, ToolCalled)):
                    answering.token()
                elif isinstance(item, Finished):
                    timing.usage(item.usage)
                yield from encoder.event(item)
            outcome = "ok"
            yield from encoder.end()
        except ApiError as error:
            # Content has been sent with a 200: the error goes into the stream.
            outcome = f"error:{error.code}"
            yield from encoder.error(error)
        except ClientGone:
            pass
        finally:
            finish(outcome)

    response = Response(events(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: never buffer this response
    # If the body is never iterated (client gone first), this still closes the run.
    response.call_on_close(lambda: finish("client_closed"))
    return response


def client_gone_check(environ: dict) -> Callable[[], bool]:
    """A cheap test of whether the client closed its connection, without writing to it."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return gone
