"""POST /v1/responses: the OpenAI Responses front-end (what Codex CLI speaks), stateless.

Parsing is `ResponsesRequest` (responses_request.py); the run and its answer are shared with
every front-end (gateway.py). What is here is the Responses wire: the `response` object with
its output items (`reasoning`, `message`, `function_call`), and, streamed, the typed events
(`event: <type>` + `data:`, each with a `sequence_number`) that the openai SDKs and Codex read.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, current_app

from ..answer import Delta, Finished, Thinking, ToolCalled
from ..conversation import ToolCall
from ..gateway import Collected, answering, json_body, respond
from ..service.errors import ApiError
from .responses_request import STATELESS, ResponsesRequest
from .sse import HEARTBEAT, sse_event

bp = Blueprint("responses", __name__)


@bp.post("/v1/responses")
@answering
def create_response():
    """Answer an OpenAI Responses request through the gemini CLI."""
    req = ResponsesRequest.from_json(json_body(), current_app.config["MODELS"], current_app.config["MODEL_ALIASES"])
    builder = ResponseBuilder(req)

    def response(collected: Collected) -> dict:
        if collected.reasoning:
            builder.add(builder.reasoning_item(collected.reasoning))
        if collected.text:
            builder.add(builder.message_item(collected.text))
        for call in collected.tool_calls:
            builder.add(builder.function_call_item(call))
        return builder.response(collected.finished)

    return respond(req.conversation, ResponseEventEncoder(builder), response)


@bp.route("/v1/responses/<path:response_id>", methods=["GET", "DELETE"])
def stored_response(response_id: str):
    """Stored responses do not exist here: the gateway is stateless."""
    raise ApiError(400, STATELESS.format("retrieving a stored response"), code="stateless_gateway",
                   param="response_id")


class ResponseBuilder:
    """The `response` object of one request, and its output items as they are made."""

    def __init__(self, req: ResponsesRequest):
        self.req = req
        self.id = f"resp_{secrets.token_hex(24)}"
        self.created_at = int(time.time())
        self.output: list[dict[str, Any]] = []

    def add(self, item: dict[str, Any]) -> int:
        self.output.append(item)
        return len(self.output) - 1

    def reasoning_item(self, text: str = "") -> dict[str, Any]:
        summary = [{"type": "summary_text", "text": text}] if text else []
        return {"type": "reasoning", "id": f"rs_{secrets.token_hex(24)}", "summary": summary}

    def message_item(self, text: str | None = None) -> dict[str, Any]:
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"type": "message", "id": f"msg_{secrets.token_hex(24)}", "status":
                "in_progress" if text is None else "completed", "role": "assistant", "content": content}

    def function_call_item(self, call: ToolCall, arguments: str | None = None) -> dict[str, Any]:
        return {"type": "function_call", "id": f"fc_{secrets.token_hex(24)}", "call_id": call.id, "name": call.name,
                "arguments": call.arguments if arguments is None else arguments,
                "status": "completed" if arguments is None else "in_progress"}

    def response(self, finished: Finished | None = None, error: ApiError | None = None) -> dict[str, Any]:
        """The whole response: in progress (no `finished`), completed, incomplete or failed."""
        status, incomplete = "in_progress", None
        if error is not None:
            status = "failed"
        elif finished is not None:
            status = "incomplete" if finished.finish_reason in ("length", "content_filter") else "completed"
            if status == "incomplete":
                incomplete = {"reason": "max_output_tokens" if finished.finish_reason == "length"
                              else "content_filter"}
        echo = self.req.echo
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "background": False, "error": {"code": error.code or "server_error", "message": error.message}
            if error else None,
            "incomplete_details": incomplete, "instructions": echo["instructions"],
            "max_output_tokens": echo["max_output_tokens"], "max_tool_calls": None, "model": self.req.model,
            "output": list(self.output), "parallel_tool_calls": echo["parallel_tool_calls"],
            "previous_response_id": None, "reasoning": echo["reasoning"] or {"effort": None, "summary": None},
            "service_tier": "default", "store": False, "temperature": echo["temperature"], "text": echo["text"],
            "tool_choice": echo["tool_choice"], "tools": echo["tools"], "top_p": echo["top_p"],
            "truncation": "disabled", "usage": to_usage(finished.usage if finished else None)
            if finished else None, "user": echo["user"], "metadata": echo["metadata"] or {},
        }


def to_usage(usage: dict[str, int] | None) -> dict[str, Any]:
    usage = usage or {}
    return {"input_tokens": usage.get("prompt_tokens", 0),
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage.get("completion_tokens", 0),
            "output_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens") or 0},
            "total_tokens": usage.get("total_tokens", 0)}


class ResponseEventEncoder:
    """Answer events as the Responses API's typed stream events, one output item at a time."""

    def __init__(self, builder: ResponseBuilder):
        self.builder = builder
        self.sequence = 0
        self.open: dict[str, Any] | None = None  # the reasoning or message item being streamed
        self.open_index = 0
        self.open_text = ""

    def emit(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse_event(kind, payload)

    def heartbeat(self) -> str:
        return HEARTBEAT

    def start(self) -> Iterator[str]:
        yield self.emit("response.created", response=self.builder.response())
        yield self.emit("response.in_progress", response=self.builder.response())

    def event(self, item: Delta | Thinking | ToolCalled | Finished) -> Iterator[str]:
        if isinstance(item, Thinking):
            if self.open is None or self.open["type"] != "reasoning":
                yield from self.close()
                yield from self.open_item(self.builder.reasoning_item())
                yield self.emit("response.reasoning_summary_part.added", item_id=self.open["id"],
                                output_index=self.open_index, summary_index=0,
                                part={"type": "summary_text", "text": ""})
            self.open_text += item.text
            yield self.emit("response.reasoning_summary_text.delta", item_id=self.open["id"],
                            output_index=self.open_index, summary_index=0, delta=item.text)
        elif isinstance(item, Delta):
            if self.open is None or self.open["type"] != "message":
                yield from self.close()
                yield from self.open_item(self.builder.message_item())
                yield self.emit("response.content_part.added", item_id=self.open["id"], output_index=self.open_index,
                                content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                       "logprobs": []})
            self.open_text += item.text
            yield self.emit("response.output_text.delta", item_id=self.open["id"], output_index=self.open_index,
                            content_index=0, delta=item.text, logprobs=[])
        elif isinstance(item, ToolCalled):
            yield from self.close()
            added = self.builder.function_call_item(item.call, arguments="")
            index = self.builder.add(added)
            yield self.emit("response.output_item.added", output_index=index, item=added)
            yield self.emit("response.function_call_arguments.delta", item_id=added["id"], output_index=index,
                            delta=item.call.arguments)
            yield self.emit("response.function_call_arguments.done", item_id=added["id"], output_index=index,
                            name=item.call.name, arguments=item.call.arguments)
            done = dict(added, arguments=item.call.arguments, status="completed")
            self.builder.output[index] = done
            yield self.emit("response.output_item.done", output_index=index, item=done)
        else:
            yield from self.close()
            response = self.builder.response(item)
            kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
            yield self.emit(kind, response=response)

    def open_item(self, item: dict[str, Any]) -> Iterator[str]:
        self.open, self.open_text = item, ""
        self.open_index = self.builder.add(item)
        yield self.emit("response.output_item.added", output_index=self.open_index, item=item)

    def close(self) -> Iterator[str]:
        """Finish the reasoning or message item being streamed, if any."""
        item, text, index = self.open, self.open_text, self.open_index
        if item is None:
            return
        self.open = None
        if item["type"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            yield self.emit("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                            summary_index=0, text=text)
            yield self.emit("response.reasoning_summary_part.done", item_id=item["id"], output_index=index,
                            summary_index=0, part=part)
            done = dict(item, summary=[part])
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            yield self.emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=text, logprobs=[])
            yield self.emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=part)
            done = dict(item, status="completed", content=[part])
        self.builder.output[index] = done
        yield self.emit("response.output_item.done", output_index=index, item=done)

    def error(self, error: ApiError) -> Iterator[str]:
        yield from self.close()
        yield self.emit("response.failed", response=self.builder.response(error=error))

    def end(self) -> Iterator[str]:
        return iter(())
