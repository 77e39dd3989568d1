"""Time to the first tool-call chunk, cold (pool off) vs warm (pool on): the real gemini CLI
against the loopback mock API (scripted to call the request's tool), through gunicorn (one
gevent worker). A request with client tools is an ACP session with its own MCP tool server:
cold, the process starts first; warm, the same spec repeating, a session opened ahead of it
(its MCP server running) takes it.

12 sequential streamed requests per mode, 3 s apart (as between a user's steps), measured at
the client from sending the request to the first `delta.tool_calls` chunk; plus the time to
the end of the reply (`finish_reason: tool_calls`). bench/warm_traffic.py has the agent loop
with no pauses.

    python bench/tool_calls.py [-n 12] [--gap 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import time

from _common import REAL_GEMINI, header, median, need_real_cli, pct

from tests.mock_gemini_api import MockGeminiApi, declared_tools, function_call, model_turn
from tests.proxy_server import ProxyServer

TOOL = {"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the project.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}


def script(body: dict) -> list[dict] | None:
    if declared_tools(body):
        return model_turn([function_call("mcp_fn_read_file", {"path": "README.md"})])
    return None


def tool_call_times(port: int) -> tuple[float, float]:
    """(seconds to the first tool-call chunk, seconds to the end of the reply)."""
    body = json.dumps({"model": "gemini-cli", "stream": True, "tools": [TOOL],
                       "messages": [{"role": "user", "content": "Read README.md"}]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
        first = None
        while True:
            line = response.readline()
            if not line:
                raise RuntimeError("the stream ended without [DONE]")
            if first is None and b'"tool_calls":[' in line:
                first = time.perf_counter() - started
            if line.strip() == b"data: [DONE]":
                if first is None:
                    raise RuntimeError("no tool call in the reply")
                return first, time.perf_counter() - started
    finally:
        conn.close()


def run(n: int = 12, gap: float = 3.0) -> dict:
    need_real_cli()
    results: dict[str, list[tuple[float, float]]] = {}
    with MockGeminiApi() as api:
        api.configure(script=script)
        for mode, pool in (("cold", "0"), ("warm", "1")):
            with ProxyServer({"GEMINI_BIN": str(REAL_GEMINI), "GOOGLE_GEMINI_BASE_URL": api.base_url,
                              "PROXY_POOL_SIZE": pool, "PROXY_STATUS_HOLD": "10", "PROXY_CLI_INTERFACE": "auto"},
                             workers=1) as server:
                tool_call_times(server.port)  # warm-up: node's file cache; the pool learns the key
                time.sleep(gap)
                times = []
                for _ in range(n):
                    times.append(tool_call_times(server.port))
                    time.sleep(gap)
                results[mode] = times
    summary = {}
    for mode, times in results.items():
        first = [t * 1000 for t, _ in times]
        end = [e * 1000 for _, e in times]
        summary[f"{mode}_first_ms"], summary[f"{mode}_first_p90_ms"] = median(first), pct(first, 90)
        summary[f"{mode}_end_ms"] = median(end)
    summary["ratio"] = summary["cold_first_ms"] / summary["warm_first_ms"]
    header(f"First tool-call chunk, real CLI + MCP tool server + loopback mock, {n} streams per mode, {gap} s apart")
    for mode in results:
        print(f"{mode}: first tool call median {summary[mode + '_first_ms']:.0f} ms (p90 "
              f"{summary[mode + '_first_p90_ms']:.0f}), reply ended {summary[mode + '_end_ms']:.0f} ms")
    print(f"ratio cold/warm (medians): {summary['ratio']:.1f}x")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=12)
    parser.add_argument("--gap", type=float, default=3.0)
    args = parser.parse_args()
    run(args.n, args.gap)
