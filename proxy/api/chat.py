"""POST /v1/chat/completions: the OpenAI chat completions front-end.

Parsing is `ChatRequest` (chat_request.py), the run and its answer are shared with every
front-end (gateway.py); what is left here is OpenAI's wire: `chat.completion` bodies and
`chat.completion.chunk` events.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

from flask import Blueprint, current_app

from ..answer import Delta, Finished, Thinking, ToolCalled
from ..gateway import Collected, answering, json_body, respond
from ..service.errors import ApiError
from .chat_request import ChatRequest
from .openai_format import to_chunk, to_completion, to_tool_call, to_usage_chunk
from .sse import DONE, HEARTBEAT, sse_data

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
@answering
def create_chat_completion():
    """Answer an OpenAI chat completion request through the gemini CLI."""
    chat = ChatRequest.from_json(json_body(), current_app.config["MODELS"], current_app.config["MODEL_ALIASES"])

    def completion(collected: Collected) -> dict:
        finished = collected.finished
        return to_completion(completion_id(), int(time.time()), chat.model, collected.text, finished.finish_reason,
                             finished.usage, collected.tool_calls, collected.reasoning)

    return respond(chat.conversation, ChunkEncoder(chat), completion)


class ChunkEncoder:
    """Answer events as `chat.completion.chunk` SSE events, ending with `data: [DONE]`."""

    def __init__(self, chat: ChatRequest):
        self.chat = chat
        self.id, self.created = completion_id(), int(time.time())
        self.calls = 0

    def chunk(self, delta: dict, finish_reason: str | None = None) -> str:
        return sse_data(to_chunk(self.id, self.created, self.chat.model, delta, finish_reason))

    def start(self) -> Iterator[str]:
        yield self.chunk({"role": "assistant", "content": ""})

    def heartbeat(self) -> str:
        return HEARTBEAT

    def event(self, item: Delta | Thinking | ToolCalled | Finished) -> Iterator[str]:
        if isinstance(item, Delta):
            yield self.chunk({"content": item.text})
        elif isinstance(item, Thinking):
            yield self.chunk({"reasoning_content": item.text})
        elif isinstance(item, ToolCalled):
            yield self.chunk({"tool_calls": [to_tool_call(item.call, self.calls)]})
            self.calls += 1
        else:
            yield self.chunk({}, item.finish_reason)
            if self.chat.include_usage and item.usage:
                yield sse_data(to_usage_chunk(self.id, self.created, self.chat.model, item.usage))

    def error(self, error: ApiError) -> Iterator[str]:
        yield sse_data(error.body())
        yield DONE

    def end(self) -> Iterator[str]:
        yield DONE


def completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"
