"""Pure functions from a CLI run's results to OpenAI's chat.completion shapes."""

from __future__ import annotations

from typing import Any


def usage_from_stats(stats: dict[str, Any] | None) -> dict[str, int] | None:
    """The CLI's real token counts (`result` event stats) in OpenAI's usage shape."""
    if not stats:
        return None
    prompt = int(stats.get("input_tokens") or 0)
    completion = int(stats.get("output_tokens") or 0)
    total = int(stats.get("total_tokens") or (prompt + completion))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


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
        "usage": usage,
    }


def to_completion(completion_id: str, created: int, model: str, content: str, finish_reason: str,
                  usage: dict[str, int] | None) -> dict[str, Any]:
    """A whole non-streamed `chat.completion`."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
