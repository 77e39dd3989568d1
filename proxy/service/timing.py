"""Per-request timing: spawn time, time to first token, total, tokens per second.

One `key=value` line per chat request on stdout (logger `proxy.requests`). A streamed
body is sent after `after_request` has run, so streams record their first token and
their end from inside the stream and emit the line from the generator's `finally`.

`observers` are called with the finished RequestTiming right after its line is logged,
once per chat request: metrics registers one, so the log line and the metrics always
describe the same requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("proxy.requests")

# Called with each RequestTiming when it is emitted; a failing observer is logged, never raised.
observers: list[Callable[[RequestTiming], None]] = []


@dataclass
class RequestTiming:
    request_id: str
    model: str = "-"
    stream: bool = False
    started: float = field(default_factory=time.perf_counter)
    pool: str = "-"  # hit (a warm process answered), miss (spawned cold), off (no pool)
    spawn_ms: float | None = None
    handed_at: float | None = None  # when the CLI was given the request (stdin, or the ACP session)
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: int | None = None
    outcome: str = "ok"
    exit_code: int | None = None
    cli_pid: int | None = None  # the gemini process that answered (shared by many requests, pooled)
    session: str = "-"  # ACP: `ahead` (a session opened before the request came) or `new`
    emitted: bool = False

    def token(self) -> None:
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now

    def usage(self, usage: dict[str, int] | None) -> None:
        if usage:
            self.prompt_tokens = usage["prompt_tokens"]
            self.completion_tokens = usage["completion_tokens"]

    def _ms(self, at: float | None) -> float | None:
        return None if at is None else (at - self.started) * 1000

    @property
    def ttft_ms(self) -> float | None:
        return self._ms(self.first_token_at)

    @property
    def cli_ttft_ms(self) -> float | None:
        """The CLI's own time from being handed the request to its first text."""
        if self.handed_at is None or self.first_token_at is None:
            return None
        return (self.first_token_at - self.handed_at) * 1000

    @property
    def total_ms(self) -> float | None:
        return self._ms(self.finished_at)

    @property
    def tokens_per_s(self) -> float | None:
        """Output tokens over the generation window (first to last token), or over the whole
        request when the answer came in one burst."""
        if not self.completion_tokens or self.first_token_at is None:
            return None
        window = (self.last_token_at or self.first_token_at) - self.first_token_at
        if window < 0.05:
            window = (self.finished_at or time.perf_counter()) - self.started
        return self.completion_tokens / window if window > 0 else None

    def finish(self, status: int, outcome: str | None = None) -> None:
        if self.finished_at is None:
            self.finished_at = time.perf_counter()
        self.status = status
        if outcome:
            self.outcome = outcome

    def server_timing(self) -> str:
        parts = [("spawn", self.spawn_ms), ("ttft", self.ttft_ms), ("total", self.total_ms)]
        return ", ".join(f"{name};dur={value:.1f}" for name, value in parts if value is not None)

    def log_line(self) -> str:
        def fmt(value: object) -> str:
            if value is None:
                return "-"
            return f"{value:.1f}" if isinstance(value, float) else str(value)

        fields = {
            "id": self.request_id, "model": self.model, "stream": str(self.stream).lower(),
            "status": self.status, "outcome": self.outcome, "pool": self.pool, "spawn_ms": self.spawn_ms,
            "ttft_ms": self.ttft_ms, "cli_ttft_ms": self.cli_ttft_ms, "total_ms": self.total_ms,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "tokens_per_s": self.tokens_per_s,
            "exit_code": self.exit_code, "cli_pid": self.cli_pid, "session": self.session,
        }
        return "chat " + " ".join(f"{key}={fmt(value)}" for key, value in fields.items())

    def emit(self) -> None:
        """Log the line once, however many paths reach the end of the request."""
        if not self.emitted:
            self.emitted = True
            log.info(self.log_line())
            for observe in list(observers):
                try:
                    observe(self)
                except Exception:  # noqa: BLE001 - metrics must never fail a request
                    logging.getLogger(__name__).exception("request observer failed")
