"""CliRun: one `gemini` process and everything it owns, whichever way it is driven.

A run owns a private temp dir (mode 0700) holding the CLI's cwd (`work/`), its CLI home
(`home/`), its TMPDIR (`tmp/`), the system prompt file and the stderr file; its own
process group (a new session), so that killing it reaches every process the CLI started;
and a reader that turns stdout lines into events. It is driven in one of two ways: headless
(`-o stream-json`: the prompt on stdin, then EOF; events are stream-json) or ACP (`--acp`:
JSON-RPC messages on stdin, `send()`; events are the agent's messages, proxy/cli/acp.py).
`close()` kills the group (TERM, then
KILL after a grace period), reaps the process and removes the dir; it is idempotent and
never raises, so it can run from a generator's `finally` and `call_on_close` alike.

Written with the standard library only: under gunicorn's gevent worker, subprocess,
threading and queue are monkey-patched, so pipes are read cooperatively and one worker
holds many runs; without gevent the same code uses real threads.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import json
import logging
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Put in the stdin pipe before the CLI starts: the CLI reads stdin only after its ~1 s
# initialisation and gives up if nothing arrives within 500 ms of starting to read (under
# load a write right after spawn can be later than that); once one byte is there it waits
# for EOF. Every prompt therefore starts with this newline, which also disarms slash commands.
PRIMER = "\n"

EOF = object()  # queued by the reader when stdout ends
TOOL_CALLED = "tool_called"  # type of the events the tool socket queues (not a CLI event type)
ACP_INITIALIZE_ID = 0  # the JSON-RPC id of the `initialize` an ACP run is sent at spawn
OWN_EXIT_GRACE = 1.5  # seconds a run that answered gets to exit on its own before SIGTERM (after the reply)
OWNER_FILE = "owner"  # in each run dir: {"master", "worker", "pgid"}; read by gunicorn.conf.py

# Every run not yet closed in this process, so that a worker on its way out can kill them all.
_live_runs: set[CliRun] = set()
_live_lock = threading.Lock()


# Called first by close_all_runs: whatever starts runs on its own (the warm pool) stops here.
before_close_all: list[Callable[[], None]] = []


def close_all_runs() -> int:
    """Close every run of this process (worker shutdown); returns how many were open."""
    for hook in list(before_close_all):
        try:
            hook()
        except Exception:  # noqa: BLE001 - the runs must be closed regardless
            log.exception("close_all_runs hook failed")
    with _live_lock:
        runs = list(_live_runs)
    for run in runs:
        run.close()
    return len(runs)


# Environment the CLI must not inherit from the proxy: its own secrets and settings.
_HIDDEN_ENV_PREFIXES = ("PROXY_", "PROMETHEUS_", "GUNICORN_")


def cli_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The proxy's environment as any gemini process it starts may see it."""
    return {k: v for k, v in (os.environ if environ is None else environ).items()
            if not k.startswith(_HIDDEN_ENV_PREFIXES)}


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the worker dies without cleaning up (Linux)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class CliRun:
    """One gemini process: spawn, feed the prompt, read events, close."""

    def __init__(self, run_dir: str, kill_grace: float = 2.0):
        # mode 0700. The name always has the same length (prefix + 8 random characters): the CLI
        # puts this path into every request, so warm and cold runs differ only in those 8.
        self.dir = Path(tempfile.mkdtemp(prefix="gemini-proxy-", dir=run_dir))
        self.workspace = self.dir / "work"
        self.home = self.dir / "home"
        self.tmp = self.dir / "tmp"
        self.system_file = self.dir / "system.md"
        self.stderr_file = self.dir / "stderr.log"
        self.kill_grace = kill_grace
        self.proc: subprocess.Popen | None = None
        self.spawn_ms: float | None = None
        self.returncode: int | None = None
        self.stderr_tail = ""
        self.from_pool = False  # set when a warm process is handed to a request
        self.acp = False  # driven over ACP (JSON-RPC) instead of headless stream-json
        self.used = False  # handed a prompt (or an ACP session): a run serves one request
        self.answered = False  # its whole answer was read (set by the readers): close() lets it exit
        self.handed_at: float | None = None  # time.perf_counter() when the request went to the CLI
        self.initialized = threading.Event()  # ACP: the CLI answered `initialize`
        self.acp_capabilities: dict[str, Any] = {}
        # ACP: requests sent the moment `initialize` is answered (a session opened ahead of the
        # request, proxy/cli/acp.py), their answers by id, and whether all have come (or never will).
        self.ahead: list[dict[str, Any]] = []
        self.ahead_answers: dict[Any, dict[str, Any]] = {}
        self.ahead_done = threading.Event()
        self.ready_at: float | None = None  # ACP: time.monotonic() when it was ready for a prompt
        self.spec: Any = None  # what it was started for (runs.spawn_run: a RunSpec)
        self.on_close: list[Callable[[], None]] = []
        self._events: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._stdin_fd: int | None = None
        self._stdin_lock = threading.Lock()
        self._tool_socket: socket.socket | None = None
        self._closed = False
        for path in (self.workspace, self.home, self.tmp):
            path.mkdir(mode=0o700)
        with _live_lock:
            _live_runs.add(self)

    def spawn(self, gemini_bin: str, cli_model: str, system_text: str,
              environ: Mapping[str, str] | None = None, acp: bool = False,
              ahead: list[dict[str, Any]] = ()) -> None:
        """Start the CLI for one model and system prompt; it then waits for `feed()` (headless)
        or for a session (ACP: `initialize` is sent at once, then `ahead`; see proxy/cli/acp.py)."""
        self.system_file.write_text(system_text, encoding="utf-8")
        self.acp = acp
        self.ahead = list(ahead)
        argv = ([gemini_bin, "--acp", "-m", cli_model] if acp else
                [gemini_bin, "-m", cli_model, "-o", "stream-json", "--approval-mode", "default"])
        env = cli_environment(environ)
        env.update({
            "GEMINI_CLI_HOME": str(self.home),
            "GEMINI_SYSTEM_MD": str(self.system_file),
            "TMPDIR": str(self.tmp),
            # One process instead of a relauncher plus child: faster start, clean kills.
            "GEMINI_CLI_NO_RELAUNCH": "true",
            # The workspace is our own empty dir; headless runs in untrusted dirs exit 55.
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
        })
        stdin_read, self._stdin_fd = os.pipe()
        try:
            if not acp:  # ACP reads stdin at once; only headless needs the primer (see PRIMER)
                os.write(self._stdin_fd, PRIMER.encode())
            os.set_blocking(self._stdin_fd, False)
            with open(self.stderr_file, "wb") as stderr:
                started = time.perf_counter()
                self.proc = subprocess.Popen(
                    argv, cwd=self.workspace, env=env, stdin=stdin_read, stdout=subprocess.PIPE,
                    stderr=stderr, start_new_session=True, close_fds=True, preexec_fn=_die_with_parent,
                )
                self.spawn_ms = (time.perf_counter() - started) * 1000
        finally:
            os.close(stdin_read)
        # Who owns this run, for gunicorn's master: if the worker is SIGKILLed, the CLI dies with
        # it (PDEATHSIG) but what the CLI started would not, nor would this dir be removed;
        # the master's child_exit hook (gunicorn.conf.py) reads this file and finishes the job.
        owner = {"master": os.getppid(), "worker": os.getpid(), "pgid": self.proc.pid}
        (self.dir / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
        self._reader = threading.Thread(target=self._read_stdout, name=f"cli-{self.proc.pid}", daemon=True)
        self._reader.start()
        if acp:
            self.send({"jsonrpc": "2.0", "id": ACP_INITIALIZE_ID, "method": "initialize", "params": {
                "protocolVersion": 1, "clientCapabilities": {"fs": {"readTextFile": False, "writeTextFile": False},
                                                             "terminal": False}}})

    def listen_for_tool_calls(self, path: Path) -> None:
        """Accept the reports of this run's MCP tool server (proxy/cli/mcp_tool_server.py): each
        call the model makes arrives as one JSON line and is queued as a `tool_called` event.
        The socket lives in the run dir (mode 0700): only this user's processes reach it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(16)
        self._tool_socket = sock
        threading.Thread(target=self._accept_tool_calls, args=(sock,), name="cli-tools", daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        """ACP: write one JSON-RPC message (one line), waiting cooperatively while the pipe is full."""
        data = (json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        if not self._write(memoryview(data)):
            raise BrokenPipeError("the gemini process no longer reads its input")

    def feed(self, text: str, files: list[tuple[str, bytes]] = ()) -> None:
        """Put the request's files in the workspace, then send the prompt and close stdin."""
        self.used = True
        self.handed_at = time.perf_counter()
        for name, data in files:
            (self.workspace / name).write_bytes(data)
        # A writer of its own: a large prompt fills the pipe until the CLI reads it.
        threading.Thread(target=self._write_stdin, args=(text.encode("utf-8"),), daemon=True).start()

    def next_event(self, timeout: float) -> dict[str, Any] | object | None:
        """The next stdout event, EOF once stdout has ended, or None after `timeout` seconds."""
        try:
            return self._events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def finish(self, timeout: float = 5.0) -> int | None:
        """Wait for the process to exit after its stdout ended; read the stderr tail."""
        if self.proc is not None and self.returncode is None:
            try:
                self.returncode = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.stderr_tail = self._stderr_tail()
        return self.returncode

    def waiting(self) -> bool:
        """Spawned, not used, not closed, alive and silent: fit to be handed a request (warm pool)."""
        proc = self.proc
        return (proc is not None and not self._closed and not self.used and self._stdin_fd is not None
                and self._events.empty() and proc.poll() is None)

    def ready(self) -> bool:
        """The CLI has finished its initialisation and waits: it read the primer (headless), or
        answered `initialize` (ACP)."""
        if self.acp:
            return self.ahead_done.is_set() if self.ahead else self.initialized.is_set()
        with self._stdin_lock:
            if self._stdin_fd is None:
                return False
            pending = array.array("i", [0])
            try:
                fcntl.ioctl(self._stdin_fd, termios.FIONREAD, pending)
            except OSError:
                return False
            return pending[0] == 0

    def stdout_pending(self) -> int:
        """Bytes the CLI wrote to stdout that the reader has not taken from the pipe yet."""
        proc = self.proc
        pending = array.array("i", [0])
        try:
            fcntl.ioctl(proc.stdout.fileno(), termios.FIONREAD, pending)  # type: ignore[union-attr]
        except (OSError, ValueError, AttributeError):
            return 0
        return pending[0]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def close(self) -> None:
        """Kill the process group, reap it, remove the run's files. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_group()
        except Exception:  # noqa: BLE001 - close() must not raise
            log.exception("stopping gemini process group failed")
        if self._tool_socket is not None:
            try:
                self._tool_socket.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
            except OSError:
                pass
            self._tool_socket.close()
        if not self.stderr_tail:
            self.stderr_tail = self._stderr_tail()
        shutil.rmtree(self.dir, ignore_errors=True)
        with _live_lock:
            _live_runs.discard(self)
        for callback in self.on_close:
            try:
                callback()
            except Exception:  # noqa: BLE001
                log.exception("run close callback failed")

    # -- internals --------------------------------------------------------------

    def _write(self, view: memoryview) -> bool:
        """Write all of `view` to stdin, waiting (cooperatively) while the pipe is full; False if
        the CLI is gone or the run closed first."""
        try:
            while view and self._stdin_fd is not None:
                select.select([], [self._stdin_fd], [], 1.0)
                with self._stdin_lock:  # close() must not recycle the fd under this write
                    if self._stdin_fd is None:
                        break
                    try:
                        view = view[os.write(self._stdin_fd, view):]
                    except BlockingIOError:
                        continue
        except (OSError, ValueError, TypeError):
            return False  # the CLI is gone (or closing); its exit code tells why
        return not view

    def _write_stdin(self, data: bytes) -> None:
        """Write all of `data`, then close stdin (headless: EOF ends the prompt)."""
        try:
            self._write(memoryview(data))
        finally:
            self._close_stdin()
            # Under gevent (26), os.close() of a pipe is deferred until the event loop next polls,
            # which may be a heartbeat away when nothing else happens: the CLI would see EOF, and
            # start answering, only then (measured: +0.5 s per request with a 0.5 s heartbeat).
            # A timer, however short, makes the loop poll now; sleep(0) would not.
            time.sleep(0.001)

    def _accept_tool_calls(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed with the run
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while not data.endswith(b"\n") and len(data) < 16 * 1024 * 1024:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    continue
            try:
                report = json.loads(data)
            except ValueError:
                continue
            if isinstance(report, dict):
                self._events.put({"type": TOOL_CALLED, "name": report.get("name"),
                                  "arguments": report.get("arguments")})

    def _close_stdin(self) -> None:
        with self._stdin_lock:
            fd, self._stdin_fd = self._stdin_fd, None
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    # The CLI prints some plain text even in stream-json mode; it is not an event.
                    log.debug("non-JSON line from gemini: %r", line[:200])
                    continue
                if not isinstance(event, dict):
                    continue
                if self.acp and "method" not in event and self._kept_aside(event):
                    continue
                if self.acp and not self.used and "id" not in event:
                    continue  # notifications about the session opened ahead (its commands, say)
                self._events.put(event)
        except (OSError, ValueError):
            pass
        finally:
            self._events.put(EOF)
            # Wake whoever waits for answers that will not come.
            self.initialized.set()
            self.ahead_done.set()

    def _kept_aside(self, answer: dict[str, Any]) -> bool:
        """ACP answers to what the run sent on its own (`initialize`, the requests sent ahead)
        are kept on the run, not queued as events; a failed `initialize` is queued as well."""
        answer_id = answer.get("id")
        if answer_id == ACP_INITIALIZE_ID:
            self.acp_capabilities = answer.get("result") or {}
            if not self.ahead or "error" in answer:
                self.ready_at = time.monotonic()
                self.ahead_done.set()
            self.initialized.set()
            if "error" in answer:
                return False
            for message in self.ahead:
                try:
                    self.send(message)
                except BrokenPipeError:
                    self.ahead_done.set()
            return True
        if any(message.get("id") == answer_id for message in self.ahead):
            self.ahead_answers[answer_id] = answer
            if len(self.ahead_answers) == len(self.ahead):
                self.ready_at = time.monotonic()
                self.ahead_done.set()
            return True
        return False

    def _group_alive(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _stop_group(self) -> None:
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid  # a new session: the leader's pid is the group id
        if self.answered:
            # A whole answer was read: let the CLI end as it would on its own (stdin closed), so that
            # its exit code says how it ended; the reply has been sent, nobody waits for this.
            self._close_stdin()
            try:
                proc.wait(timeout=OWN_EXIT_GRACE)
            except subprocess.TimeoutExpired:
                pass
        # Signal before reaping: an unreaped leader keeps the group id from being reused.
        if self._group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + self.kill_grace
            while time.monotonic() < deadline:
                try:
                    proc.wait(timeout=min(0.05, self.kill_grace))
                except subprocess.TimeoutExpired:
                    continue
                if not self._group_alive(pgid):
                    break
                time.sleep(0.02)
            if self._group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
        try:
            self.returncode = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("gemini pid %s survived SIGKILL", proc.pid)
        if self._reader is not None:
            self._reader.join(timeout=1)
        self._close_stdin()
        try:
            if proc.stdout:
                proc.stdout.close()
        except OSError:
            pass

    def _stderr_tail(self, limit: int = 4000) -> str:
        try:
            with open(self.stderr_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""
