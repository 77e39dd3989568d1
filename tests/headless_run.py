"""Running a real client or agent headless for a test (tests/test_real_clients.py,
tests/test_agents.py): a clean environment, stdin /dev/null, a process group of its own, a
bounded wait, and nothing of it left when it returns."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.proxy_server import group_alive, wait_until


def clean_env(tmp_path: Path, home: str, **extra: str) -> dict[str, str]:
    """PATH, an empty HOME of its own, a TMPDIR, plain text output; nothing else of the caller's
    environment (no keys, no proxies, no settings)."""
    home_dir = tmp_path / home
    home_dir.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home_dir),
        "TMPDIR": str(tmp_path),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
        "TERM": "dumb",
    }
    env.update(extra)
    return env


@dataclass
class Ran:
    """How a headless run ended."""

    argv0: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    group_left: bool  # its process group outlived it (checked for a few seconds)
    left_behind: list[int] = field(default_factory=list)  # processes `stragglers` found still alive then
    notes: str = ""  # what the caller adds to `describe()` (a guard's log, say)

    def describe(self) -> str:
        return (f"{self.argv0}: exit {self.returncode} after {self.seconds:.1f} s\n--- stdout\n{self.stdout[-4000:]}"
                f"\n--- stderr\n{self.stderr[-6000:]}" + (f"\n{self.notes}" if self.notes else ""))


def run_headless(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float,
                 stragglers: Callable[[], list[int]] = list) -> Ran:
    """Run `argv` in its own process group, bounded by `timeout` (a test failure past it). Once it
    has exited, its group (and whatever `stragglers` lists: its descendants that left the group)
    must be gone within a few seconds; whatever is left is killed (by pid and by group) before
    this returns."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
        seconds = time.monotonic() - started
        group_gone = wait_until(lambda: not group_alive(proc.pid), 5)
        wait_until(lambda: not stragglers(), 5)
        left_behind = stragglers()
    finally:
        for pid in stragglers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if group_alive(proc.pid):  # e.g. a child it started and left behind
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    ran = Ran(Path(argv[0]).name, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
              seconds, not group_gone, left_behind)
    assert not timed_out, f"{argv[0]} did not finish within {timeout} s:\n{ran.describe()}"
    return ran
