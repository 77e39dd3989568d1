"""POST /v1/messages, /v1/messages/count_tokens: the Anthropic Messages front-end (in progress)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("messages", __name__)
