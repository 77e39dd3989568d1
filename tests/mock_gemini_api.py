"""Loopback mock of the Gemini API (generativelanguage v1beta), stdlib only.

The real ``gemini`` CLI (0.61.0) can talk to it when started with
``GOOGLE_GEMINI_BASE_URL=<mock.base_url>``, ``GEMINI_API_KEY=<anything>`` and a
settings.json pinning ``security.auth.selectedType = "gemini-api-key"``.

Endpoints:
  POST /v1beta/models/{model}:streamGenerateContent?alt=sse
      200 text/event-stream (chunked), one ``data: <GenerateContentResponse>\\r\\n\\r\\n``
      per configured chunk; the last one carries finishReason + usageMetadata.
      (The CLI's @google/genai SDK splits on /^\\s*data: (.*)(?:\\n\\n|\\r\\r|\\r\\n\\r\\n)/,
      so each JSON document must be on one line.)
  POST /v1beta/models/{model}:generateContent   (router call, only without -m)
  POST /v1beta/models/{model}:countTokens       (sent before requests with inline media)
  anything else -> 404 JSON.

Usage::

    with MockGeminiApi() as api:            # or api = MockGeminiApi().start()
        api.configure(chunks=["a", "b"], usage={...})
        ... run the CLI with GOOGLE_GEMINI_BASE_URL=api.base_url ...
        body = api.generate_requests()[-1].json

``configure`` sets the *whole* behaviour: every argument left out goes back to its
default (so ``configure(status=429)`` is an error-only configuration).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_CHUNKS = ["Hello", " from", " the mock!"]
DEFAULT_USAGE = {"promptTokenCount": 7, "candidatesTokenCount": 3, "totalTokenCount": 10}
ROUTER_TEXT = '{"complexity_reasoning":"simple","complexity_score":1}'

# google.rpc.Code names for HTTP statuses, as the real API reports them.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

DEFAULT_ERROR_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials.",
    403: "Method doesn't allow unregistered callers (callers without established identity).",
    404: "models/{model} is not found for API version v1beta, or is not supported for generateContent.",
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}

_DISCONNECT_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, TimeoutError)


@dataclass
class RecordedRequest:
    method: str
    path: str  # path without the query string, e.g. /v1beta/models/m:streamGenerateContent
    query: dict[str, str]  # parsed query string (last value wins), e.g. {"alt": "sse"}
    headers: dict[str, str]  # header names lower-cased
    body: bytes
    json: Any = None  # parsed body, or None if empty / not JSON
    time: float = field(default_factory=time.monotonic)

    @property
    def model(self) -> str | None:
        """The model name from /v1beta/models/{model}:{method}, else None."""
        _, _, rest = self.path.partition("/models/")
        return rest.split(":", 1)[0] if rest and ":" in rest else None

    @property
    def rpc(self) -> str | None:
        """The method after the colon (streamGenerateContent, generateContent, countTokens)."""
        return self.path.rsplit(":", 1)[1] if ":" in self.path.rsplit("/", 1)[-1] else None


@dataclass
class _Behaviour:
    chunks: list[str] = field(default_factory=lambda: list(DEFAULT_CHUNKS))
    usage: dict = field(default_factory=lambda: dict(DEFAULT_USAGE))
    status: int | None = None
    error_message: str | None = None
    retry_after_s: float | None = None
    safety_block: bool = False
    chunk_delay_s: float = 0.0
    first_chunk_delay_s: float = 0.0
    finish_reason: str = "STOP"
    raw_events: list[dict] | None = None
    script: Any = None  # callable(request body) -> list of GenerateContentResponse dicts, or None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Many CLI sessions connect at once (benchmarks: 100 streams); the default backlog of 5 drops
    # connections, which the client retries only after 1 s.
    request_queue_size = 256
    mock: MockGeminiApi

    def handle_error(self, request, client_address):  # noqa: D401 - socketserver hook
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, _DISCONNECT_ERRORS) or self.mock._stopping.is_set():
            return  # client went away: expected, stay quiet
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockGeminiApi/1.0"
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version
    server: _Server

    def log_message(self, format, *args):  # silence access log
        pass

    # -- plumbing ---------------------------------------------------------------
    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _record(self) -> RecordedRequest:
        body = self._read_body()
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        try:
            parsed_json = json.loads(body) if body else None
        except ValueError:
            parsed_json = None
        rec = RecordedRequest(
            method=self.command,
            path=parsed.path,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            json=parsed_json,
        )
        self.server.mock._add(rec)
        return rec

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # -- dispatch ---------------------------------------------------------------
    def _handle(self) -> None:
        try:
            rec = self._record()
            mock = self.server.mock
            b = mock._behaviour
            rpc = rec.rpc
            model = rec.model or "unknown"
            if self.command == "POST" and rpc == "streamGenerateContent":
                if b.status is not None:
                    self._send_error(b, model)
                else:
                    self._stream(b, model, rec.json)
            elif self.command == "POST" and rpc == "generateContent":
                if b.status is not None:
                    self._send_error(b, model)
                else:
                    self._send_json(200, {
                        "candidates": [{
                            "content": {"role": "model", "parts": [{"text": ROUTER_TEXT}]},
                            "finishReason": "STOP",
                            "index": 0,
                        }],
                        "modelVersion": model,
                    })
            elif self.command == "POST" and rpc == "countTokens":
                self._send_json(200, {"totalTokens": _estimate_tokens(rec.json)})
            else:
                self._send_json(404, {"error": {
                    "code": 404,
                    "message": f"Mock has no handler for {self.command} {rec.path}",
                    "status": "NOT_FOUND",
                }})
        except _DISCONNECT_ERRORS:
            self.close_connection = True

    do_POST = _handle
    do_GET = _handle
    do_PUT = _handle
    do_DELETE = _handle
    do_PATCH = _handle

    def _send_error(self, b: _Behaviour, model: str) -> None:
        status = b.status
        assert status is not None
        message = b.error_message or DEFAULT_ERROR_MESSAGES.get(status, f"Mock error {status}.")
        message = message.replace("{model}", model)
        details: list[dict] = []
        if status == 429 and b.retry_after_s is not None:
            if "Please retry in" not in message:
                message = f"{message}\nPlease retry in {b.retry_after_s:.1f}s."
            details.append({
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{b.retry_after_s:g}s",
            })
        err: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": STATUS_NAMES.get(status, "UNKNOWN"),
        }
        if details:
            err["details"] = details
        self._send_json(status, {"error": err})

    def _events(self, b: _Behaviour, model: str, body: Any = None) -> tuple[list[dict], float, float]:
        """The events to stream, and the delays before the first and between the others."""
        if b.script is not None:
            scripted = b.script(body)
            if isinstance(scripted, Paced):
                return [dict(e) for e in scripted.events], scripted.first_chunk_delay_s, scripted.chunk_delay_s
            if scripted is not None:
                return [dict(e) for e in scripted], b.first_chunk_delay_s, b.chunk_delay_s
        return self._configured_events(b, model), b.first_chunk_delay_s, b.chunk_delay_s

    def _configured_events(self, b: _Behaviour, model: str) -> list[dict]:
        if b.raw_events is not None:
            return [dict(e) for e in b.raw_events]
        if b.safety_block:
            return [{
                "candidates": [{
                    "finishReason": "SAFETY",
                    "index": 0,
                    "safetyRatings": [
                        {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                        {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
                        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True},
                        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"},
                    ],
                }],
                "usageMetadata": {
                    "promptTokenCount": b.usage.get("promptTokenCount", 0),
                    "totalTokenCount": b.usage.get("promptTokenCount", 0),
                },
                "modelVersion": model,
            }]
        chunks = b.chunks
        events = []
        for text in chunks:
            events.append({
                "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
                "modelVersion": model,
            })
        if not events:
            events.append({
                "candidates": [{"content": {"role": "model", "parts": []}, "index": 0}],
                "modelVersion": model,
            })
        events[-1]["candidates"][0]["finishReason"] = b.finish_reason
        events[-1]["usageMetadata"] = dict(b.usage)
        return events

    def _stream(self, b: _Behaviour, model: str, body: Any = None) -> None:
        stop = self.server.mock._stopping
        events, first_delay, delay = self._events(b, model, body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        for i, ev in enumerate(events):
            wait = first_delay if i == 0 else delay
            if wait > 0 and stop.wait(wait):
                self.close_connection = True
                return
            self._write_chunk(b"data: " + json.dumps(ev, separators=(",", ":")).encode() + b"\r\n\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@dataclass
class Paced:
    """What a script may return for one request: its events, with delays of their own."""

    events: list[dict]
    first_chunk_delay_s: float = 0.0
    chunk_delay_s: float = 0.0


def model_turn(parts: list[dict], usage: dict | None = None, finish_reason: str = "STOP") -> list[dict]:
    """One streamed model turn: one event per part, the last with finishReason and usage."""
    events = [{"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}]} for part in parts]
    events[-1]["candidates"][0]["finishReason"] = finish_reason
    events[-1]["usageMetadata"] = dict(usage or DEFAULT_USAGE)
    return events


def function_call(name: str, args: dict, signature: str | None = "c2lnbmF0dXJl") -> dict:
    """A functionCall part as Gemini 3 sends it (a thought signature on the turn's first call)."""
    part: dict = {"functionCall": {"name": name, "args": args}}
    if signature:
        part["thoughtSignature"] = signature
    return part


def contents_text(body: Any) -> str:
    """A generate request's `contents` (the turns) as JSON text, to look for what reached the model."""
    return json.dumps((body or {}).get("contents"))


def calls_then_text(*calls: tuple[str, dict], text: str = "Oslo is rainy, Bergen is too."):
    """A mock script: the model calls these tools (of those declared) until the conversation holds
    a tool result (the gateway's transcript says "result of call"), then answers `text`."""
    def script(body: Any) -> list[dict] | None:
        if "result of call" in contents_text(body):
            return model_turn([{"text": text}])
        names = {d["name"] for d in declared_tools(body)}
        parts = [function_call(f"mcp_fn_{name}", args, "c2ln" if i == 0 else None)
                 for i, (name, args) in enumerate(calls) if f"mcp_fn_{name}" in names]
        return model_turn(parts) if parts else None
    return script


def declared_tools(body: Any) -> list[dict]:
    """The functionDeclarations of a generate request's body."""
    return [d for tool in (body or {}).get("tools") or [] for d in tool.get("functionDeclarations") or []]


def _estimate_tokens(body: Any) -> int:
    texts: list[str] = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "text" and isinstance(v, str):
                    texts.append(v)
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(body)
    return max(1, sum(len(t) for t in texts) // 4)


class MockGeminiApi:
    """Threaded loopback mock of the Gemini API. See module docstring."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._behaviour = _Behaviour()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.base_url = ""
        self.port = 0

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> MockGeminiApi:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.mock = self
        self._server = server
        self.port = server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"MockGeminiApi:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in chunk delays
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MockGeminiApi:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- behaviour --------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._behaviour = _Behaviour()

    def configure(self, *, chunks: list[str] | None = None, usage: dict | None = None,
                  status: int | None = None, error_message: str | None = None,
                  retry_after_s: float | None = None, safety_block: bool = False,
                  chunk_delay_s: float = 0.0, first_chunk_delay_s: float = 0.0,
                  finish_reason: str = "STOP", raw_events: list[dict] | None = None,
                  script: Any = None) -> None:
        """Replace the whole behaviour (omitted arguments return to their defaults).

        raw_events (extra): stream exactly these GenerateContentResponse dicts instead of
        the ones built from chunks/usage/finish_reason (delays still apply).
        script: called with each streamGenerateContent request's JSON body; the events it
        returns are streamed (a `Paced`: with its own delays; None: fall back to the rest
        of the configuration).
        """
        b = _Behaviour(
            chunks=list(DEFAULT_CHUNKS) if chunks is None else list(chunks),
            usage=dict(DEFAULT_USAGE) if usage is None else dict(usage),
            status=status,
            error_message=error_message,
            retry_after_s=retry_after_s,
            safety_block=safety_block,
            chunk_delay_s=chunk_delay_s,
            first_chunk_delay_s=first_chunk_delay_s,
            finish_reason=finish_reason,
            raw_events=None if raw_events is None else list(raw_events),
            script=script,
        )
        with self._lock:
            self._behaviour = b

    # -- inspection -------------------------------------------------------------
    def _add(self, rec: RecordedRequest) -> None:
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()

    def stream_bodies(self) -> list[Any]:
        """The JSON bodies of the streamGenerateContent requests (the CLI's model calls), in order."""
        with self._lock:
            return [r.json for r in self.requests if r.rpc == "streamGenerateContent"]

    def generate_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.rpc in ("streamGenerateContent", "generateContent")]

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least n requests were recorded (or timeout). Returns success."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


if __name__ == "__main__":  # manual use: python tests/mock_gemini_api.py
    with MockGeminiApi() as api:
        print(api.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
