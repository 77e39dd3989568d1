"""CliProcess: one `gemini` process and everything it owns, whichever driver speaks to it.

A process owns a private temp dir (mode 0700) holding the CLI's cwd (`work/`), its CLI home
(`home/`), its TMPDIR (`tmp/`), the system prompt file and the stderr file; its own process
group (a new session), so that killing it reaches every process the CLI started (MCP tool
servers included); and a reader that hands each JSON line of stdout to the driver.
`close()` kills the group (TERM, then KILL after a grace period), reaps the process and
removes the dir; it is idempotent and never raises, so it can run from a generator's
`finally` and `call_on_close` alike.

Written with the standard library only: under gunicorn's gevent worker, subprocess,
threading and queue are monkey-patched, so pipes are read cooperatively and one worker
holds many processes; without gevent the same code uses real threads.
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
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EOF = object()  # handed to the driver when stdout ends
OWN_EXIT_GRACE = 1.5  # seconds a process that answered gets to exit on its own before SIGTERM
OWNER_FILE = "owner"  # in each run dir: {"master", "worker", "pgid"}; read by gunicorn.conf.py

# Every process not yet closed in this worker, so that a worker on its way out can kill them all.
_live: set[CliProcess] = set()
_live_lock = threading.Lock()

# Called first by close_all: whatever starts processes on its own (the pool) stops here, closes
# its processes and says how many requests it cut short.
before_close_all: list[Callable[[], int]] = []


def close_all() -> int:
    """Close every gemini process of this worker (worker shutdown); returns how many requests
    were still being answered."""
    cut = 0
    for hook in list(before_close_all):
        try:
            cut += hook()
        except Exception:  # noqa: BLE001 - the processes must be closed regardless
            log.exception("close_all hook failed")
    with _live_lock:
        processes = list(_live)
    for process in processes:
        process.close()
    return cut + len(processes)


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


class Inbox:
    """What a process (and its MCP server) said for one run, in order, read with a timeout."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def get(self, timeout: float) -> Any:
        """The next item, or None when nothing came within `timeout` seconds."""
        try:
            return self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None


class CliNotRunnable(Exception):
    """The gemini executable could not be started (missing, or not executable)."""


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step: the CLI may read it at any moment (proxy/cli/acp.py)."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


class CliProcess:
    """One gemini process: spawn, write to stdin, hand stdout lines to a driver, close."""

    def __init__(self, run_dir: str, kill_grace: float = 2.0):
        # mode 0700. The name always has the same length (prefix + 8 random characters): the CLI
        # puts paths into every request, so warm and cold runs differ only in those 8.
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
        self.answered = False  # its work is done (set by the driver): close() lets it exit on its own
        self.on_close: list[Callable[[], None]] = []
        self._on_line: Callable[[Any], None] = lambda _: None
        self._reader: threading.Thread | None = None
        self._stdin_fd: int | None = None
        self._stdin_lock = threading.Lock()
        self._closed = False
        for path in (self.workspace, self.home, self.tmp):
            path.mkdir(mode=0o700)
        with _live_lock:
            _live.add(self)

    def spawn(self, gemini_bin: str, args: list[str], system_text: str, on_line: Callable[[Any], None],
              primer: bytes = b"", environ: Mapping[str, str] | None = None) -> None:
        """Start `gemini <args>` with this run's files; every JSON object its stdout prints goes
        to `on_line`, then EOF. `primer` is in the stdin pipe before the CLI starts."""
        write_atomically(self.system_file, system_text)
        self._on_line = on_line
        env = cli_environment(environ)
        env.update({
            "GEMINI_CLI_HOME": str(self.home),
            "GEMINI_SYSTEM_MD": str(self.system_file),
            "TMPDIR": str(self.tmp),
            # One process instead of a relauncher plus child: faster start, clean kills.
            "GEMINI_CLI_NO_RELAUNCH": "true",
            # The workspace is our own dir; headless runs in untrusted dirs exit 55, and untrusted
            # workspaces' settings (a session's own, proxy/cli/acp.py) would be ignored.
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
        })
        stdin_read, self._stdin_fd = os.pipe()
        try:
            if primer:
                os.write(self._stdin_fd, primer)
            os.set_blocking(self._stdin_fd, False)
            with open(self.stderr_file, "wb") as stderr:
                started = time.perf_counter()
                try:
                    self.proc = subprocess.Popen(
                        [gemini_bin, *args], cwd=self.workspace, env=env, stdin=stdin_read, stdout=subprocess.PIPE,
                        stderr=stderr, start_new_session=True, close_fds=True, preexec_fn=_die_with_parent,
                    )
                except (FileNotFoundError, PermissionError) as exc:
                    raise CliNotRunnable(gemini_bin) from exc
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

    def write(self, data: bytes) -> bool:
        """Write all of `data` to stdin, waiting (cooperatively) while the pipe is full; False if
        the CLI is gone or the process closed first."""
        view = memoryview(data)
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

    def close_stdin(self) -> None:
        with self._stdin_lock:
            fd, self._stdin_fd = self._stdin_fd, None
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def finish(self, timeout: float = 5.0) -> int | None:
        """Wait for the process to exit after its stdout ended; read the stderr tail."""
        if self.proc is not None and self.returncode is None:
            try:
                self.returncode = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.stderr_tail = self._stderr_tail()
        return self.returncode

    def alive(self) -> bool:
        return self.proc is not None and not self._closed and self.proc.poll() is None

    def stdin_pending(self) -> int | None:
        """Bytes written to stdin the CLI has not read yet (None: stdin is closed)."""
        with self._stdin_lock:
            return None if self._stdin_fd is None else _pending(self._stdin_fd)

    def stdout_pending(self) -> int:
        """Bytes the CLI wrote to stdout that the reader has not taken from the pipe yet."""
        proc = self.proc
        try:
            return _pending(proc.stdout.fileno()) or 0  # type: ignore[union-attr]
        except (ValueError, AttributeError):
            return 0

    def rss_kb(self) -> int:
        """The CLI process's resident memory (0 when unknown): the pool retires one that grew."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Kill the process group, reap it, remove the run's files. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_group()
        except Exception:  # noqa: BLE001 - close() must not raise
            log.exception("stopping gemini process group failed")
        if not self.stderr_tail:
            self.stderr_tail = self._stderr_tail()
        shutil.rmtree(self.dir, ignore_errors=True)
        with _live_lock:
            _live.discard(self)
        for callback in self.on_close:
            try:
                callback()
            except Exception:  # noqa: BLE001
                log.exception("process close callback failed")

    # -- internals --------------------------------------------------------------

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
                    # The CLI prints some plain text even in stream-json mode (and a login prompt
                    # over ACP): it is never protocol.
                    log.debug("non-JSON line from gemini: %r", line[:200])
                    continue
                if isinstance(event, dict):
                    self._on_line(event)
        except (OSError, ValueError):
            pass
        finally:
            self._on_line(EOF)

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
            # Its work is done: let the CLI end as it would on its own (stdin closed), so that its
            # exit code says how it ended; the reply has been sent, nobody waits for this.
            self.close_stdin()
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
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=1)
        self.close_stdin()
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


def _pending(fd: int) -> int | None:
    pending = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, pending)
    except OSError:
        return None
    return pending[0]
