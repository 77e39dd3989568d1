"""HeadlessRun: a request answered by a headless gemini process of its own (`-o stream-json`).

Everything the request needs is fixed when the process starts (model, system prompt,
settings.json with its generation settings, tools and MCP server); the prompt goes on stdin,
then EOF; stdout is stream-json. The process serves this request only, and dies with it.
This is PROXY_CLI_INTERFACE=headless; the default drives the CLI over ACP (proxy/cli/acp.py).

A model turn that calls client tools ends the run: the CLI prints a `tool_use` event for
every call of the turn while the turn streams, then calls them all through the run's MCP
tool server, which reports the first call on the run's socket and never answers. By then
every `tool_use` line is in the stdout pipe (the CLI writes stdout synchronously before it
calls a tool), so draining stdout collects the whole turn.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ..answer import AnswerEvent, Delta, Finished, ToolCalled
from ..conversation import ToolCall
from ..service.limits import Slot
from .failures import classify_failure
from .home import UserAuth, cli_settings, write_cli_home
from .process import EOF, CliProcess, Inbox
from .prompt import Prompt
from .spec import TOOL_SOCKET, TOOLS_FILE, AnswerShape, RunSpec
from .tool_calls import ToolCallListener

# Put in the stdin pipe before the CLI starts: the CLI reads stdin only after its ~1 s
# initialisation and gives up if nothing arrives within 500 ms of starting to read (under
# load a write right after spawn can be later than that); once one byte is there it waits
# for EOF. Every prompt therefore starts with this newline, which also disarms slash commands.
PRIMER = "\n"
# After the first tool call reaches the MCP server: stdout is drained until it has been quiet
# this long with nothing left in the pipe, and for no longer than SETTLE_MAX.
SETTLE_QUIET = 0.05
SETTLE_MAX = 1.0
SAFETY_MARKER = "blocked due to safety"
_TOOL_CALLED = "tool_called"  # type of the events the tool socket queues (not a CLI event type)


class HeadlessRun:
    """One headless process, one request: spawn, feed the prompt, read its answer, close."""

    from_pool = False
    session_kind = "-"

    def __init__(self, process: CliProcess, shape: AnswerShape):
        self.process = process
        self.shape = shape
        self.handed_at: float | None = None  # time.perf_counter() when the prompt went to the CLI
        self._inbox = Inbox()
        self._listener: ToolCallListener | None = None
        self._wait = 0.0
        self._reader = self._read()

    @classmethod
    def start(cls, config: Mapping[str, Any], auth: UserAuth, slot: Slot, spec: RunSpec,
              shape: AnswerShape) -> HeadlessRun:
        """Lay out a run holding `slot` (released when it closes) and start its CLI, which then
        initialises and waits for `send()`."""
        try:
            process = CliProcess(config["PROXY_RUN_DIR"], config["PROXY_KILL_GRACE"])
        except BaseException:
            slot.release()
            raise
        process.on_close.append(slot.release)
        run = cls(process, shape)
        try:
            settings = cli_settings(auth.auth_type, config["PROXY_CLI_MAX_ATTEMPTS"], config["PROXY_TOOLS"],
                                    client_tools=spec.cli_tool_names(), mcp_servers=spec.mcp_servers(process.dir),
                                    model_configs=json.loads(spec.model_configs) if spec.model_configs else None)
            write_cli_home(process.dir, process.home, settings, auth)
            if spec.tools:
                (process.dir / TOOLS_FILE).write_text(json.dumps(spec.tool_declarations()), encoding="utf-8")
                run._listener = ToolCallListener(process.dir / TOOL_SOCKET, run._tool_called)
            process.spawn(config["GEMINI_BIN"], ["-m", spec.cli_model, "-o", "stream-json", "--approval-mode",
                                                 "default"], spec.system_text, run._inbox.put, PRIMER.encode())
        except BaseException:
            run.close()
            raise
        return run

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def spawn_ms(self) -> float | None:
        return self.process.spawn_ms

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode

    def send(self, prompt: Prompt) -> None:
        """Put the request's files in the workspace, then send the prompt and close stdin."""
        self.handed_at = time.perf_counter()
        for name, data in prompt.images:
            (self.process.workspace / name).write_bytes(data)
        # A writer of its own: a large prompt fills the pipe until the CLI reads it.
        threading.Thread(target=self._write_stdin, args=(prompt.text.encode("utf-8"),), daemon=True).start()

    def next_event(self, timeout: float) -> AnswerEvent | None:
        """The answer's next event, or None when nothing came within `timeout` seconds; raises the
        ApiError of a failed run."""
        self._wait = timeout
        return next(self._reader, None)

    def cancel(self) -> None:
        """Nothing to say to a headless process: closing it ends it."""

    def close(self) -> None:
        """Kill the process group and remove the run (idempotent, never raises)."""
        if self._listener is not None:
            self._listener.close()
        self.process.close()

    # -- internals --------------------------------------------------------------

    def _tool_called(self, report: dict[str, Any]) -> None:
        self._inbox.put({"type": _TOOL_CALLED, **report})

    def _write_stdin(self, data: bytes) -> None:
        try:
            self.process.write(data)
        finally:
            self.process.close_stdin()
            # Under gevent (26), os.close() of a pipe is deferred until the event loop next polls,
            # which may be a heartbeat away when nothing else happens: the CLI would see EOF, and
            # start answering, only then (measured: +0.5 s per request with a 0.5 s heartbeat).
            # A timer, however short, makes the loop poll now; sleep(0) would not.
            time.sleep(0.001)

    def _read(self) -> Iterator[AnswerEvent | None]:
        calls: list[ToolCall] = []
        result: dict | None = None
        warnings: list[str] = []
        while True:
            event = self._inbox.get(self._wait)
            if event is None:
                yield None
                continue
            if event is EOF:
                break
            kind = event.get("type")
            if kind == "message" and event.get("role") == "assistant":
                text = event.get("content")
                if isinstance(text, str) and text:
                    yield Delta(text)
            elif kind == "tool_use":
                call = self.shape.client_call(event.get("tool_name"), event.get("parameters"), calls)
                if call is not None:
                    yield ToolCalled(call)
            elif kind == _TOOL_CALLED or (kind == "tool_result" and calls):
                # The turn is over and its calls are being run: collect the rest of them (the socket's
                # report can overtake the stdout lines that preceded it), and end here.
                for call in self._settle(calls):
                    yield ToolCalled(call)
                if calls:
                    yield Finished("tool_calls", None)
                    return
            elif kind == "error":
                warnings.append(str(event.get("message", "")))
            elif kind == "result":
                result = event
                if result.get("status") == "success":
                    # The answer is whole; the CLI's own exit takes ~100 ms more, nobody need wait for it.
                    self.process.answered = True
                    stats = result.get("stats")
                    yield Finished("length" if _hit_limit(stats, self.shape.max_output_tokens) else "stop",
                                   usage_from_stats(stats))
                    return
        exit_code = self.process.finish()
        stats = result.get("stats") if result else None
        if result and not result.get("error") and any(SAFETY_MARKER in w for w in warnings):
            yield Finished("content_filter", usage_from_stats(stats))
            return
        error = (result or {}).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        if not message and warnings:
            message = "; ".join(w for w in warnings if w)
        raise classify_failure(exit_code, message, self.process.stderr_tail, self.shape.model, self.shape.cli_model)

    def _settle(self, calls: list[ToolCall]) -> Iterator[ToolCall]:
        """The rest of the turn's calls (added to `calls`): what stdout still holds once the tool
        server has been called."""
        deadline = time.monotonic() + SETTLE_MAX
        while time.monotonic() < deadline:
            event = self._inbox.get(SETTLE_QUIET)
            if event is None:
                if self.process.stdout_pending() == 0:
                    return
                continue
            if event is EOF:
                return
            if event.get("type") == "tool_use":
                call = self.shape.client_call(event.get("tool_name"), event.get("parameters"), calls)
                if call is not None:
                    yield call


def usage_from_stats(stats: dict[str, Any] | None) -> dict[str, int] | None:
    """The CLI's real token counts (`result` event stats) as the gateway's usage, in OpenAI's
    names (no `reasoning_tokens`: neither interface reports the thoughts' count as such)."""
    if not stats:
        return None
    prompt = int(stats.get("input_tokens") or 0)
    completion = int(stats.get("output_tokens") or 0)
    total = int(stats.get("total_tokens") or (prompt + completion))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _hit_limit(stats: dict | None, limit: int | None) -> bool:
    """Whether the answer stopped at `max_tokens`: the CLI reports no finish reason, so its output
    token count (with the thoughts', which count against the same limit) is compared with it."""
    if not limit or not stats:
        return False
    output = int(stats.get("output_tokens") or 0)
    thoughts = max(0, int(stats.get("total_tokens") or 0) - int(stats.get("input_tokens") or 0) - output)
    return output + thoughts >= limit
