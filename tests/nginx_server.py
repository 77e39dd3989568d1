"""Run the real deploy/nginx/gemini-proxy.conf in front of a local upstream.

Used by tests/test_deploy_files.py and by end-to-end tests that want to go
through nginx exactly as deployed:

    from tests.nginx_server import start_nginx      # or: from nginx_server import ...

    with start_nginx(upstream_port=gunicorn_port, tmp_path=tmp_path) as ngx:
        requests.get(ngx.base_url + "/healthz")

The shipped config is read and only two lines are rewritten (each must occur
exactly once, uncommented, or this raises):

* ``listen 80;``                      -> ``listen 127.0.0.1:<free port>;``
* ``server 127.0.0.1:8765 ...;`` in the upstream -> ``server 127.0.0.1:<upstream_port> ...;``

Everything else (buffering, timeouts, headers, locations) is the real file.
nginx runs in the foreground (``daemon off``) with its own prefix, pid file,
logs and temp dirs under ``tmp_path``; it binds only 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = REPO_ROOT / "deploy" / "nginx" / "gemini-proxy.conf"

# Uncommented `listen 80;` (optionally with parameters such as default_server).
LISTEN_RE = re.compile(r"^(?P<indent>[ \t]*)listen[ \t]+80(?P<params>[ \t][^;#\n]*)?;", re.MULTILINE)
# Uncommented upstream member `server 127.0.0.1:8765 [params];`.
UPSTREAM_RE = re.compile(r"^(?P<indent>[ \t]*)server[ \t]+127\.0\.0\.1:8765(?P<params>[ \t][^;#\n]*)?;", re.MULTILINE)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def find_nginx() -> str:
    """Path of the nginx binary (Debian puts it in /usr/sbin, often not on PATH)."""
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")
    if not path:
        raise RuntimeError("nginx not found: apt-get install -y nginx")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_site_conf(listen_port: int, upstream_port: int | None = None, text: str | None = None) -> str:
    """The real site config with the listen port (and upstream port) substituted."""
    if text is None:
        text = NGINX_CONF.read_text()
    text, n = LISTEN_RE.subn(lambda m: f"{m['indent']}listen 127.0.0.1:{listen_port}{m['params'] or ''};", text)
    if n != 1:
        raise ValueError(f"{NGINX_CONF}: expected exactly one active 'listen 80;' line, found {n}")
    if upstream_port is not None:
        text, n = UPSTREAM_RE.subn(lambda m: f"{m['indent']}server 127.0.0.1:{upstream_port}{m['params'] or ''};", text)
        if n != 1:
            raise ValueError(f"{NGINX_CONF}: expected exactly one active 'server 127.0.0.1:8765' line, found {n}")
    return text


def write_main_conf(prefix: Path, site_conf: Path) -> Path:
    """A minimal main nginx.conf whose http{} includes site_conf; all state lives in prefix."""
    for sub in ("logs", "client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    user_line = "user root;\n" if os.geteuid() == 0 else ""
    main = prefix / "nginx.conf"
    main.write_text(
        f"""{user_line}daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;

events {{
    worker_connections 256;
}}

http {{
    default_type application/octet-stream;
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;

    include {site_conf};
}}
"""
    )
    return main


def nginx_test_config(main_conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on main_conf; returns the completed process (output in .stderr)."""
    return subprocess.run(
        [find_nginx(), "-t", "-p", str(prefix), "-c", str(main_conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )


class NginxServer:
    """A running nginx (foreground master, started by us); stop() by pid."""

    def __init__(self, upstream_port: int, tmp_path: Path | str):
        self.upstream_port = upstream_port
        self.prefix = Path(tmp_path) / "nginx"
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.base_url = f"http://{self.host}:{self.port}"
        self.site_conf = self.prefix / "gemini-proxy.conf"
        self.site_conf.write_text(render_site_conf(self.port, upstream_port))
        self.main_conf = write_main_conf(self.prefix, self.site_conf)
        self.error_log = self.prefix / "logs" / "error.log"
        self.access_log = self.prefix / "logs" / "access.log"
        self.proc: subprocess.Popen | None = None
        self._stderr_path = self.prefix / "logs" / "stderr.log"

    def start(self) -> NginxServer:
        check = nginx_test_config(self.main_conf, self.prefix)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        stderr = open(self._stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [find_nginx(), "-p", str(self.prefix), "-c", str(self.main_conf)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        finally:
            stderr.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not listen on {self.base_url} within {START_TIMEOUT}s:\n{self.logs()}")
            time.sleep(0.05)

    def logs(self) -> str:
        out = []
        for p in (self._stderr_path, self.error_log):
            if p.exists():
                out.append(f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        """Graceful stop (SIGQUIT to our master pid), SIGKILL after a bound. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGQUIT)
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # The master did not finish in time (e.g. a stream still open):
            # SIGKILL it, then the workers it leaves behind - found as the
            # children of our master's pid, never by process name.
            workers = _children(proc.pid)
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
            for pid in workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        except ProcessLookupError:
            pass

    def __enter__(self) -> NginxServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    """Direct children of pid (Linux /proc), used only to clean up after SIGKILL."""
    kids = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def start_nginx(upstream_port: int, tmp_path: Path | str) -> NginxServer:
    """Start nginx with the real site config in front of 127.0.0.1:upstream_port.

    Returns a started NginxServer; use it as a context manager (or call stop()).
    """
    return NginxServer(upstream_port, tmp_path).start()
