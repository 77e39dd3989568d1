"""Start the real thing for tests and benchmarks: gunicorn, gevent worker, wsgi:app, on 127.0.0.1.

`ProxyServer` runs `gunicorn -c gunicorn.conf.py wsgi:app` exactly as the README does, with
the environment a test chooses, and stops it by pid (TERM, then KILL after a bound).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
FAKE_GEMINI = PROJECT_DIR / "tests" / "fake_gemini" / "gemini"
REAL_GEMINI = PROJECT_DIR / "node_modules" / ".bin" / "gemini"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_key_config(directory: Path) -> Path:
    """A user gemini config dir that selects API-key auth (the key comes from GEMINI_API_KEY)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "settings.json").write_text('{"security": {"auth": {"selectedType": "gemini-api-key"}}}')
    return directory


class ProxyServer:
    def __init__(self, env: dict[str, str] | None = None, workers: int = 1):
        self.root = Path(tempfile.mkdtemp(prefix="proxy-test-"))
        # Kept while the test session runs (logs, records), removed when it ends.
        atexit.register(shutil.rmtree, self.root, True)
        self.run_dir = self.root / "runs"
        self.run_dir.mkdir()
        self.record_dir = self.root / "records"
        self.record_dir.mkdir()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "gunicorn.log"
        base_env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("PROXY_", "GEMINI_", "GOOGLE_", "FAKE_GEMINI_"))
        }
        base_env.update({
            "BIND_ADDRESS": "127.0.0.1",
            "PORT": str(self.port),
            "WORKERS": str(workers),
            "GEMINI_BIN": str(FAKE_GEMINI),
            "GEMINI_API_KEY": "test-key",
            "PROXY_GEMINI_CONFIG": str(api_key_config(self.root / "user-gemini")),
            "PROXY_RUN_DIR": str(self.run_dir),
            "PROXY_HEARTBEAT_INTERVAL": "0.5",
            "PROXY_STATUS_HOLD": "3",
            "PROXY_KILL_GRACE": "1",
            "PROXY_MAX_CONCURRENT": "64",
            # Cold runs only unless a test asks for the warm pool (tests/test_pool.py): the other
            # tests count processes, records and run dirs per request.
            "PROXY_POOL_SIZE": "0",
            # The stand-in's headless mode; servers that test ACP (and the real CLI) say `auto`.
            "PROXY_CLI_INTERFACE": "headless",
            "FAKE_GEMINI_RECORD_DIR": str(self.record_dir),
            "PYTHONUNBUFFERED": "1",
        })
        base_env.update(env or {})
        self.env = base_env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> ProxyServer:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=PROJECT_DIR, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base_url + "/v1/models", timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers (e.g. 401 when PROXY_API_KEYS is set)
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def run_dirs(self) -> list[Path]:
        """The run dirs (one per live gemini run) in the server's PROXY_RUN_DIR."""
        return list(self.run_dir.glob("gemini-proxy-*"))

    def request_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if " chat id=" in line]

    def stop(self, timeout: float = 30) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # The master and its workers share the session started for them.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def log_fields(server: ProxyServer, request_id: str, timeout: float = 5) -> dict[str, str]:
    """The key=value fields of the request's log line (waits for it, bounded)."""
    found: list[str] = []

    def look() -> bool:
        found[:] = [line for line in server.request_lines() if f" id={request_id} " in line]
        return bool(found)

    assert wait_until(look, timeout), f"no log line for id={request_id}"
    return dict(item.split("=", 1) for item in found[-1].split(" chat ", 1)[1].split() if "=" in item)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass (bounded in count and time)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return bool(predicate())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes (it holds no resources but its slot).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in process group `pgid`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().split(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def open_chat_stream(port: int, text: str, headers: dict[str, str] | None = None,
                     timeout: float = 15, stream: bool = True) -> socket.socket:
    """Send a chat request (streamed by default) on a raw socket, so that a test can hang up
    when it likes."""
    body = json.dumps({"model": "gemini-cli", "stream": stream,
                       "messages": [{"role": "user", "content": text}]}).encode()
    head = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body))}
    head.update(headers or {})
    request = "POST /v1/chat/completions HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(request.encode() + b"\r\n" + body)
    return sock
