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

from .cli.acp import read_acp_answer
from .cli.answer import (
    CLI_ADDED_ARGUMENT,
    AnswerShape,
    ClientGone,
    Deadlines,
    Delta,
    Finished,
    Silence,
    Thinking,
    ToolCalled,
    read_answer,
)
from .cli.process import CliRun
from .cli.prompt import MAX_PROMPT_BYTES, build_prompt
from .cli.runs import start_run
from .cli.spec import RunSpec
from .conversation import Conversation, ToolCall
from .service.errors import ApiError
from .service.timing import RequestTiming


@dataclass
class Answering:
    """A request's run and the events of its answer, with the request's timing."""

    run: CliRun
    events: Iterator[Delta | Thinking | ToolCalled | Silence | Finished]
    timing: RequestTiming

    def token(self) -> None:
        """An answer event arrived: the request's first (and last) token times."""
        if self.timing.first_token_at is None:
            self.timing.handed_at = self.run.handed_at
        self.timing.token()

    def close(self) -> None:
        """End the run (idempotent) and note how it exited."""
        self.run.close()
        self.timing.exit_code = self.run.returncode


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
    def event(self, item: Delta | Thinking | ToolCalled | Finished) -> Iterator[str]: ...
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


def start_answer(conversation: Conversation) -> Answering:
    """Spawn (or take warm) the run for a validated conversation, fed with its prompt."""
    config = current_app.config
    timing: RequestTiming = g.timing
    timing.model, timing.stream = conversation.model, conversation.stream
    interface = RunSpec.interface_for(conversation, config["PROXY_CLI_INTERFACE"])
    prompt = build_prompt(conversation, config["PROXY_DEFAULT_SYSTEM_PROMPT"], inline_images=interface == "acp")
    if len(prompt.text.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise ApiError(413, "The conversation is longer than the gemini CLI's 8 MB input limit.",
                       code="context_length_exceeded", param="messages")
    spec = RunSpec.for_conversation(conversation, prompt.system_text, interface)
    run = start_run(spec, prompt)
    try:
        # A warm process was spawned before this request: its spawn is not this request's cost.
        pool_on = current_app.extensions.get("warm_pool") is not None
        timing.pool = "hit" if run.from_pool else ("miss" if pool_on else "off")
        timing.spawn_ms = None if run.from_pool else run.spawn_ms
        tools = conversation.offered_tools
        shape = AnswerShape(tool_names=spec.client_tool_names(tools),
                            own_wait_for_previous=frozenset(
                                t.name for t in tools if CLI_ADDED_ARGUMENT in (t.parameters.get("properties") or {})),
                            parallel_tool_calls=conversation.parallel_tool_calls,
                            max_output_tokens=conversation.generation.max_output_tokens)
        deadlines = Deadlines(g.started_monotonic, config["PROXY_REQUEST_TIMEOUT"],
                              config["PROXY_FIRST_TOKEN_TIMEOUT"])
        common = {"model": conversation.model, "cli_model": conversation.cli_model, "deadlines": deadlines,
                  "heartbeat": config["PROXY_HEARTBEAT_INTERVAL"], "shape": shape,
                  "client_gone": client_gone_check(request.environ)}
        events = read_acp_answer(run, prompt, **common) if run.acp else read_answer(run, **common)
    except BaseException:
        run.close()
        raise
    return Answering(run, events, timing)


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
