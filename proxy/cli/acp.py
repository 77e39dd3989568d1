"""ACP: one `gemini --acp` process serves many requests, each in a fresh session of its own.

Why (measured with 0.61.0 against the loopback mock; README "Two ways to drive the CLI"): a
start-up costs ~1.3 CPU-s, a session ~40 ms; ACP streams the model's thoughts; and with the
session's turn limit at one model turn (`model.maxSessionTurns: 1`), every call of a parallel
tool turn reaches the run's MCP server (which answers it at once, proxy/cli/mcp_tool_server.py)
and the prompt then ends (`max_turn_requests`) before any result could go back to the API.

What each session gets, so that it starts as clean as a cold process (tests/test_leaks.py):
- its own cwd `<run dir>/s-<random>/` (0700), holding its own workspace settings
  (`.gemini/settings.json`: generation settings, allowed tools, the MCP server), which the CLI
  reads at `session/new` (a new cwd defeats its 10 s settings cache);
- its system prompt: the process's GEMINI_SYSTEM_MD file, read at `session/new`;
- its model (`session/set_model`), and its prompt (`session/prompt`).
When it ends: a prompt still running is cancelled (`session/cancel`; the process is killed if
that is not confirmed within CANCEL_TIMEOUT), its MCP server is told to exit, and once the prompt
is at rest its cwd and the CLI's files for that cwd (`<home>/.gemini/tmp/<slug>/`, its chat
recording, and `history/<slug>/`) are deleted. ACP 0.61.0 cannot close a session: its objects stay
in the process's memory (the pool retires a process after PROXY_PROCESS_MAX_REQUESTS sessions).

One hazard shapes the scheduling here. Every `session/new` makes *every* session of the process
re-read the system prompt file (the new session's memory refresh emits the CLI's global
"memory changed" event), so the file may change only while no other session could still send
an API request with it: the process keeps one system prompt at a time (`system_text`), and
switches to another only when none of its sessions is `unsent` (opened, but its API request
not yet known to have gone out: no output, no result). Sessions with the process's current
system prompt are opened at any time.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..answer import AnswerEvent, Delta, Finished, Thinking, ToolCalled
from ..conversation import ToolCall
from ..service.errors import ApiError
from ..service.limits import Slot
from .failures import classify_failure
from .home import READ_ONLY_TOOLS, UserAuth, cli_settings, write_cli_home
from .process import EOF, CliProcess, Inbox, write_atomically
from .prompt import Prompt
from .spec import TOOL_SOCKET, TOOLS_FILE, AnswerShape, RunSpec
from .tool_calls import ToolCallListener

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 30.0  # seconds for `session/new` and `session/set_model` to be answered; else the process is broken
CANCEL_TIMEOUT = 5.0  # seconds for a cancelled prompt to end; else the process is killed
SESSION_PREFIX = "s-"  # a session's cwd in the run dir: s-<8 hex>
EMPTY_SUBJECT = "****\n"  # how the CLI prints a thought that has no subject
OUTPUT_UPDATES = {"agent_message_chunk", "agent_thought_chunk", "tool_call", "tool_call_update"}


class _Reply:
    """The answer to one JSON-RPC request, when it comes."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self._event = threading.Event()

    def __call__(self, message: dict[str, Any]) -> None:
        self.message = message
        self._event.set()

    def wait(self, timeout: float) -> dict[str, Any] | None:
        self._event.wait(timeout)
        return self.message


