"""Server-sent events: `data:` lines and comments for chat completions; `event:` + `data:`
frames for the APIs whose clients expect them (Responses, Anthropic Messages).

Chat completions get no `id:`, `event:` or `retry:` frames: the OpenAI SDK mishandles them there.
"""

from __future__ import annotations

import json

DONE = "data: [DONE]\n\n"
# A comment line keeps the connection busy; `: ping` is avoided (Continue treats it specially).
HEARTBEAT = ": keep-alive\n\n"


def sse_data(payload: dict) -> str:
    """One event carrying one JSON object on one line."""
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def sse_event(kind: str, payload: dict) -> str:
    """One named event carrying one JSON object on one line."""
    return f"event: {kind}\n{sse_data(payload)}"
