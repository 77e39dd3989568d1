"""Bytes the real gemini CLI sends to the API for a one-line prompt: with the settings the proxy
generates (through the proxy) versus the CLI's defaults (the CLI run directly, with a CLI home
holding only the auth settings, and no GEMINI_SYSTEM_MD). Both against the loopback mock.

    python bench/request_overhead.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from _common import REAL_GEMINI, chat_body, header, need_real_cli, stream_chat

from tests.mock_gemini_api import MockGeminiApi
from tests.proxy_server import ProxyServer

PROMPT = "What is the capital of France?"
MODEL = "gemini-2.5-pro"  # an id of the proxy's default model table that maps to itself


def breakdown(body: bytes) -> dict[str, int]:
    doc = json.loads(body)
    return {key: len(json.dumps(value, separators=(",", ":")).encode()) for key, value in doc.items()}


def through_proxy(api: MockGeminiApi) -> list[bytes]:
    api.reset()
    with ProxyServer({"GEMINI_BIN": str(REAL_GEMINI), "GOOGLE_GEMINI_BASE_URL": api.base_url,
                      "PROXY_POOL_SIZE": "0"}, workers=1) as server:
        stream_chat(server.port, chat_body(PROMPT, model=MODEL))
    return [r.body for r in api.requests]


def cli_defaults(api: MockGeminiApi) -> list[bytes]:
    api.reset()
    root = Path(tempfile.mkdtemp(prefix="bench-cli-defaults-"))
    try:
        (root / "home/.gemini").mkdir(parents=True)
        (root / "home/.gemini/settings.json").write_text('{"security": {"auth": {"selectedType": "gemini-api-key"}}}')
        (root / "work").mkdir()
        (root / "tmp").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_", "GOOGLE_", "PROXY_"))}
        env.update(GEMINI_CLI_HOME=str(root / "home"), GEMINI_API_KEY="test-key", GOOGLE_GEMINI_BASE_URL=api.base_url,
                   GEMINI_CLI_NO_RELAUNCH="true", GEMINI_CLI_TRUST_WORKSPACE="true", TMPDIR=str(root / "tmp"))
        proc = subprocess.Popen([str(REAL_GEMINI), "-m", MODEL, "-o", "stream-json"], cwd=root / "work", env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.communicate(PROMPT.encode(), timeout=60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [r.body for r in api.requests]


def run() -> dict:
    need_real_cli()
    with MockGeminiApi() as api:
        proxied = through_proxy(api)
        default = cli_defaults(api)
    summary = {"proxy_bytes": sum(map(len, proxied)), "proxy_requests": len(proxied),
               "default_bytes": sum(map(len, default)), "default_requests": len(default)}
    header(f"Bytes sent to the API for a one-line prompt ({len(PROMPT)} characters)")
    print(f"proxy's settings: {summary['proxy_bytes']} bytes in {len(proxied)} request(s); "
          f"parts: {breakdown(proxied[-1]) if proxied else '-'}")
    print(f"CLI defaults:     {summary['default_bytes']} bytes in {len(default)} request(s); "
          f"parts: {breakdown(default[-1]) if default else '-'}")
    if proxied and default:
        print(f"ratio: {summary['default_bytes'] / summary['proxy_bytes']:.0f}x fewer bytes with the proxy's settings")
    return summary


if __name__ == "__main__":
    run()
