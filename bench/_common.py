"""Helpers shared by the benchmarks (the servers and the mock API come from tests/)."""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

from tests.proxy_server import REAL_GEMINI  # noqa: E402


def need_real_cli() -> None:
    if not REAL_GEMINI.exists():
        sys.exit("the pinned gemini CLI is missing: run `npm ci` first")


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def chat_body(content: str, system: str | None = None, model: str = "gemini-2.5-pro", stream: bool = True) -> bytes:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return json.dumps({"model": model, "messages": messages, "stream": stream}).encode()


def stream_chat(port: int, body: bytes, timeout: float = 60) -> tuple[float, str]:
    """POST a streamed chat request on a fresh connection; (seconds to the first content, all content).

    Plain http.client, so that the client adds as little as possible to what is measured."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        started = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json", "Authorization": "Bearer sk-bench"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
        first = None
        texts = []
        deadline = started + timeout
        while time.perf_counter() < deadline:
            line = response.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                if line == b"data: [DONE]":
                    break
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"error in stream: {event['error']}")
            for choice in event.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    if first is None:
                        first = time.perf_counter() - started
                    texts.append(text)
        if first is None:
            raise RuntimeError("no content in the stream")
        return first, "".join(texts)
    finally:
        conn.close()


def pool_state(port: int) -> dict:
    """The pool's state in /readyz of the worker that answered (`{}` with the pool off)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/readyz")
        return json.loads(conn.getresponse().read()).get("pool") or {}
    finally:
        conn.close()


# -- /proc ------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def children(pid: int) -> list[int]:
    out = []
    for p in all_pids():
        fields = _stat_fields(p)
        if fields and int(fields[1]) == pid and fields[0] != "Z":
            out.append(p)
    return out


def descendants(pid: int) -> list[int]:
    """Live processes whose parent chain leads to `pid` (one /proc scan)."""
    parent = {}
    for p in all_pids():
        fields = _stat_fields(p)
        if fields and fields[0] != "Z":
            parent[p] = int(fields[1])
    out = []
    for p in parent:
        q = parent.get(p)
        for _ in range(64):
            if q is None or q <= 1:
                break
            if q == pid:
                out.append(p)
                break
            q = parent.get(q)
    return out


def group_members(pgid: int) -> list[int]:
    out = []
    for p in all_pids():
        fields = _stat_fields(p)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            out.append(p)
    return out


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _proc_kb(path: str, field: str) -> int:
    """A `<field>: <n> kB` line of a /proc file, in kB (0 if the file or line is not there)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time one process has used so far (0 if gone)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def rss_kb(pid: int) -> int:
    """VmRSS of one process, in kB (0 if gone)."""
    return _proc_kb(f"/proc/{pid}/status", "VmRSS")


def pss_kb(pid: int) -> int:
    """Proportional set size (shared pages split among their users), in kB; 0 if unavailable."""
    return _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss")


def worker_pid(master_pid: int, timeout: float = 10) -> int:
    """The single gunicorn worker of `master_pid` (WORKERS=1)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(master_pid)
        if len(kids) == 1:
            return kids[0]
        time.sleep(0.05)
    raise RuntimeError(f"expected one worker under {master_pid}, found {children(master_pid)}")


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)
