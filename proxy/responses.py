"""POST /v1/responses: the OpenAI Responses front-end (in progress)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("responses", __name__)
