"""POST /v1/chat/completions: one headless gemini run per request, streamed or not."""

from __future__ import annotations

import secrets
import select
import socket
import time
from collections.abc import Callable, Iterator
from itertools import chain

from flask import Blueprint, Response, current_app, g, jsonify, request

from .answer import ClientGone, Deadlines, Delta, Finished, Silence, read_answer
from .chat_request import ChatRequest
from .cli_run import CliRun
from .errors import ApiError
from .openai_format import to_chunk, to_completion, to_usage_chunk
from .prompt import MAX_PROMPT_BYTES, build_prompt
from .runs import start_run
from .sse import DONE, HEARTBEAT, sse_data
from .timing import RequestTiming

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
def create_chat_completion():
    """Answer an OpenAI chat completion request through one gemini CLI run."""
    config = current_app.config
    timing: RequestTiming = g.timing
    body = request.get_json(force=True, silent=True)
    if body is None:
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json")
    chat = ChatRequest.from_json(body, config["MODELS"])
    timing.model, timing.stream = chat.model, chat.stream
    prompt = build_prompt(chat, config["PROXY_DEFAULT_SYSTEM_PROMPT"])
    if len(prompt.text.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise ApiError(413, "The conversation is longer than the gemini CLI's 8 MB input limit.",
                       code="context_length_exceeded", param="messages")
    run = start_run(chat, prompt)
    try:
        # A warm process was spawned before this request: its spawn is not this request's cost.
        pool_on = current_app.extensions.get("warm_pool") is not None
        timing.pool = "hit" if run.from_pool else ("miss" if pool_on else "off")
        timing.spawn_ms = None if run.from_pool else run.spawn_ms
        answer = read_answer(
            run, model=chat.model, cli_model=chat.cli_model,
            deadlines=Deadlines(g.started_monotonic, config["PROXY_REQUEST_TIMEOUT"],
                                config["PROXY_FIRST_TOKEN_TIMEOUT"]),
            heartbeat=config["PROXY_HEARTBEAT_INTERVAL"], client_gone=client_gone_check(request.environ),
        )
        if chat.stream:
            return stream_response(chat, run, answer, timing)
        return completion_response(chat, run, answer, timing)
    except BaseException:
        close_run(run, timing)
        raise


def completion_response(chat: ChatRequest, run: CliRun, answer: Iterator, timing: RequestTiming) -> Response:
    """The whole answer as one chat.completion."""
    try:
        texts: list[str] = []
        finished = Finished("stop", None)
        for item in answer:
            if isinstance(item, Delta):
                timing.token()
                texts.append(item.text)
            elif isinstance(item, Finished):
                finished = item
    except ClientGone:
        timing.outcome = "client_closed"
        return Response(status=499)
    finally:
        close_run(run, timing)
    timing.usage(finished.usage)
    body = to_completion(completion_id(), int(time.time()), chat.model, "".join(texts),
                         finished.finish_reason, finished.usage)
    return jsonify(body)


def stream_response(chat: ChatRequest, run: CliRun, answer: Iterator, timing: RequestTiming) -> Response:
    """The answer as server-sent chat.completion.chunk events."""
    # Hold the status line until the answer starts, fails or PROXY_STATUS_HOLD passes, so that
    # what fails in the first seconds (quota, login, unknown model) gets a real HTTP status.
    held: list = []
    hold_until = time.monotonic() + current_app.config["PROXY_STATUS_HOLD"]
    try:
        for item in answer:
            held.append(item)
            if isinstance(item, Delta):
                timing.token()
            if not isinstance(item, Silence) or time.monotonic() >= hold_until:
                break
    except ClientGone:
        close_run(run, timing)
        timing.outcome = "client_closed"
        return Response(status=499)

    chunk_id, created = completion_id(), int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        return sse_data(to_chunk(chunk_id, created, chat.model, delta, finish_reason))

    def finish(outcome: str) -> None:
        if timing.emitted:
            return
        close_run(run, timing)
        timing.finish(200, outcome)
        timing.emit()

    def events() -> Iterator[str]:
        outcome = "client_closed"
        try:
            yield chunk({"role": "assistant", "content": ""})
            for item in chain(held, answer):
                if isinstance(item, Silence):
                    yield HEARTBEAT
                elif isinstance(item, Delta):
                    timing.token()
                    yield chunk({"content": item.text})
                elif isinstance(item, Finished):
                    timing.usage(item.usage)
                    yield chunk({}, item.finish_reason)
                    if chat.include_usage and item.usage:
                        yield sse_data(to_usage_chunk(chunk_id, created, chat.model, item.usage))
            outcome = "ok"
            yield DONE
        except ApiError as error:
            # Content has been sent with a 200: the error goes into the stream.
            outcome = f"error:{error.code}"
            yield sse_data(error.body())
            yield DONE
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


def close_run(run: CliRun, timing: RequestTiming) -> None:
    """End the request's CLI run (idempotent) and note how it exited."""
    run.close()
    timing.exit_code = run.returncode


def completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


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
