"""Server-sent events as OpenAI clients read them: `data:` lines and comments, nothing else.

No `id:`, `event:` or `retry:` frames: the OpenAI SDK mishandles them.
"""

from __future__ import annotations

import json

DONE = "data: [DONE]\n\n"
# A comment line keeps the connection busy; `: ping` is avoided (Continue treats it specially).
HEARTBEAT = ": keep-alive\n\n"


def sse_data(payload: dict) -> str:
    """One event carrying one JSON object on one line."""
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"
