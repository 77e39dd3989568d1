"""Checks of the deployment files under deploy/.

Real tools, no skipping: nginx, logrotate and systemd-analyze must be
installed (CI: `apt-get install -y nginx logrotate`; systemd-analyze comes
with the `systemd` package). Everything binds to 127.0.0.1 only and every
wait is bounded.
"""

from __future__ import annotations

import fnmatch
import http.client
import os
import plistlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nginx_server import (  # noqa: E402
    LISTEN_RE,
    NGINX_CONF,
    UPSTREAM_RE,
    find_nginx,
    free_port,
    nginx_test_config,
    render_site_conf,
    start_nginx,
    write_main_conf,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "gemini-proxy.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "env.example"
PLIST = DEPLOY / "launchd" / "com.user.gemini-proxy.plist"
LOGROTATE = DEPLOY / "logrotate" / "gemini-proxy"
NEWSYSLOG = DEPLOY / "newsyslog" / "gemini-proxy.conf"

DEFAULT_REQUEST_TIMEOUT = 300  # PROXY_REQUEST_TIMEOUT default
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def _which(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    assert path, f"{name} is not installed (CI must apt-get install it; this test does not skip)"
    return path


# ---------------------------------------------------------------------------
# graceful_timeout: from gunicorn.conf.py when it exists, else the documented rule


@pytest.fixture(scope="module")
def graceful_timeout(tmp_path_factory) -> float:
    """gunicorn's graceful_timeout with default settings.

    Read from the real gunicorn.conf.py (run in a subprocess with a clean
    PROXY_* environment) so the deploy files are checked against what the app
    actually uses; falls back to the documented PROXY_REQUEST_TIMEOUT + 15
    only while gunicorn.conf.py does not exist yet.
    """
    documented = DEFAULT_REQUEST_TIMEOUT + 15
    conf = ROOT / "gunicorn.conf.py"
    if not conf.exists():
        return float(documented)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "GUNICORN_"))}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path_factory.mktemp("prom"))
    code = "import runpy, sys\nns = runpy.run_path('gunicorn.conf.py')\nprint(float(ns['graceful_timeout']))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"could not read graceful_timeout from gunicorn.conf.py:\n{out.stderr}"
    value = float(out.stdout.strip().splitlines()[-1])
    assert value >= DEFAULT_REQUEST_TIMEOUT, "graceful_timeout should cover the request deadline"
    return max(value, float(documented))


# ---------------------------------------------------------------------------
# launchd plist


def test_plist_parses_and_runs_gunicorn_from_venv(graceful_timeout):
    with PLIST.open("rb") as f:
        plist = plistlib.load(f)  # also rejects malformed XML (e.g. "--" in a comment)
    assert plist["Label"] == "com.user.gemini-proxy"
    args = plist["ProgramArguments"]
    assert args[0] == "/Users/YOUR_USERNAME/gemini-proxy/.venv/bin/gunicorn"
    assert args[1:] == ["-c", "gunicorn.conf.py", "wsgi:app"]
    assert plist["WorkingDirectory"] == "/Users/YOUR_USERNAME/gemini-proxy"
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] is True
    env = plist["EnvironmentVariables"]
    assert "/opt/homebrew/bin" in env["PATH"].split(":")
    assert env["BIND_ADDRESS"] == "127.0.0.1"
    assert env["PORT"] == "8765"
    assert "GOOGLE_CLOUD_PROJECT" in env
    assert all(isinstance(v, str) for v in env.values()), "launchd env values must be strings"
    assert isinstance(plist["ExitTimeOut"], int)
    assert plist["ExitTimeOut"] > graceful_timeout
    for key in ("StandardOutPath", "StandardErrorPath"):
        path = plist[key]
        assert path.startswith("/Users/YOUR_USERNAME/Library/Logs/gemini-proxy/"), path
        assert not path.startswith("/tmp")
    # launchd expands neither ~ nor $VARS
    for value in [*args, plist["WorkingDirectory"], *env.values(), plist["StandardOutPath"]]:
        assert "~" not in value and "$" not in value, value


