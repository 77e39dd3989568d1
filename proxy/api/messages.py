"""POST /v1/messages, /v1/messages/count_tokens: the Anthropic Messages front-end.

Parsing is `MessagesRequest` (messages_request.py), the run and its answer are shared with
every front-end (gateway.py); what is left here is Anthropic's wire: `message` bodies, and
the `message_start` / `content_block_*` / `message_delta` / `message_stop` event stream
with `ping` heartbeats. Errors get Anthropic's `{"type": "error", "error": {type, message}}`
(errors.py), as a real HTTP status before the stream starts and as an `error` event after.
Claude Code and Anthropic's SDKs can point here (`ANTHROPIC_BASE_URL=http://127.0.0.1:8765`);
`anthropic-version` and `anthropic-beta` headers and `?beta=true` are accepted, whatever they say.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify

from ..answer import Delta, Finished, Thinking, ToolCalled
from ..conversation import ToolCall
from ..gateway import Collected, answering, json_body, respond
from ..service.errors import ApiError
from .messages_request import MessagesRequest
from .sse import sse_event

bp = Blueprint("messages", __name__)

# The gateway's finish reasons (OpenAI's names) as Anthropic's stop reasons.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
PING = 'event: ping\ndata: {"type": "ping"}\n\n'


@bp.post("/v1/messages")
@answering
def create_message():
    """Answer an Anthropic Messages request through the gemini CLI."""
    config = current_app.config
    parsed = MessagesRequest.from_json(json_body(), config["MODELS"], config["MODEL_ALIASES"])
    estimate = parsed.estimated_input_tokens()
    return respond(parsed.conversation, MessageEncoder(parsed.model, estimate),
                   lambda collected: to_message(message_id(), parsed.model, collected, estimate))


@bp.post("/v1/messages/count_tokens")
def count_message_tokens():
    """`{"input_tokens": N}` for a Messages body, without running the CLI. N is an estimate
    (about four characters a token over the system prompt, the turns and the tool
    declarations, plus 258 per image), not the model's count: the CLI has no way to count
    tokens without answering, and its own context (date, session details) adds a few more."""
    config = current_app.config
    parsed = MessagesRequest.from_json(json_body(), config["MODELS"], config["MODEL_ALIASES"], count_only=True)
    return jsonify({"input_tokens": parsed.estimated_input_tokens()})


@bp.after_request
def add_request_id(response: Response) -> Response:
    # Anthropic's SDKs read `request-id` (exposed as `_request_id`); errors included.
    response.headers["request-id"] = g.get("request_id", "-")
    return response


def message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def tool_use_id(call: ToolCall) -> str:
    """A call's id as Anthropic's look (`toolu_...`); the client sends it back as it got it."""
    return f"toolu_{call.id[5:]}" if call.id.startswith("call_") else call.id


def tool_input(call: ToolCall) -> dict[str, Any]:
    arguments = call.arguments_object()
    return arguments if isinstance(arguments, dict) else {}


def stop_reason(finished: Finished | None) -> str:
    return STOP_REASONS.get(finished.finish_reason if finished else "stop", "end_turn")


def usage(finished: Finished | None, input_estimate: int, output_characters: int) -> dict[str, int]:
    """The CLI's token counts; where it reports none (a tool-call turn ends the run before it
    counts), estimates: the request's, and about four characters a token of the answer."""
    counts = (finished.usage if finished else None) or {}
    return {
        "input_tokens": counts.get("prompt_tokens", input_estimate),
        "output_tokens": counts.get("completion_tokens", math.ceil(output_characters / 4)),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def to_message(msg_id: str, model: str, collected: Collected, input_estimate: int = 0) -> dict[str, Any]:
    """A whole non-streamed `message`."""
    content: list[dict[str, Any]] = []
    if collected.reasoning:
        content.append({"type": "thinking", "thinking": collected.reasoning, "signature": ""})
    if collected.text:
        content.append({"type": "text", "text": collected.text})
    for call in collected.tool_calls:
        content.append({"type": "tool_use", "id": tool_use_id(call), "name": call.name, "input": tool_input(call)})
    characters = len(collected.reasoning) + len(collected.text) + sum(len(c.arguments) for c in collected.tool_calls)
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(collected.finished),
        "stop_sequence": None,
        "usage": usage(collected.finished, input_estimate, characters),
    }


def event(payload: dict[str, Any]) -> str:
    """One SSE frame: `event: <type>` and the payload as one JSON line."""
    return sse_event(payload["type"], payload)


class MessageEncoder:
    """Answer events as Anthropic's stream: `message_start`, one `content_block_start` /
    `content_block_delta`s / `content_block_stop` per block (thinking, text, each tool use),
    then `message_delta` (stop reason, usage) and `message_stop`."""

    def __init__(self, model: str, input_estimate: int = 0):
        self.model, self.input_estimate = model, input_estimate
        self.id = message_id()
        self.index = -1  # of the last block started
        self.open: str | None = None  # the type of the block being streamed, if one is open
        self.characters = 0
        self.finished = False

    def start(self) -> Iterator[str]:
        yield event({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }})

    def heartbeat(self) -> str:
        return PING

    def event(self, item: Delta | Thinking | ToolCalled | Finished) -> Iterator[str]:
        if isinstance(item, Delta):
            self.characters += len(item.text)
            yield from self._open("text", {"type": "text", "text": ""})
            yield self._delta({"type": "text_delta", "text": item.text})
        elif isinstance(item, Thinking):
            self.characters += len(item.text)
            yield from self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            yield self._delta({"type": "thinking_delta", "thinking": item.text})
        elif isinstance(item, ToolCalled):
            call = item.call
            self.characters += len(call.arguments)
            yield from self._open("tool_use", {"type": "tool_use", "id": tool_use_id(call), "name": call.name,
                                               "input": {}})
            yield self._delta({"type": "input_json_delta", "partial_json": json.dumps(tool_input(call),
                                                                                      ensure_ascii=False)})
            yield from self._close()
        else:
            yield from self._finish(item)

    def error(self, error: ApiError) -> Iterator[str]:
        yield event(error.anthropic_body())

    def end(self) -> Iterator[str]:
        if not self.finished:
            yield from self._finish(None)
        yield event({"type": "message_stop"})

    def _finish(self, finished: Finished | None) -> Iterator[str]:
        self.finished = True
        yield from self._close()
        counts = usage(finished, self.input_estimate, self.characters)
        yield event({"type": "message_delta", "delta": {"stop_reason": stop_reason(finished), "stop_sequence": None},
                     "usage": {"input_tokens": counts["input_tokens"], "output_tokens": counts["output_tokens"],
                               "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}})

    def _open(self, kind: str, block: dict[str, Any]) -> Iterator[str]:
        """Start a block of `kind` unless one is open (a thinking block closes before text);
        every tool use is a block of its own."""
        if self.open == kind and kind != "tool_use":
            return
        yield from self._close()
        self.index += 1
        self.open = kind
        yield event({"type": "content_block_start", "index": self.index, "content_block": block})

    def _close(self) -> Iterator[str]:
        if self.open is not None:
            self.open = None
            yield event({"type": "content_block_stop", "index": self.index})

    def _delta(self, delta: dict[str, Any]) -> str:
        return event({"type": "content_block_delta", "index": self.index, "delta": delta})
