"""Proxy overhead: what the proxy adds to the time to first token, with the stand-in CLI.

Interleaved, N times each: (a) a streamed request through gunicorn (one gevent worker, pool
off, so every request spawns the stand-in cold), timed at the client from sending the
request to the first content chunk; (b) the stand-in run directly with the same argv,
environment layout and stdin ("\\n" + prompt), timed from Popen to its first assistant
event on stdout. The overhead is median(a) - median(b).

    python bench/overhead.py [-n 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import chat_body, header, median, pct, stream_chat

from tests.proxy_server import FAKE_GEMINI, ProxyServer

PROMPT = "say hi"
SYSTEM = "You are a helpful assistant."


def direct_run(root: Path) -> float:
    """Seconds from spawning the stand-in to its first assistant event, laid out as the proxy does."""
    run = Path(tempfile.mkdtemp(prefix="gemini-proxy-", dir=root))
    try:
        for sub in ("work", "home/.gemini", "tmp"):
            (run / sub).mkdir(parents=True)
        (run / "home/.gemini/settings.json").write_text('{"security": {"auth": {"selectedType": "gemini-api-key"}}}')
        (run / "system.md").write_text(SYSTEM)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "FAKE_GEMINI_"))}
        env.update(GEMINI_API_KEY="test-key", GEMINI_CLI_HOME=str(run / "home"),
                   GEMINI_SYSTEM_MD=str(run / "system.md"), TMPDIR=str(run / "tmp"),
                   GEMINI_CLI_NO_RELAUNCH="true", GEMINI_CLI_TRUST_WORKSPACE="true")
        argv = [str(FAKE_GEMINI), "-m", "gemini-2.5-pro", "-o", "stream-json", "--approval-mode", "default"]
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=run / "work", env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.stdin.write(("\n" + PROMPT).encode())
            proc.stdin.close()
            for line in proc.stdout:
                event = json.loads(line)
                if event.get("type") == "message" and event.get("role") == "assistant":
                    return time.perf_counter() - started
            raise RuntimeError("the stand-in gave no answer")
        finally:
            proc.stdout.close()
            proc.wait(timeout=10)
    finally:
        shutil.rmtree(run, ignore_errors=True)


def run(n: int = 40) -> dict:
    proxied, direct = [], []
    root = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        with ProxyServer({"PROXY_POOL_SIZE": "0"}, workers=1) as server:
            body = chat_body(PROMPT, SYSTEM)
            for _ in range(3):  # warm-up
                stream_chat(server.port, body)
                direct_run(root)
            for _ in range(n):
                ttft, text = stream_chat(server.port, body)
                if text != "Hello from the stand-in.":
                    raise RuntimeError(f"unexpected answer {text!r}")
                proxied.append(ttft * 1000)
                direct.append(direct_run(root) * 1000)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = {"proxy_median_ms": median(proxied), "proxy_p90_ms": pct(proxied, 90),
               "direct_median_ms": median(direct), "direct_p90_ms": pct(direct, 90),
               "overhead_ms": median(proxied) - median(direct), "n": n}
    header(f"Proxy overhead to first token, stand-in CLI, pool off, {n} interleaved pairs")
    print(f"through the proxy: median {summary['proxy_median_ms']:6.1f} ms  p90 {summary['proxy_p90_ms']:6.1f} ms")
    print(f"stand-in directly: median {summary['direct_median_ms']:6.1f} ms  p90 {summary['direct_p90_ms']:6.1f} ms")
    print(f"added by the proxy (difference of medians): {summary['overhead_ms']:.1f} ms")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=40)
    run(parser.parse_args().n)