def test_newsyslog_rule_matches_plist_log_paths():
    with PLIST.open("rb") as f:
        plist = plistlib.load(f)
    rules = [
        line.split()
        for line in NEWSYSLOG.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(rules) == 1, rules
    path, owner, mode, count, size, when, flags = rules[0][:7]
    assert path.startswith("/"), "newsyslog does not expand ~: path must be absolute"
    assert "~" not in path
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert fnmatch.fnmatch(plist[key], path), (plist[key], path)
    assert ":" in owner
    assert re.fullmatch(r"[0-7]{3}", mode)
    assert int(count) >= 1 and int(size) > 0 and when == "*"
    assert "G" in flags, "a glob needs the G flag"
    assert "J" in flags  # bzip2, as the original rule
    assert "N" in flags, "no pid file: N, or newsyslog signals syslogd"


# ---------------------------------------------------------------------------
# systemd unit


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Minimal unit-file parser (keys may repeat, so values are lists)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(s|sec|min|m)?", value.strip())
    assert m, f"unsupported timespan in test: {value!r}"
    return float(m[1]) * (60 if m[2] in ("min", "m") else 1)


def systemd_verify(unit_text: str, tmp_path: Path, name: str = "gemini-proxy.service") -> list[str]:
    """Run `systemd-analyze verify` on a copy; return the lines that are real problems.

    The copy's ExecStart points at /bin/true (keeping the arguments) because
    /opt/gemini-proxy/.venv/bin/gunicorn does not exist here and verify would
    otherwise report "is not executable". Nothing else is changed, so unknown
    keys/sections and unparsable values in the real unit are still reported.
    """
    copy_text, n = re.subn(
        r"^ExecStart=/opt/gemini-proxy/\.venv/bin/gunicorn\b",
        "ExecStart=/bin/true",
        unit_text,
        flags=re.MULTILINE,
    )
    assert n == 1, "expected exactly one ExecStart=/opt/gemini-proxy/.venv/bin/gunicorn line"
    d = tmp_path / "units"
    d.mkdir(exist_ok=True)
    unit = d / name
    unit.write_text(copy_text)
    out = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=d,
    )
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    problems = [
        ln
        for ln in lines
        if name in ln or re.search(r"Unknown|Invalid|Failed to parse|ignoring|not executable|Missing", ln, re.I)
    ]
    if out.returncode != 0 and not problems:
        problems = [f"systemd-analyze verify exited {out.returncode}", *lines]
    return problems


def test_systemd_analyze_is_installed():
    assert os.access(SYSTEMD_ANALYZE, os.X_OK), "systemd-analyze missing (Debian package: systemd)"


def test_systemd_unit_verifies_cleanly(tmp_path):
    problems = systemd_verify(UNIT.read_text(), tmp_path)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    "good, bad",
    [
        ("KillMode=mixed", "KilMode=mixed"),  # typo'd key
        ("KillMode=mixed", "KillMode=mixd"),  # bad value
        ("TimeoutStopSec=330", "TimeoutStopSec=33O"),  # bad timespan
        ("[Install]", "[Instal]"),  # unknown section
    ],
)
def test_systemd_verify_check_catches_typos(tmp_path, good, bad):
    """The verify check above is real: a typo in the unit makes it fail."""
    text = UNIT.read_text()
    # replace the directive line itself, not a mention in a comment
    broken, n = re.subn(rf"^{re.escape(good)}$", bad, text, count=1, flags=re.MULTILINE)
    assert n == 1, good
    problems = systemd_verify(broken, tmp_path)
    assert problems, f"systemd-analyze did not flag {bad!r}"


