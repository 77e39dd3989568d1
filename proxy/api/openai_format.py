"""Pure functions from a CLI run's results to OpenAI's chat.completion shapes."""

from __future__ import annotations

from typing import Any

from ..conversation import ToolCall


def to_tool_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """A call in `message.tool_calls`, or (with `index`) in a chunk's `delta.tool_calls`."""
    out: dict[str, Any] = {} if index is None else {"index": index}
    out.update({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}})
    return out


def to_usage(usage: dict[str, int] | None) -> dict[str, Any]:
    """Chat completions' `usage`, with `completion_tokens_details.reasoning_tokens` when known."""
    usage = usage or {}
    out: dict[str, Any] = {key: usage.get(key, 0) for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    if usage.get("reasoning_tokens") is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": usage["reasoning_tokens"]}
    return out


def to_chunk(completion_id: str, created: int, model: str, delta: dict[str, Any],
             finish_reason: str | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk` with a single choice."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def to_usage_chunk(completion_id: str, created: int, model: str, usage: dict[str, int]) -> dict[str, Any]:
    """The extra last chunk a client asked for with `stream_options.include_usage`."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": to_usage(usage),
    }


def to_completion(completion_id: str, created: int, model: str, content: str, finish_reason: str,
                  usage: dict[str, int] | None, tool_calls: list[ToolCall] = (),
                  reasoning: str = "") -> dict[str, Any]:
    """A whole non-streamed `chat.completion`."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["content"] = content or None
        message["tool_calls"] = [to_tool_call(call) for call in tool_calls]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": to_usage(usage),
    }