class _OpenLock:
    """One `session/new` at a time, the requests' own before those opened ahead in the background."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._requests_waiting = 0

    @contextmanager
    def held(self, background: bool) -> Iterator[None]:
        with self._cond:
            self._requests_waiting += not background
            while self._busy or (background and self._requests_waiting):
                self._cond.wait()
            self._requests_waiting -= not background
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class AcpProcess:
    """One `gemini --acp` process: the JSON-RPC peer that hosts the sessions of many requests.

    `max_sessions` at once, `max_requests` in its life (1 and 1: a process of its own per request).
    """

    def __init__(self, config: Mapping[str, Any], slot: Slot, tenant: str, max_sessions: int, max_requests: int):
        self.config = config
        self.tenant = tenant
        self.max_sessions, self.max_requests = max_sessions, max_requests
        try:
            self.cli = CliProcess(config["PROXY_RUN_DIR"], config["PROXY_KILL_GRACE"])
        except BaseException:
            slot.release()
            raise
        self.cli.on_close.append(slot.release)
        self.born = self.last_used = time.monotonic()
        self.ready_at: float | None = None
        self.rss_at_ready = 0
        self.capabilities: dict[str, Any] | None = None  # `initialize`'s result, once answered
        self.ready = threading.Event()  # `initialize` answered, or the process ended
        self.exited = False
        self.retire_reason: str | None = None
        self.system_text = ""
        self.epoch = 0  # bumped at every system prompt switch
        self.served = 0  # requests given a session, in its life
        self.active: set[AcpSession] = set()  # sessions of requests not yet ended
        self.unsent: set[AcpSession] = set()  # sessions that may still read the system prompt file
        self.aheads: list[AcpSession] = []  # sessions opened ahead for the next requests of their spec
        self.reread_epoch = -1  # the epoch in which a `session/new` last completed (every session re-read the file)
        self.opening = 0  # `session/new`s sent and not yet answered
        self._rereading: str | None = None  # the prompt a throwaway session is opening for (`wait_reread`)
        self.on_change: Callable[[AcpProcess], None] = lambda _: None  # the pool: capacity or state changed
        self._lock = threading.Condition()
        self._tickets = itertools.count()
        # One `session/new` at a time: each takes the CLI's projects.json lock, whose retries back off
        # exponentially (8 at once: the last answered after 12.9 s; one after the other, ~45 ms each).
        self._open_lock = _OpenLock()
        self._waiting: list[tuple[int, str]] = []  # sessions waiting to open: (ticket, system prompt)
        self._ids = itertools.count(1)
        self._replies: dict[int, Callable[[dict[str, Any]], None]] = {}
        self._sessions: dict[str, AcpSession] = {}  # by ACP session id, until their prompt is at rest

    def spawn(self, auth: UserAuth, model: str, system_text: str) -> None:
        """Start the CLI and send `initialize`; sessions can be reserved at once and open when it
        has answered. `model` is the `-m` (each session sets its own), `system_text` the
        system prompt file's first content."""
        config = self.config
        try:
            write_cli_home(self.cli.dir, self.cli.home, cli_settings(
                auth.auth_type, config["PROXY_CLI_MAX_ATTEMPTS"], config["PROXY_TOOLS"], max_session_turns=1), auth)
            self.system_text = system_text
            self.cli.spawn(config["GEMINI_BIN"], ["--acp", "-m", model], system_text, self._dispatch)
            self.request("initialize", {"protocolVersion": 1, "clientCapabilities": {
                "fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}}, self._initialized)
        except BaseException:
            self.close()
            raise

    # -- state the pool reads -------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Can take another session: alive, not retiring, room for one more, requests left."""
        return (not self.exited and self.retire_reason is None and not self.cli.closed
                and len(self.active) < self.max_sessions and self.served < self.max_requests)

    def _first_switch(self) -> tuple[int, str] | None:
        """(ticket, system prompt) of the first session waiting to switch the file (under the lock)."""
        return next(((ticket, text) for ticket, text in self._waiting if text != self.system_text), None)

    def _held_against(self, text: str, but: AcpSession | None = None) -> bool:
        """A session other than `but` may still send an API request with a prompt other than
        `text` (under the lock): the file cannot be switched to `text` yet."""
        return any(s.spec.system_text != text for s in self.unsent if s is not but)

    def fits_now(self, system_text: str) -> bool:
        """A session with this system prompt could be opened without waiting for the process's
        other sessions: it has this prompt and no switch to another is waiting, or the first switch
        waiting is to this prompt, or nothing holds the current one."""
        with self._lock:
            return self._fits(system_text)

    def _fits(self, system_text: str) -> bool:
        switch = self._first_switch()
        if switch is not None:
            return switch[1] == system_text
        return system_text == self.system_text or not self._held_against(system_text)

    def retire(self, reason: str) -> None:
        """Take no more sessions; the pool closes the process once its sessions have ended."""
        with self._lock:
            if self.retire_reason is None:
                self.retire_reason = reason
                if reason not in ("requests", "age", "idle", "shed", "evicted", "closing"):
                    log.warning("gemini ACP process %s retired: %s", self.cli.pid, reason)
        self.on_change(self)

    def fail(self, reason: str) -> None:
        """Something went wrong that cannot be attributed to one session: kill the process now
        (its sessions' requests get errors) and let the pool replace it."""
        self.retire(reason)
        self.close()

    def close(self) -> None:
        """Kill the process and remove everything (idempotent, never raises)."""
        self.cli.close()
        self.exited = True
        self.ready.set()
        self.on_change(self)

    # -- sessions -------------------------------------------------------------------------

    def reserve(self, session: AcpSession) -> None:
        """Count `session` as a request's (its place was checked with `usable`)."""
        with self._lock:
            self.active.add(session)
            self.served += 1
            self.last_used = time.monotonic()
            if self.served >= self.max_requests and self.retire_reason is None:
                self.retire_reason = "requests"

    def take_ahead(self, spec: RunSpec) -> AcpSession | None:
        """A session opened ahead for `spec`, if the process can give it its system prompt now (it
        holds it, or a switch to it is first in line, or nothing holds the current one). Every
        session re-reads the system prompt file at each `session/new`, so the request then waits for
        one to complete with the file holding its prompt (`wait_reread`)."""
        with self._lock:
            if self.exited or not self._fits(spec.system_text):
                return None
            # One still opening is taken too: waiting for the rest of its `session/new` beats queueing
            # another behind it.
            ahead = next((a for a in self.aheads if a.spec == spec and a.ready_ahead()), None)
            if ahead is None:
                return None
            self.aheads.remove(ahead)
            ahead.taken = True
            ahead.handed_at = time.perf_counter()  # the CLI is working on it already, or has
            # Not in `unsent` yet: until its prompt is re-read (`wait_reread`) it holds nothing, and
            # must not hold back a switch that its own re-read may be queued behind.
            self.active.add(ahead)
            self.served += 1
            self.last_used = time.monotonic()
            if self.served >= self.max_requests and self.retire_reason is None:
                self.retire_reason = "requests"
        return ahead

    def wait_reread(self, session: AcpSession) -> bool:
        """Wait until every session of the process has re-read the system prompt file holding this
        session's prompt (a `session/new` completed since the file was last switched): one under
        way, or the switch first in line, or another request's throwaway session; else open a
        throwaway session (that switches the file if need be). False if the process went away, or
        the request did. From then on the session holds the file's prompt (it is `unsent`)."""
        text = session.spec.system_text
        deadline = time.monotonic() + OPEN_TIMEOUT
        while True:
            with self._lock:
                while not self._reread(text):
                    if self.exited or session.cancelled or time.monotonic() >= deadline:
                        return False
                    switch = self._first_switch()
                    coming = ((switch is not None and switch[1] == text) or self._rereading is not None
                              or (self.opening and self.system_text == text))
                    if not coming:
                        self._rereading = text  # the others wait for this one
                        break
                    self._lock.wait(0.1)
                else:
                    self.unsent.add(session)
                    return True
            throwaway = AcpSession(self, RunSpec(session.spec.cli_model, text), None, from_pool=True)
            held = False
            try:
                self.open(throwaway)
                with self._lock:  # before the throwaway lets go of the file: no switch in between
                    held = self._reread(text) and not session.cancelled
                    if held:
                        self.unsent.add(session)
            finally:
                self.sent(throwaway)
                throwaway.close()
                with self._lock:
                    self._rereading = None
                    self._lock.notify_all()
            if held:
                return True

    def _reread(self, text: str) -> bool:
        """Every session holds `text` as its system prompt (under the lock)."""
        return self.system_text == text and self.reread_epoch == self.epoch

    def ahead_count(self, spec: RunSpec) -> int:
        with self._lock:
            return sum(1 for a in self.aheads if a.spec == spec)

    def add_ahead(self, session: AcpSession, limit: int) -> bool:
        """Keep `session` as one opened ahead (at most `limit` in all: the oldest for another system
        prompt makes room); the caller opens it."""
        evicted = None
        with self._lock:
            if self.exited or self.retire_reason is not None:
                return False
            if len(self.aheads) >= limit:
                evicted = next((a for a in self.aheads if a.spec.system_text != self.system_text), None)
                if evicted is None:
                    return False
                self.aheads.remove(evicted)
            self.aheads.append(session)
        if evicted is not None:
            evicted.close()
        return True

    def drop_aheads(self, keep: Callable[[RunSpec], bool] = lambda _: False) -> None:
        """Discard the sessions opened ahead whose spec `keep` does not want any more."""
        with self._lock:
            dropped = [a for a in self.aheads if not keep(a.spec)]
            self.aheads = [a for a in self.aheads if keep(a.spec)]
        for ahead in dropped:
            ahead.close()

    def release(self, session: AcpSession) -> None:
        """A request's session ended; a retiring process closes with its last one."""
        with self._lock:
            self.active.discard(session)
            self.unsent.discard(session)
            if session in self.aheads:
                self.aheads.remove(session)
            self.last_used = time.monotonic()
            last = not self.active and (self.retire_reason is not None or self.exited)
            self._lock.notify_all()
        if last:
            self.close()
        else:
            self.on_change(self)

    def open(self, session: AcpSession) -> tuple[dict[str, Any] | None, str]:
        """Open `session`'s ACP session: (the `session/new` answer or None, what went wrong).

        Sessions with the process's system prompt open at once (one `session/new` at a time); one
        with another waits, in arrival order, until no session is `unsent`, then switches the file.
        A session waiting to switch holds back later ones of the current prompt, so that it is not
        starved."""
        text = session.spec.system_text
        if session.opened_ahead and not session.taken:
            # Opened ahead for the prompt the process holds, never switching it: the request that
            # takes it waits for a re-read (`wait_reread`), so it needs no hold on the file either.
            with self._lock:
                if text != self.system_text or self.exited:
                    return None, "abandoned"
                session.epoch = self.epoch
            return self._new_session(session)
        with self._lock:
            ticket = next(self._tickets)
            self._waiting.append((ticket, text))
            try:
                while True:
                    if session.cancelled or self.exited:
                        return None, "abandoned"
                    switch = self._first_switch()
                    if text == self.system_text and (switch is None or switch[0] > ticket):
                        break
                    # Sessions that want this same prompt (opened ahead, waiting for it) do not hold
                    # the switch back.
                    if text != self.system_text and switch is not None and switch[0] == ticket \
                            and not self._held_against(text, but=session):
                        # Sessions opened ahead for another prompt stay: they re-read the file at the
                        # next `session/new`, and are valid again whenever the process holds theirs.
                        write_atomically(self.cli.system_file, text)
                        self.system_text = text
                        self.epoch += 1
                        break
                    self._lock.wait(0.1)  # the others' first output, or their end, wakes this
            finally:
                self._waiting.remove((ticket, text))
                self._lock.notify_all()
            session.epoch = self.epoch
            self.unsent.add(session)
        return self._new_session(session)

    def _new_session(self, session: AcpSession) -> tuple[dict[str, Any] | None, str]:
        with self._open_lock.held(background=session.opened_ahead and not session.taken):
            if session.cancelled:
                return None, "abandoned"
            session.lay_out()
            reply = _Reply()
            with self._lock:
                self.opening += 1
                epoch = self.epoch

            def opened(message: dict[str, Any]) -> None:
                session_id = (message.get("result") or {}).get("sessionId")
                with self._lock:
                    if isinstance(session_id, str):
                        self._sessions[session_id] = session
                        if epoch == self.epoch:
                            self.reread_epoch = epoch  # every session re-read the file as it is now
                    self.opening -= 1
                    self._lock.notify_all()
                if isinstance(session_id, str):
                    session.session_id = session_id
                reply(message)

            session.handed_at = time.perf_counter()
            self.request("session/new", {"cwd": str(session.cwd), "mcpServers": []}, opened)
            answer = reply.wait(OPEN_TIMEOUT)
            if answer is None:
                self.fail(f"session/new not answered within {OPEN_TIMEOUT:g} s")
            return answer, "timeout"

    def sent(self, session: AcpSession) -> None:
        """`session`'s API request has gone out (or will not): it no longer holds the system prompt."""
        with self._lock:
            if session in self.unsent:
                self.unsent.discard(session)
                self._lock.notify_all()
            else:
                return
        self.on_change(self)

    def at_rest(self, session: AcpSession) -> None:
        with self._lock:
            if session.session_id is not None:
                self._sessions.pop(session.session_id, None)

    # -- JSON-RPC --------------------------------------------------------------------------

    def request(self, method: str, params: dict[str, Any], on_answer: Callable[[dict[str, Any]], None]) -> None:
        request_id = next(self._ids)
        with self._lock:
            self._replies[request_id] = on_answer
        if not self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}):
            with self._lock:
                self._replies.pop(request_id, None)
            on_answer({"error": {"code": None, "message": "the gemini process no longer reads its input"}})

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def _send(self, message: dict[str, Any]) -> bool:
        data = (json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        return self.cli.write(data)

    def _initialized(self, message: dict[str, Any]) -> None:
        if "error" not in message:
            self.capabilities = message.get("result") or {}
            self.ready_at = time.monotonic()
            self.rss_at_ready = self.cli.rss_kb()
        else:
            self.retire(f"initialize failed: {message['error']}")
        self.ready.set()
        self.on_change(self)

    def _dispatch(self, message: Any) -> None:
        """Every line the CLI prints: answers go to whoever asked, updates to their session."""
        if message is EOF:
            self._ended()
            return
        if "method" in message:
            params = message.get("params") if isinstance(message.get("params"), dict) else {}
            with self._lock:
                session = self._sessions.get(params.get("sessionId"))
            if "id" in message:  # a request of the agent's
                self._answer_agent(message)
            elif message["method"] == "session/update" and session is not None:
                session.deliver(("update", params.get("update") or {}))
            return
        with self._lock:
            handler = self._replies.pop(message.get("id"), None) if isinstance(message.get("id"), int) else None
        if handler is None:
            # An answer (or error) nobody asked for: the protocol state is unknown from here on.
            self.retire(f"a JSON-RPC message it cannot attribute: {json.dumps(message)[:200]}")
            return
        handler(message)

    def _answer_agent(self, message: dict[str, Any]) -> None:
        """Requests the agent makes of its client: no permission is granted (trusted tools need
        none), no file or terminal is offered."""
        if message["method"] == "session/request_permission":
            self._send({"jsonrpc": "2.0", "id": message["id"], "result": {"outcome": {"outcome": "cancelled"}}})
        else:
            self._send({"jsonrpc": "2.0", "id": message["id"],
                        "error": {"code": -32601, "message": "not supported"}})

    def _ended(self) -> None:
        """Stdout ended: the process is gone (or going); every session and question gets that."""
        self.exited = True
        with self._lock:
            replies, self._replies = list(self._replies.values()), {}
            sessions = set(self._sessions.values()) | self.active
            self._lock.notify_all()
        for handler in replies:
            handler({"error": {"code": None, "message": "the gemini process ended"}, "eof": True})
        for session in sessions:
            session.deliver(EOF)
        self.ready.set()
        self.on_change(self)


class AcpSession:
    """A request's run over ACP: one session on an AcpProcess (the driver the gateway reads)."""

    def __init__(self, process: AcpProcess, spec: RunSpec, shape: AnswerShape | None, from_pool: bool,
                 ahead: bool = False):
        self.process = process
        self.spec = spec
        self.shape = shape  # given by the request (`take`), for a session opened ahead
        self.from_pool = from_pool  # the process was running before this request came
        self.opened_ahead = ahead  # opened before any request wanted it (proxy/cli/pool.py)
        self.taken = False  # an ahead session given to a request
        self.cwd = process.cli.dir / f"{SESSION_PREFIX}{secrets.token_hex(4)}"
        self.session_id: str | None = None
        self.epoch = -1
        self.handed_at: float | None = None  # time.perf_counter() when the CLI was given the request
        self.cancelled = False
        self.exit_code: int | None = None
        self._prompt: Prompt | None = None
        self._prompt_sent = False
        self._at_rest = True  # no prompt running
        self._closed = False
        self._opened = threading.Event()  # opened (for an ahead session)
        self._open_error: ApiError | None = None
        self._listener: ToolCallListener | None = None
        self._inbox = Inbox()
        self._wait = 0.0
        self._reader = self._read()
        self._cancel_timer: threading.Timer | None = None
        self._lock = threading.RLock()  # a failed write answers the prompt at once, under it

    @property
    def pid(self) -> int | None:
        return self.process.cli.pid

    @property
    def session_kind(self) -> str:
        return "ahead" if self.opened_ahead else "new"

    @property
    def spawn_ms(self) -> float | None:
        return None if self.from_pool else self.process.cli.spawn_ms

    # -- the driver interface -------------------------------------------------------------

    def open_ahead(self) -> None:
        """Open the session now (in the background), to be given a request of its spec later."""
        threading.Thread(target=self._open, name="acp-ahead", daemon=True).start()

    def ready_ahead(self) -> bool:
        """Opened ahead (or still opening) without error, and not given to a request."""
        return self._open_error is None and not self._closed and not self.taken and (
            not self._opened.is_set() or self.session_id is not None)

    def send(self, prompt: Prompt) -> None:
        """Open the session (unless opened ahead) and send the prompt, in the background: the
        gateway reads the events meanwhile, with its heartbeats and deadlines."""
        self._prompt = prompt
        threading.Thread(target=self._open_and_prompt, name="acp-session", daemon=True).start()

    def next_event(self, timeout: float) -> AnswerEvent | None:
        """The answer's next event, or None when nothing came within `timeout` seconds; raises the
        ApiError of a failed run."""
        self._wait = timeout
        return next(self._reader, None)

    def cancel(self) -> None:
        """The answer is no longer wanted: stop the prompt (or never send it)."""
        with self._lock:
            self.cancelled = True
            running = self._prompt_sent and not self._at_rest and self._cancel_timer is None
            if running:
                self._cancel_timer = threading.Timer(CANCEL_TIMEOUT, self._cancel_not_confirmed)
                self._cancel_timer.daemon = True
        if running:
            self.process.notify("session/cancel", {"sessionId": self.session_id})
            self._cancel_timer.start()

    def close(self) -> None:
        """End the request's session: cancel what runs, stop its MCP server, delete its files once
        at rest, give its place back (idempotent, never raises)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if not self._at_rest:
                self.cancel()
            self.cancelled = True  # a session still opening stops there
            if self._listener is not None:
                self._listener.close()  # its MCP server exits
            if self._at_rest:
                self._remove_files()
        except Exception:  # noqa: BLE001 - close() must not raise
            log.exception("closing an ACP session failed")
        self.process.release(self)
        if self.process.cli.closed:
            self.exit_code = self.process.cli.returncode

    # -- what the process hands it -----------------------------------------------------

    def deliver(self, item: Any) -> None:
        """An update, the prompt's answer, a tool call report, EOF or an ApiError, in order."""
        if isinstance(item, tuple) and item[0] == "update" and item[1].get("sessionUpdate") in OUTPUT_UPDATES \
                and self.process.config["PROXY_CLI_MAX_ATTEMPTS"] <= 1:
            self.process.sent(self)  # a response is streaming: its request went out
        self._inbox.put(item)

    def lay_out(self) -> None:
        """The session's cwd with its workspace settings and, for client tools, its MCP server's
        files and the listener for its reports."""
        self.cwd.mkdir(mode=0o700)
        (self.cwd / ".gemini").mkdir(mode=0o700)
        settings = self.spec.session_settings(self.cwd / ".gemini", _core_tools(self.process.config))
        if settings:
            (self.cwd / ".gemini" / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
        if self.spec.tools:
            (self.cwd / ".gemini" / TOOLS_FILE).write_text(json.dumps(self.spec.tool_declarations()),
                                                           encoding="utf-8")
            self._listener = ToolCallListener(self.cwd / ".gemini" / TOOL_SOCKET,
                                              lambda report: self.deliver(("tool", report)))

    # -- internals ------------------------------------------------------------------------

    def _open(self) -> None:
        """Wait for the process, then open the session and set its model; errors are kept for
        the request."""
        try:
            self._open_error = self._open_session()
        except Exception as exc:  # noqa: BLE001 - reported to the request, never raised in a thread
            log.exception("opening an ACP session failed")
            self._open_error = self._failed(f"opening the session failed: {exc}")
        finally:
            self._opened.set()

    def _open_session(self) -> ApiError | None:
        process = self.process
        while not process.ready.wait(0.25):
            if self.cancelled:
                return None
        if process.capabilities is None:  # `initialize` failed, or the process ended before answering
            return self._failed("")
        answer, why = process.open(self)
        if answer is None:
            return None if why == "abandoned" else self._failed("")
        if answer.get("eof"):
            return self._failed("")
        if "error" in answer:
            return self._error(answer)
        reply = _Reply()
        process.request("session/set_model", {"sessionId": self.session_id, "modelId": self.spec.cli_model}, reply)
        answer = reply.wait(OPEN_TIMEOUT)
        if answer is None:
            process.fail(f"session/set_model not answered within {OPEN_TIMEOUT:g} s")
        if answer is None or answer.get("eof"):
            return self._failed("")
        return self._error(answer) if "error" in answer else None

    def _open_and_prompt(self) -> None:
        reread = self.opened_ahead
        if not self.opened_ahead:
            self._open()
        else:
            while not self._opened.wait(0.25):  # taken while it was still opening
                if self.cancelled:
                    self.process.sent(self)
                    return
            if self.session_id is None and self._open_error is None and not self.cancelled:
                # It gave up opening (the process switched prompts meanwhile): open it as the request's own.
                reread = False
                self._opened.clear()
                self._open()
        if self._open_error is not None:
            self.process.sent(self)
            self.deliver(self._open_error)
            return
        if reread:
            if not self.process.wait_reread(self):  # its system prompt as the file has it now
                self.process.sent(self)
                if not self.cancelled:
                    self.deliver(self._failed(""))
                return
        with self._lock:  # a cancel must not overtake the prompt on the CLI's stdin
            if self.cancelled or self.session_id is None:
                self.process.sent(self)
                return
            self._prompt_sent, self._at_rest = True, False
            self.process.request("session/prompt", {"sessionId": self.session_id, "prompt": self._prompt.blocks()},
                                 self._prompt_answered)

    def _prompt_answered(self, answer: dict[str, Any]) -> None:
        with self._lock:
            self._at_rest = True
            timer, self._cancel_timer = self._cancel_timer, None
            closed = self._closed
        if timer is not None:
            timer.cancel()
        self.process.sent(self)
        self.process.at_rest(self)
        if closed:
            self._remove_files()
        self.deliver(("result", answer))

    def _cancel_not_confirmed(self) -> None:
        if not self._at_rest:
            self.process.fail(f"a cancelled prompt did not end within {CANCEL_TIMEOUT:g} s")

    def _remove_files(self) -> None:
        """The session's cwd, and what the CLI keeps for that cwd in its home."""
        shutil.rmtree(self.cwd, ignore_errors=True)
        gemini_home = self.process.cli.home / ".gemini"
        for slug in _slugs(gemini_home, self.cwd):
            for where in ("tmp", "history"):
                shutil.rmtree(gemini_home / where / slug, ignore_errors=True)

    def _read(self) -> Iterator[AnswerEvent | None]:
        calls: list[ToolCall] = []
        got_output = False
        while True:
            item = self._inbox.get(self._wait)
            if item is None:
                yield None
                continue
            if isinstance(item, ApiError):
                raise item
            if item is EOF:
                raise self._failed("")
            kind, value = item
            if kind == "update":
                content = value.get("content")
                text = content.get("text") if isinstance(content, dict) else None
                if not isinstance(text, str) or not text:
                    continue
                if value.get("sessionUpdate") == "agent_thought_chunk":
                    got_output = True
                    yield Thinking(text[len(EMPTY_SUBJECT):] if text.startswith(EMPTY_SUBJECT) else text)
                elif value.get("sessionUpdate") == "agent_message_chunk":
                    got_output = True
                    yield Delta(text)
            elif kind == "tool":
                call = self.shape.client_call(value.get("name"), value.get("arguments"), calls)
                if call is not None:
                    yield ToolCalled(call)
            elif kind == "result":
                if "error" in value:
                    if value.get("eof"):
                        raise self._failed("")
                    raise self._error(value)
                yield _finished(value.get("result") or {}, got_output, bool(calls), self.shape)
                return

    def _failed(self, message: str, status: int | None = None, still_up: bool = False) -> ApiError:
        """The ApiError for this session's failure, from what the process says or how it ended."""
        cli = self.process.cli
        # A process that answered with a JSON-RPC error is still up (ACP survives API errors):
        # waiting for its exit would only delay the error. One whose output ended may take a while.
        exit_code = cli.finish(timeout=0 if still_up else 5.0)
        model = self.shape.model if self.shape else self.spec.cli_model
        return classify_failure(exit_code, message, cli.stderr_tail, model, self.spec.cli_model, status)

    def _error(self, answer: dict[str, Any]) -> ApiError:
        """A JSON-RPC error from the CLI: its code is the API's HTTP status for API errors."""
        error = answer.get("error")
        error = error if isinstance(error, dict) else {"message": str(error)}
        code, message = error.get("code"), str(error.get("message") or "")
        status = code if isinstance(code, int) and 400 <= code < 600 else None
        return self._failed(message, status, still_up=True)


def _finished(result: dict[str, Any], got_output: bool, called: bool, shape: AnswerShape) -> Finished:
    counts = ((result.get("_meta") or {}).get("quota") or {}).get("token_count") or {}
    prompt_tokens, output = int(counts.get("input_tokens") or 0), int(counts.get("output_tokens") or 0)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": output, "total_tokens": prompt_tokens + output}
    if called:
        return Finished("tool_calls", usage)
    stop = result.get("stopReason")
    if stop == "max_tokens" or (shape.max_output_tokens and output >= shape.max_output_tokens):
        return Finished("length", usage)
    if not got_output and output == 0:
        # ACP ends a safety block as an empty end_turn (headless says "blocked"): the same here.
        return Finished("content_filter", usage)
    return Finished("stop", usage)


def _core_tools(config: Mapping[str, Any]) -> list[str]:
    return READ_ONLY_TOOLS if config["PROXY_TOOLS"] == "read-only" else []


def _slugs(gemini_home: Path, cwd: Path) -> set[str]:
    """The names the CLI files a cwd's state under (projects.json maps paths to them)."""
    slugs = {cwd.name.lower()}
    try:
        projects = json.loads((gemini_home / "projects.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return slugs
    for mapping in (projects, projects.get("projects") if isinstance(projects, dict) else None):
        if isinstance(mapping, dict) and isinstance(mapping.get(str(cwd)), str):
            slugs.add(mapping[str(cwd)])
    return {slug for slug in slugs if slug and "/" not in slug and slug not in (".", "..")}
