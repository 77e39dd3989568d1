"""From a failed CLI run (exit code, `result` error, stderr) to an error a user can act on.

Exit codes are in shared/gemini-cli-contract.md: API errors exit with (HTTP status & 0xFF)
after a `result` event with status error; start-up failures print to stderr only.
"""

from __future__ import annotations

import math
import re

from ..service.errors import ApiError, no_retry_headers
from .home import LOGIN_HELP

# API errors in stream-json mode exit with the HTTP status & 0xFF.
_API_EXIT = {144: 400, 145: 401, 147: 403, 148: 404, 173: 429, 244: 500, 246: 502, 247: 503, 248: 504}
_RETRY_IN = re.compile(r"retry in\s+([0-9]+(?:\.[0-9]+)?)\s*(ms|s)\b", re.I)
_MODEL_NOT_FOUND = re.compile(r"models/\S+ is not found")
_RETRY_DELAY = re.compile(r"retryDelay\"?\s*[:=]\s*\"?([0-9]+(?:\.[0-9]+)?)s", re.I)


def retry_after_seconds(message: str) -> int | None:
    """The wait the API asked for ("Please retry in 17.5s."), rounded up to whole seconds."""
    match = _RETRY_IN.search(message)
    if match:
        value = float(match.group(1)) / (1000 if match.group(2).lower() == "ms" else 1)
        return max(1, math.ceil(value))
    match = _RETRY_DELAY.search(message)
    if match:
        return max(1, math.ceil(float(match.group(1))))
    return None


def _clean(text: str, limit: int = 600) -> str:
    # stderr carries start-up noise on every run; keep the lines that say something.
    noise = ("256-color", "Ripgrep is not available", "[STARTUP]", "Loaded cached credentials")
    lines = [line for line in text.splitlines() if line.strip() and not any(n in line for n in noise)]
    return " ".join(" ".join(lines).split())[-limit:]


def classify_failure(exit_code: int | None, result_error: str | None, stderr: str, model: str,
                     cli_model: str, status: int | None = None) -> ApiError:
    """The ApiError for a run that produced no usable answer: from its exit code, or (ACP, where
    the process survives an API error) from the HTTP status the CLI reported."""
    detail = result_error or _clean(stderr) or "no message"
    status = status or _API_EXIT.get(exit_code or 0)
    if exit_code == 41:
        return ApiError(503, f"The gemini CLI has no login configured. {LOGIN_HELP} (CLI: {_clean(stderr)})",
                        code="gemini_auth_missing", headers=no_retry_headers())
    if status == 429 or "RESOURCE_EXHAUSTED" in detail or "quota" in detail.lower():
        headers = {}
        wait = retry_after_seconds(detail)
        if wait is not None:
            headers["Retry-After"] = str(wait)
        return ApiError(429, f"Gemini API rate limit or quota reached: {detail}", code="rate_limit_exceeded",
                        headers=headers)
    # ACP reports the API's 404 for a model as a JSON-RPC error with code 500: its text tells.
    if status == 404 or (exit_code == 1 and "not found" in detail.lower()) or _MODEL_NOT_FOUND.search(detail):
        return ApiError(404, f"The Gemini API does not know the model `{cli_model}` (requested as `{model}`): "
                        f"{detail}", code="model_not_found", param="model")
    if status == 400:
        return ApiError(400, f"The Gemini API rejected the request: {detail}", code="upstream_bad_request")
    if status in (401, 403):
        return ApiError(502, f"The Gemini API refused the CLI's credentials (HTTP {status}). {LOGIN_HELP} "
                        f"({detail})", code="gemini_auth_rejected", headers=no_retry_headers())
    if status is not None:
        return ApiError(502, f"The Gemini API failed (HTTP {status}): {detail}", code="upstream_error")
    if exit_code == 52:
        return ApiError(500, f"The gemini CLI could not parse its settings: {detail}", code="gemini_settings_invalid",
                        headers=no_retry_headers())
    if exit_code is not None and exit_code < 0:
        return ApiError(502, f"The gemini CLI was killed by signal {-exit_code}: {detail}", code="gemini_crashed")
    if exit_code:
        return ApiError(502, f"The gemini CLI failed with exit code {exit_code}: {detail}", code="gemini_failed")
    return ApiError(502, f"The gemini CLI ended without an answer: {detail}", code="gemini_no_answer")
