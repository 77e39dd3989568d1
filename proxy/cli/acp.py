"""Driving a CLI run over ACP (`gemini --acp`, JSON-RPC 2.0 on stdin/stdout): one session a run.

Why two ways to drive the CLI (measured, shared/gemini-cli-agents.md and the README):
- ACP streams the model's thoughts (`agent_thought_chunk`); headless stream-json drops them.
- ACP reads the system prompt (GEMINI_SYSTEM_MD) and settings.json (a new cwd defeats its
  10 s cache) at `session/new`, and takes the model per session (`session/set_model`): a
  process initialised ahead of time can serve any request without client tools, so the warm
  pool keeps such processes under one key instead of one per (model, prompt, settings).
- ACP runs a turn's tool calls one at a time, announcing the next only once the last has an
  answer, so the calls of a parallel turn cannot all be returned without the CLI sending
  results on to the API. Requests with client tools therefore run headless, where every call
  of the turn is printed before any runs (proxy/cli/answer.py).

Each ACP run opens its session ahead: `session/new` and `session/set_model` go out the moment
`initialize` is answered (`ahead_session`), for the spec the run was started with, so a warm
process whose spec is the request's starts at `session/prompt`. A request with another spec
gets a process of another spec (or a cold one): its own settings and system prompt are
written and a new session opened in a new cwd (`prepare_session`); the session opened ahead is
never used. Each process serves one request, then is closed with its run: nothing one request
left in it can reach the next.

`read_acp_answer` yields the same events as `answer.read_answer` (Thinking, Delta, Silence,
Finished), so the front-ends cannot tell the two apart.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..service.errors import ApiError
from .answer import (
    AnswerShape,
    ClientGone,
    Deadlines,
    Delta,
    Finished,
    Silence,
    Thinking,
    deadline_error,
    run_events,
)
from .failures import classify_failure
from .process import EOF, CliRun
from .prompt import Prompt

AHEAD_NEW = 1  # JSON-RPC id of the session opened ahead
SESSION_NEW, SET_MODEL, PROMPT = 11, 12, 13  # ... of a session opened for the request, and the prompt
AHEAD_DIR = "session"  # in the run dir: the cwd of the session opened ahead
SESSION_DIR = "request"  # ... of one opened for the request: a new cwd, so settings are re-read
EMPTY_SUBJECT = "****\n"  # how the CLI prints a thought that has no subject


def ahead_session(run: CliRun) -> list[dict[str, Any]]:
    """The request that opens a run's session ahead (sent by CliRun once `initialize` is answered).
    The process was started with `-m` the spec's model, so the session needs no `set_model`."""
    (run.dir / AHEAD_DIR).mkdir(mode=0o700, exist_ok=True)
    return [{"jsonrpc": "2.0", "id": AHEAD_NEW, "method": "session/new",
             "params": {"cwd": str(run.dir / AHEAD_DIR), "mcpServers": []}}]