def test_systemd_unit_settings(graceful_timeout):
    unit = parse_unit(UNIT.read_text())
    svc = unit["Service"]

    def one(key: str) -> str:
        assert key in svc, f"[Service] lacks {key}="
        assert len(svc[key]) == 1, f"{key}= given more than once"
        return svc[key][0]

    assert one("User") == "gemini-proxy"
    assert one("Group") == "gemini-proxy"
    assert one("WorkingDirectory") == "/opt/gemini-proxy"
    assert one("EnvironmentFile") == "-/etc/gemini-proxy/env"
    assert one("ExecStart") == "/opt/gemini-proxy/.venv/bin/gunicorn -c gunicorn.conf.py wsgi:app"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("KillMode") == "mixed"
    assert _seconds(one("TimeoutStopSec")) > graceful_timeout
    assert one("Restart") == "on-failure"
    assert one("PrivateTmp") == "yes"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") == "read-only"
    assert one("StandardOutput") == "journal"
    assert int(one("LimitNOFILE")) >= 4096
    # node (the gemini CLI) needs W+X memory for its JIT
    assert svc.get("MemoryDenyWriteExecute", ["no"]) == ["no"]

    runtime_dirs = " ".join(svc["RuntimeDirectory"]).split()
    assert "gemini-proxy" in runtime_dirs
    assert svc.get("StateDirectory") == ["gemini-proxy"]
    env = dict(e.split("=", 1) for line in svc["Environment"] for e in line.split())
    for var in ("PROMETHEUS_MULTIPROC_DIR", "PROXY_RUN_DIR"):
        path = env[var]
        assert path.startswith("/run/gemini-proxy/"), (var, path)
        # the directory must be created by RuntimeDirectory= (ProtectSystem=strict)
        assert path.removeprefix("/run/") in runtime_dirs, (var, path, runtime_dirs)
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_env_example_is_a_valid_environment_file():
    known = {
        "BIND_ADDRESS", "PORT", "WORKERS", "WORKER_CONNECTIONS", "GEMINI_BIN",
        "PROXY_REQUEST_TIMEOUT", "PROXY_FIRST_TOKEN_TIMEOUT", "PROXY_API_KEYS",
        "PROXY_API_KEYS_FILE", "PROXY_GEMINI_CONFIG", "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS",
        "PROMETHEUS_MULTIPROC_DIR", "PROXY_RUN_DIR", "GUNICORN_TIMEOUT", "LOG_LEVEL", "ACCESS_LOG",
    }  # fmt: skip
    text = ENV_EXAMPLE.read_text()
    active = {}
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S*)", s)
        assert m, f"not a plain KEY=value line: {line!r}"
        active[m[1]] = m[2]
    assert set(active) <= known, set(active) - known
    assert active["BIND_ADDRESS"] == "127.0.0.1"
    assert active["PORT"] == "8765"
    assert active["PROXY_REQUEST_TIMEOUT"] == str(DEFAULT_REQUEST_TIMEOUT)
    # the unit owns these two; an env-file value would override it
    assert "PROMETHEUS_MULTIPROC_DIR" not in active and "PROXY_RUN_DIR" not in active
    for var in known:
        assert var in text, f"env.example does not document {var}"


# ---------------------------------------------------------------------------
# logrotate


