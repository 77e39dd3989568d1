#!/usr/bin/env python3
"""Developer tool: run the real `gemini` CLI once against tests/mock_gemini_api.py.

Builds a throw-away dir:  <tmp>/home/.gemini/settings.json (GEMINI_CLI_HOME=<tmp>/home),
<tmp>/work (cwd, empty), <tmp>/system.md (GEMINI_SYSTEM_MD), <tmp>/tmp (TMPDIR); runs
`gemini -m gemini-2.5-flash -o stream-json --approval-mode default` with the prompt on
stdin, and prints stdout events, stderr, exit code, timings and the request body(ies)
the mock received.

    python tests/drive_real_cli.py --prompt hi
    python tests/drive_real_cli.py --prompt hi --status 429 --retry-after 17
    python tests/drive_real_cli.py --prompt 'look @IMG' --image      # IMG -> img-<rand>.png
    python tests/drive_real_cli.py --prompt hi --warm 3               # "\\n" at spawn, rest after 3 s
    python tests/drive_real_cli.py --prompt hi --set general.maxAttempts=2 --keep

The CLI binary: $GEMINI_BIN, else /tmp/gcli/node_modules/.bin/gemini, else `gemini` on PATH.
Every wait is bounded; the CLI runs in its own session and its process group is killed
at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mock_gemini_api import MockGeminiApi  # noqa: E402

DEFAULT_SETTINGS: dict[str, Any] = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "general": {"maxAttempts": 1, "sessionRetention": {"enabled": False}},
    "tools": {"core": []},
    "experimental": {"enableAgents": False},
    "context": {"includeDirectoryTree": False},
}
DEFAULT_ARGS = ["-m", "gemini-2.5-flash", "-o", "stream-json", "--approval-mode", "default"]
SYSTEM_MD = "You are a helpful assistant. Be brief."
# 1x1 transparent PNG
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def gemini_bin() -> str:
    env = os.environ.get("GEMINI_BIN")
    if env:
        return env
    p = "/tmp/gcli/node_modules/.bin/gemini"
    if os.path.exists(p):
        return p
    return shutil.which("gemini") or "gemini"


def set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    if value is _DELETE:
        d.pop(keys[-1], None)
    else:
        d[keys[-1]] = value


_DELETE = object()


@dataclass
class Sandbox:
    root: Path
    home: Path  # GEMINI_CLI_HOME
    work: Path  # cwd
    tmp: Path  # TMPDIR
    system_md: Path

    @classmethod
    def create(cls, settings: dict | None = DEFAULT_SETTINGS, system_md: str = SYSTEM_MD,
               parent: str | None = None) -> Sandbox:
        root = Path(tempfile.mkdtemp(prefix="gcli-drive-", dir=parent))
        sb = cls(root, root / "home", root / "work", root / "tmp", root / "system.md")
        for d in (sb.home / ".gemini", sb.work, sb.tmp):
            d.mkdir(parents=True)
        if settings is not None:
            (sb.home / ".gemini" / "settings.json").write_text(json.dumps(settings, indent=2))
        sb.system_md.write_text(system_md)
        return sb

    def env(self, base_url: str | None, api_key: str | None = "test-key",
            extra: dict[str, str | None] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GEMINI_", "GOOGLE_", "CLOUDSDK_"))}
        env.update({
            "GEMINI_CLI_HOME": str(self.home),
            "GEMINI_CLI_NO_RELAUNCH": "true",
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
            "GEMINI_SYSTEM_MD": str(self.system_md),
            "TMPDIR": str(self.tmp),
        })
        if base_url:
            env["GOOGLE_GEMINI_BASE_URL"] = base_url
        if api_key:
            env["GEMINI_API_KEY"] = api_key
        for k, v in (extra or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RunResult:
    rc: int | None
    stdout: str
    stderr: str
    events: list[dict]
    non_json_stdout: list[str]
    t_first_assistant: float | None  # seconds from spawn (or from stdin close if warm)
    t_first_stdout: float | None
    t_exit: float  # seconds from spawn
    timed_out: bool
    requests: list = field(default_factory=list)  # RecordedRequest list (this run only)


def run_cli(mock: MockGeminiApi | None, sb: Sandbox, prompt: str, *, args: list[str] | None = None,
            env: dict[str, str] | None = None, warm_s: float | None = None,
            timeout: float = 60.0) -> RunResult:
    """Run the CLI once. warm_s: write "\\n" at spawn, sleep warm_s, then write prompt and
    close stdin; t_first_assistant is then measured from the close."""
    n0 = len(mock.requests) if mock else 0
    cmd = [gemini_bin(), *(DEFAULT_ARGS if args is None else args)]
    env = env if env is not None else sb.env(mock.base_url if mock else None)
    lines: list[tuple[float, str]] = []
    err_chunks: list[bytes] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=sb.work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)

    def read_out() -> None:
        for raw in proc.stdout:  # type: ignore[union-attr]
            lines.append((time.monotonic(), raw.decode("utf-8", "replace")))

    def read_err() -> None:
        for raw in iter(lambda: proc.stderr.read1(65536), b""):  # type: ignore[union-attr]
            err_chunks.append(raw)

    th = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for t in th:
        t.start()
    t_ref = t0
    timed_out = False
    try:
        assert proc.stdin is not None
        try:
            if warm_s is not None:
                proc.stdin.write(b"\n")
                proc.stdin.flush()
                time.sleep(warm_s)
            proc.stdin.write(prompt.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        if warm_s is not None:
            t_ref = time.monotonic()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        t_exit = time.monotonic() - t0
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for t in th:
            t.join(timeout=5)
    events, other = [], []
    t_first_assistant = None
    for ts, line in lines:
        s = line.strip()
        if not s:
            continue
        try:
            ev = json.loads(s)
        except ValueError:
            other.append(s)
            continue
        events.append(ev)
        if t_first_assistant is None and ev.get("type") == "message" and ev.get("role") == "assistant":
            t_first_assistant = ts - t_ref
    return RunResult(
        rc=None if timed_out else proc.returncode,
        stdout="".join(line for _, line in lines),
        stderr=b"".join(err_chunks).decode("utf-8", "replace"),
        events=events,
        non_json_stdout=other,
        t_first_assistant=t_first_assistant,
        t_first_stdout=(lines[0][0] - t0) if lines else None,
        t_exit=t_exit,
        timed_out=timed_out,
        requests=list(mock.requests[n0:]) if mock else [],
    )


def user_texts(body: dict | None) -> list[str]:
    """Text parts of the user turn(s), for quick inspection."""
    out = []
    for c in (body or {}).get("contents", []):
        for p in c.get("parts", []):
            if "text" in p:
                out.append(p["text"])
            elif "inlineData" in p:
                d = p["inlineData"]
                out.append(f"<inlineData {d.get('mimeType')} {len(d.get('data', ''))} b64 chars>")
    return out


def print_result(res: RunResult, show_body: bool = True) -> None:
    print(f"exit code: {res.rc}{' (TIMED OUT, killed)' if res.timed_out else ''}")
    print(f"time to first stdout line: {res.t_first_stdout}")
    print(f"time to first assistant event: {res.t_first_assistant}")
    print(f"time to exit: {res.t_exit:.3f}s")
    print("--- stdout events ---")
    for ev in res.events:
        print(json.dumps(ev))
    for s in res.non_json_stdout:
        print("NON-JSON stdout:", s)
    print("--- stderr ---")
    print(res.stderr.rstrip())
    print("--- requests to mock ---")
    for r in res.requests:
        print(f"{r.method} {r.path} query={r.query} body={len(r.body)} bytes")
        if show_body and r.json is not None:
            print(json.dumps(r.json, indent=1, ensure_ascii=False)[:20000])


def parse_value(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="hi")
    ap.add_argument("--status", type=int)
    ap.add_argument("--error-message")
    ap.add_argument("--retry-after", type=float)
    ap.add_argument("--safety", action="store_true")
    ap.add_argument("--finish-reason", default="STOP")
    ap.add_argument("--chunks", help="JSON list of chunk strings")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a settings key (dotted path), value JSON; KEY=- deletes it")
    ap.add_argument("--no-settings", action="store_true", help="no settings.json at all")
    ap.add_argument("--no-api-key", action="store_true")
    ap.add_argument("--image", action="store_true", help="put img-<rand>.png in cwd; IMG in prompt -> its name")
    ap.add_argument("--warm", type=float, help="write \\n at spawn, the prompt after this many seconds")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir and list its files")
    ap.add_argument("--no-body", action="store_true")
    ap.add_argument("cli_args", nargs="*", help="replace the default CLI args (after --)")
    a = ap.parse_args(argv)

    settings = json.loads(json.dumps(DEFAULT_SETTINGS))
    for kv in a.set:
        k, _, v = kv.partition("=")
        set_path(settings, k, _DELETE if v == "-" else parse_value(v))
    sb = Sandbox.create(None if a.no_settings else settings)
    prompt = a.prompt
    if a.image:
        name = f"img-{secrets.token_hex(4)}.png"
        (sb.work / name).write_bytes(PNG_1X1)
        prompt = prompt.replace("IMG", name)
    try:
        with MockGeminiApi() as mock:
            mock.configure(
                chunks=json.loads(a.chunks) if a.chunks else None, status=a.status,
                error_message=a.error_message, retry_after_s=a.retry_after, safety_block=a.safety,
                finish_reason=a.finish_reason,
            )
            env = sb.env(mock.base_url, api_key=None if a.no_api_key else "test-key")
            print(f"cmd: {gemini_bin()} {' '.join(a.cli_args or DEFAULT_ARGS)}")
            print(f"prompt: {prompt!r}  sandbox: {sb.root}")
            res = run_cli(mock, sb, prompt, args=a.cli_args or None, env=env, warm_s=a.warm, timeout=a.timeout)
            print_result(res, show_body=not a.no_body)
        if a.keep:
            print("--- files left in sandbox ---")
            for p in sorted(sb.root.rglob("*")):
                print(p.relative_to(sb.root), "" if p.is_dir() else f"({p.stat().st_size} B)")
    finally:
        if not a.keep:
            sb.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