def prepare_session(run: CliRun, spec: Any, settings: dict[str, Any], system_text: str) -> None:
    """Give `run` to a request of `spec`. The session opened ahead is the request's if the run was
    started for the same spec; otherwise write what the request's own `session/new` will read."""
    run.used = True
    if run.spec == spec:
        return
    run.spec = None  # the session opened ahead is not this request's
    (run.home / ".gemini" / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    run.system_file.write_text(system_text, encoding="utf-8")
    (run.dir / SESSION_DIR).mkdir(mode=0o700, exist_ok=True)


def read_acp_answer(run: CliRun, prompt: Prompt, *, model: str, cli_model: str, deadlines: Deadlines,
                    heartbeat: float, shape: AnswerShape | None = None,
                    client_gone: Callable[[], bool] = lambda: False) -> Iterator[Delta | Thinking | Silence | Finished]:
    """One ACP session on `run` (prepared with `prepare_session`): its answer's events."""
    shape = shape or AnswerShape(tool_names={})
    state = {"output": False}

    def failed(message: str = "", status: int | None = None, still_up: bool = False) -> ApiError:
        # A process that answered with a JSON-RPC error is still up (ACP survives API errors):
        # waiting for its exit would only delay the error. One whose output ended may take a while.
        exit_code = run.finish(timeout=0 if still_up else 5.0)
        return classify_failure(exit_code, message, run.stderr_tail, model, cli_model, status)

    def send(message: dict[str, Any]) -> None:
        try:
            run.send(message)
        except BrokenPipeError:
            raise failed() from None

    def request(request_id: int, method: str, params: dict[str, Any]) -> Iterator[Silence]:
        """Send one request and wait for its answer (its result goes into `replies`)."""
        send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        for event in stream:
            if isinstance(event, Silence):
                yield event
            elif event is EOF:
                raise failed()
            elif event.get("id") == request_id and "method" not in event:
                if "error" in event:
                    raise _error(event["error"], failed)
                replies[request_id] = event.get("result") or {}
                return
            else:
                _answer_agent_request(send, event)
        raise failed()

    replies: dict[int, dict[str, Any]] = {}
    stream = run_events(run, deadlines, heartbeat, client_gone, lambda: state["output"])
    own_session = run.spec is not None  # the session opened ahead is this request's (prepare_session)
    # The process may still be initialising (a cold run, or a warm one taken early).
    ready = run.ahead_done if own_session else run.initialized
    while not ready.wait(0):
        yield from _wait(ready, deadlines, heartbeat, client_gone, state)
    if not run.acp_capabilities:  # `initialize` failed, or the process ended before answering it
        event = run.next_event(0.5)
        raise _error(event["error"], failed) if isinstance(event, dict) and "error" in event else failed()
    run.handed_at = time.perf_counter()
    if own_session:
        answer = run.ahead_answers.get(AHEAD_NEW) or {}
        if "error" in answer or "result" not in answer:
            raise _error(answer["error"], failed) if "error" in answer else failed()
        session_id = answer["result"].get("sessionId")
    else:
        yield from request(SESSION_NEW, "session/new", {"cwd": str(run.dir / SESSION_DIR), "mcpServers": []})
        session_id = replies[SESSION_NEW].get("sessionId")
        yield from request(SET_MODEL, "session/set_model", {"sessionId": session_id, "modelId": cli_model})
    send({"jsonrpc": "2.0", "id": PROMPT, "method": "session/prompt",
          "params": {"sessionId": session_id, "prompt": prompt.blocks()}})
    got_text = got_thoughts = False
    for event in stream:
        if isinstance(event, Silence):
            yield event
            continue
        if event is EOF:
            raise failed()
        if event.get("method") == "session/update":
            update = (event.get("params") or {}).get("update") or {}
            kind, content = update.get("sessionUpdate"), update.get("content") or {}
            text = content.get("text") if isinstance(content, dict) else None
            if not isinstance(text, str) or not text:
                continue
            if kind == "agent_thought_chunk":
                got_thoughts = state["output"] = True
                yield Thinking(text[len(EMPTY_SUBJECT):] if text.startswith(EMPTY_SUBJECT) else text)
            elif kind == "agent_message_chunk":
                got_text = state["output"] = True
                yield Delta(text)
        elif event.get("id") == PROMPT and "method" not in event:
            if "error" in event:
                raise _error(event["error"], failed)
            run.answered = True
            yield _finished(event.get("result") or {}, got_text, got_thoughts, shape)
            return
        else:
            _answer_agent_request(send, event)
    raise failed()


def _wait(ready: threading.Event, deadlines: Deadlines, heartbeat: float, client_gone: Callable[[], bool],
          state: dict) -> Iterator[Silence]:
    """Wait for `ready` up to one heartbeat; Silence if it did not come."""
    left, which = deadlines.remaining(state["output"])
    if left <= 0:
        raise deadline_error(which, deadlines)
    if not ready.wait(min(heartbeat, left)):
        if client_gone():
            raise ClientGone()
        yield Silence()


def _error(error: Any, failed: Callable[..., ApiError]) -> ApiError:
    """A JSON-RPC error from the CLI: its code is the API's HTTP status for API errors."""
    error = error if isinstance(error, dict) else {"message": str(error)}
    code, message = error.get("code"), str(error.get("message") or "")
    status = code if isinstance(code, int) and 400 <= code < 600 else None
    return failed(message, status, still_up=True)


def _finished(result: dict[str, Any], got_text: bool, got_thoughts: bool, shape: AnswerShape) -> Finished:
    counts = ((result.get("_meta") or {}).get("quota") or {}).get("token_count") or {}
    prompt_tokens, output = int(counts.get("input_tokens") or 0), int(counts.get("output_tokens") or 0)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": output, "total_tokens": prompt_tokens + output}
    stop = result.get("stopReason")
    if stop == "max_tokens" or (shape.max_output_tokens and output >= shape.max_output_tokens):
        return Finished("length", usage)
    if not got_text and not got_thoughts and output == 0:
        # ACP ends a safety block as an empty end_turn (headless says "blocked"): the same here.
        return Finished("content_filter", usage)
    return Finished("stop", usage)


def _answer_agent_request(send: Callable[[dict], None], event: Any) -> None:
    """Requests the agent makes of its client: no permission is granted, no file or terminal
    is offered (the gateway's runs have no tools), so the turn goes on without them."""
    if not isinstance(event, dict) or "method" not in event or "id" not in event:
        return  # a notification (commands, plans, ...) or a stray answer: nothing to do
    if event["method"] == "session/request_permission":
        send({"jsonrpc": "2.0", "id": event["id"], "result": {"outcome": {"outcome": "cancelled"}}})
    else:
        send({"jsonrpc": "2.0", "id": event["id"], "error": {"code": -32601, "message": "not supported"}})