def _logrotate_debug(conf_text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    logdir = tmp_path / "log"
    logdir.mkdir(exist_ok=True)
    (logdir / "access.log").write_text("x\n")
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    text = conf_text.replace("/var/log/gemini-proxy/", f"{logdir}/")
    # the service user does not exist here; logrotate -d fails on unknown
    # users (in `su` and `create`)
    text = text.replace("gemini-proxy gemini-proxy", f"{user} {user}")
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text)
    conf.chmod(0o644)  # logrotate ignores group/world-writable configs
    return subprocess.run(
        [_which("logrotate"), "-d", "-f", "-s", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_logrotate_config_is_accepted(tmp_path):
    text = LOGROTATE.read_text()
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    for directive in ("rotate 7", "compress", "delaycompress", "missingok", "notifempty", "copytruncate"):
        assert re.search(rf"^\s*{directive}\s*$", body, re.M), directive
    assert re.search(r"^\s*(daily|maxsize|size)\b", body, re.M)
    out = _logrotate_debug(text, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "error:" not in out.stderr.lower(), out.stderr
    assert "copying" in out.stderr.lower() or "copytruncate" in out.stderr.lower(), out.stderr


def test_logrotate_usr1_variant_is_accepted(tmp_path):
    """The commented gunicorn-log-file variant also parses once uncommented."""
    lines = LOGROTATE.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("# /var/log/gemini-proxy/"))
    variant = "\n".join(re.sub(r"^# ?", "", ln) for ln in lines[start:] if ln.startswith("#"))
    assert "postrotate" in variant and "USR1" in variant and "--kill-who=main" in variant
    out = _logrotate_debug(variant + "\n", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "error:" not in out.stderr.lower(), out.stderr


def test_logrotate_check_catches_typos(tmp_path):
    out = _logrotate_debug(LOGROTATE.read_text().replace("    delaycompress", "    delaycompres"), tmp_path)
    assert out.returncode != 0 or "error:" in out.stderr.lower()


# ---------------------------------------------------------------------------
# nginx: static structure


def nginx_tokens(text: str):
    """Tokens of an nginx config: words, quoted strings, '{', '}', ';' (comments dropped)."""
    for m in re.finditer(r'#[^\n]*|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|[{};]|[^\s{};#"\']+', text):
        tok = m.group(0)
        if not tok.startswith("#"):
            yield tok


def nginx_parse(text: str) -> list:
    """Nested list of (name, args, children|None)."""
    stack: list[list] = [[]]
    words: list[str] = []
    for tok in nginx_tokens(text):
        if tok == ";":
            stack[-1].append((words[0], words[1:], None))
            words = []
        elif tok == "{":
            block: list = []
            stack[-1].append((words[0], words[1:], block))
            stack.append(block)
            words = []
        elif tok == "}":
            assert not words, f"dangling words {words}"
            stack.pop()
            assert stack, "unbalanced }"
        else:
            words.append(tok)
    assert len(stack) == 1 and not words, "unbalanced config"
    return stack[0]


def _directives(block: list, name: str) -> list[list[str]]:
    return [args for n, args, _ in block if n == name]


def _block(block: list, name: str, *args: str) -> list:
    found = [children for n, a, children in block if n == name and a == list(args) and children is not None]
    assert len(found) == 1, (name, args)
    return found[0]


def _timeout_seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)?", v)
    assert m, v
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m[2]]


def test_nginx_conf_structure():
    tree = nginx_parse(NGINX_CONF.read_text())
    # includable from a stock http {} block
    assert {name for name, _, _ in tree} == {"upstream", "server"}

    upstream = _block(tree, "upstream", "gemini_proxy")
    assert _directives(upstream, "server")[0][0] == "127.0.0.1:8765"
    assert len(_directives(upstream, "server")) == 1
    assert _directives(upstream, "keepalive"), "upstream keepalive pool"

    server = _block(tree, "server")
    assert _directives(server, "listen") == [["80"]]
    assert _directives(server, "client_max_body_size") == [["25m"]]

    loc = _block(server, "location", "/")

    def one(name: str) -> list[str]:
        vals = _directives(loc, name)
        assert len(vals) == 1, (name, vals)
        return vals[0]

    assert one("proxy_pass") == ["http://gemini_proxy"]
    assert one("proxy_http_version") == ["1.1"]
    assert one("proxy_buffering") == ["off"]
    assert one("proxy_cache") == ["off"]
    assert one("gzip") == ["off"]
    assert one("proxy_ignore_client_abort") == ["off"]
    assert _timeout_seconds(one("proxy_read_timeout")[0]) > DEFAULT_REQUEST_TIMEOUT
    assert _timeout_seconds(one("proxy_send_timeout")[0]) > 0
    headers = {args[0].lower(): args[1] for args in _directives(loc, "proxy_set_header")}
    assert headers["connection"] == '""'
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-forwarded-proto"] == "$scheme"
    assert "x-real-ip" in headers and "x-forwarded-host" in headers
    assert "x-request-id" in headers

    # every location that proxies uses HTTP/1.1 + empty Connection (keepalive pool)
    for name, args, children in server:
        if name == "location" and _directives(children, "proxy_pass"):
            assert _directives(children, "proxy_http_version") == [["1.1"]], args
            hdrs = {a[0].lower(): a[1] for a in _directives(children, "proxy_set_header")}
            assert hdrs.get("connection") == '""', args


def test_render_substitutes_exactly_the_marked_lines():
    text = NGINX_CONF.read_text()
    assert len(LISTEN_RE.findall(text)) == 1
    assert len(UPSTREAM_RE.findall(text)) == 1
    rendered = render_site_conf(12345, 23456)
    # only those two lines differ
    diff = [(a, b) for a, b in zip(text.splitlines(), rendered.splitlines(), strict=True) if a != b]
    assert len(diff) == 2, diff
    assert "listen 127.0.0.1:12345;" in rendered
    assert "server 127.0.0.1:23456 max_fails=1 fail_timeout=5s;" in rendered
    with pytest.raises(ValueError):
        render_site_conf(1, 2, text=text.replace("listen 80;", "listen 8080;"))


def test_nginx_t_accepts_conf(tmp_path):
    prefix = tmp_path / "ngx"
    site = prefix / "site.conf"
    prefix.mkdir()
    site.write_text(render_site_conf(free_port()))
    out = nginx_test_config(write_main_conf(prefix, site), prefix)
    assert out.returncode == 0, out.stderr
    assert "syntax is ok" in out.stderr and "test is successful" in out.stderr, out.stderr
    assert "[warn]" not in out.stderr and "[emerg]" not in out.stderr, out.stderr


def test_nginx_t_check_catches_typos(tmp_path):
    prefix = tmp_path / "ngx"
    site = prefix / "site.conf"
    prefix.mkdir()
    broken = NGINX_CONF.read_text().replace("proxy_buffering off;", "proxy_bufering off;")
    site.write_text(render_site_conf(free_port(), text=broken))
    out = nginx_test_config(write_main_conf(prefix, site), prefix)
    assert out.returncode != 0
    assert "proxy_bufering" in out.stderr


# ---------------------------------------------------------------------------
# nginx: live, in front of a slow streaming upstream


class SlowUpstream:
    """127.0.0.1 HTTP/1.1 server streaming SSE in chunks, paced by the test."""

    def __init__(self):
        self.release = threading.Event()  # lets the stream finish
        self.first_sent = threading.Event()
        self.finished = threading.Event()
        self.client_gone = threading.Event()  # a write to nginx failed
        self.requests: list[dict] = []
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _chunk(self, data: bytes):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def do_GET(self):
                up.requests.append({"path": self.path, "headers": dict(self.headers)})
                body = b"ok\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                up.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    self._chunk(b'data: {"n": 1}\n\n')
                    up.first_sent.set()
                    deadline = time.monotonic() + 15
                    while not up.release.is_set() and time.monotonic() < deadline:
                        # heartbeat comment while "the CLI is silent"
                        self._chunk(b": ping\n\n")
                        up.release.wait(0.2)
                    self._chunk(b'data: {"n": 2}\n\n')
                    self._chunk(b"data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    up.finished.set()
                except (BrokenPipeError, ConnectionResetError):
                    up.client_gone.set()
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def upstream():
    up = SlowUpstream()
    yield up
    up.close()


@pytest.fixture
def nginx(upstream, tmp_path):
    with start_nginx(upstream.port, tmp_path) as ngx:
        yield ngx


def _connect(ngx) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", ngx.port, timeout=10)


def test_stream_is_not_buffered_by_nginx(nginx, upstream):
    conn = _connect(nginx)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=b'{"stream": true}',
            headers={"Content-Type": "application/json", "X-Request-Id": "req-abc-123"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type", "").startswith("text/event-stream")
        assert resp.getheader("Content-Encoding") is None
        # First event arrives through nginx while the upstream is still open
        # (it only finishes after `release`): nginx is not buffering.
        first = resp.readline()
        assert first == b'data: {"n": 1}\n'
        assert not upstream.finished.is_set()
        assert resp.readline() == b"\n"
        # the heartbeats come through one by one too
        assert resp.readline() == b": ping\n"
        assert not upstream.finished.is_set()
        upstream.release.set()
        rest = resp.read()
        assert rest.endswith(b'data: {"n": 2}\n\ndata: [DONE]\n\n'), rest[-200:]
        assert upstream.finished.wait(5)
    finally:
        conn.close()

    hdrs = {k.lower(): v for k, v in upstream.requests[0]["headers"].items()}
    assert upstream.requests[0]["body"] == b'{"stream": true}'
    assert hdrs["x-request-id"] == "req-abc-123"  # the client's id is kept
    assert hdrs["x-forwarded-for"] == "127.0.0.1"
    assert hdrs["x-real-ip"] == "127.0.0.1"
    assert hdrs["x-forwarded-proto"] == "http"
    assert hdrs.get("connection", "").lower() != "close"  # HTTP/1.1 keepalive upstream


def test_request_id_generated_when_absent(nginx, upstream):
    conn = _connect(nginx)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"ok\n"
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"ok\n"
    finally:
        conn.close()
    models = [r for r in upstream.requests if r["path"] == "/v1/models"][0]
    rid = {k.lower(): v for k, v in models["headers"].items()}["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid), rid  # nginx's $request_id


def test_metrics_reachable_from_localhost(nginx):
    conn = _connect(nginx)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    finally:
        conn.close()


def test_client_abort_reaches_upstream(nginx, upstream):
    """proxy_ignore_client_abort off: a client hanging up closes the upstream
    connection, so the proxy would notice and kill the CLI."""
    sock = socket.create_connection(("127.0.0.1", nginx.port), timeout=10)
    try:
        body = b'{"stream": true}'
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert upstream.first_sent.wait(10)
        got = b""
        deadline = time.monotonic() + 10
        while b'data: {"n": 1}' not in got and time.monotonic() < deadline:
            got += sock.recv(4096)
        assert b'data: {"n": 1}' in got
    finally:
        sock.close()
    assert upstream.client_gone.wait(10), "upstream never saw the client go away"
    assert not upstream.finished.is_set()
    # nginx says why it closed the upstream side (info level)
    assert "client prematurely closed connection, so upstream connection is closed too" in (nginx.error_log.read_text())


def test_body_limit_is_25m(nginx):
    conn = _connect(nginx)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(25 * 1024 * 1024 + 1))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
    finally:
        conn.close()


def test_nginx_server_stop_is_idempotent(upstream, tmp_path):
    ngx = start_nginx(upstream.port, tmp_path)
    pid = ngx.proc.pid
    port = ngx.port
    assert (ngx.prefix / "nginx.pid").read_text().strip() == str(pid)
    ngx.stop()
    ngx.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_find_nginx():
    assert os.access(find_nginx(), os.X_OK)
