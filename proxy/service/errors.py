"""One JSON error shape per API: OpenAI's `{"error": {message, type, param, code}}` everywhere,
except under /v1/messages, whose clients (Anthropic's SDKs, Claude Code) read Anthropic's
`{"type": "error", "error": {type, message}}`."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

bp = Blueprint("errors", __name__)

# OpenAI's error `type` for each status family; clients show `message`, SDKs map the status.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass
class ApiError(Exception):
    """An error answered to the client: HTTP status plus OpenAI error fields."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if self.type is None:
            self.type = _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict:
        return {"type": "error", "error": {"type": anthropic_error_type(self.status), "message": self.message}}

    def response(self) -> Response:
        response = jsonify(self.anthropic_body() if anthropic_path(request.path) else self.body())
        response.status_code = self.status
        response.headers.update(self.headers)
        return response


def anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def anthropic_error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status (its SDKs map the status, Claude Code shows both)."""
    types = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}
    return types.get(status, "api_error" if status >= 500 else "invalid_request_error")


def no_retry_headers() -> dict[str, str]:
    """Stop the OpenAI SDKs' automatic retries where a retry cannot help."""
    return {"x-should-retry": "false"}


@bp.app_errorhandler(ApiError)
def handle_api_error(error: ApiError) -> Response:
    g.error_code = error.code  # for the request's log line and metrics (outcome error:<code>)
    return error.response()


@bp.app_errorhandler(HTTPException)
def handle_http_exception(error: HTTPException) -> Response:
    messages = {
        404: "No such route. The API lives under /v1 (GET /v1/models, POST /v1/chat/completions, "
             "POST /v1/responses, POST /v1/messages).",
        413: "The request body is too large (see PROXY_MAX_BODY_BYTES).",
    }
    status = error.code or 500
    message = messages.get(status) or error.description or error.name
    return handle_api_error(ApiError(status, message, code=error.name.lower().replace(" ", "_")))


@bp.app_errorhandler(Exception)
def handle_unexpected(error: Exception) -> Response:
    # The traceback goes to the log; the client gets the one JSON shape, not an HTML page.
    current_app.logger.exception("unhandled error")
    return handle_api_error(ApiError(500, f"Internal error in the proxy: {type(error).__name__}",
                                     code="internal_error"))
