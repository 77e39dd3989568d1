"""Run every benchmark and print one table (with the date, `uname -m` and nproc).

    .venv/bin/python bench/run_all.py        # after bin/test has set up .venv and node_modules

warm_traffic and sessions print their own tables (they have more figures than one row each).
"""

from __future__ import annotations

import datetime
import os
import platform
import traceback

import _common  # noqa: F401 - puts the project on sys.path
import concurrency
import memory
import overhead
import request_overhead
import sessions
import tool_calls
import ttft
import warm_traffic


def main() -> int:
    results: dict[str, dict | str] = {}
    for name, bench in (("ttft", ttft.run), ("tool_calls", tool_calls.run), ("warm_traffic", warm_traffic.run),
                        ("sessions", sessions.run),
                        ("overhead", overhead.run), ("concurrency", concurrency.run),
                        ("memory", memory.run), ("request_overhead", request_overhead.run)):
        try:
            results[name] = bench()
        except Exception as exc:  # noqa: BLE001 - report it and go on with the others
            traceback.print_exc()
            results[name] = f"failed: {exc}"

    def get(name: str, key: str, fmt: str = "{:.1f}") -> str:
        value = results.get(name)
        return fmt.format(value[key]) if isinstance(value, dict) and value.get(key) is not None else "n/a"

    def level(name: str, n: int, key: str) -> str:
        value = results.get(name)
        return f"{value[n][key]:.0f}" if isinstance(value, dict) and n in value else "n/a"

    rows = [
        ("TTFT cold, real CLI (pool off), median / p90", f"{get('ttft', 'cold_median_ms', '{:.0f}')} / "
         f"{get('ttft', 'cold_p90_ms', '{:.0f}')} ms", ""),
        ("TTFT warm, real CLI (pool on), median / p90", f"{get('ttft', 'warm_median_ms', '{:.0f}')} / "
         f"{get('ttft', 'warm_p90_ms', '{:.0f}')} ms", "< 100 ms"),
        ("cold / warm (medians)", f"{get('ttft', 'ratio')}x", ">= 10x"),
        ("TTFT warm, back-to-back (replacement still starting), median",
         f"{get('ttft', 'warm_no_gap_median_ms', '{:.0f}')} ms", ""),
        ("first tool-call chunk, cold / warm (medians)", f"{get('tool_calls', 'cold_first_ms', '{:.0f}')} / "
         f"{get('tool_calls', 'warm_first_ms', '{:.0f}')} ms", ""),
        ("8 sessions at once on one process: TTFT median / CLI CPU per request",
         f"{level('sessions', 8, 'ttft_median_ms')} / {level('sessions', 8, 'cpu_ms_per_request')} ms", ""),
        ("proxy overhead to first token (stand-in, cold spawn)", f"{get('overhead', 'overhead_ms')} ms", "< 5 ms"),
        ("  through proxy / stand-in directly, medians", f"{get('overhead', 'proxy_median_ms')} / "
         f"{get('overhead', 'direct_median_ms')} ms", ""),
        ("200 concurrent streams, one worker: intact",
         f"{get('concurrency', 'ok', '{}')}/{get('concurrency', 'n', '{}')}", "all"),
        ("  TTFT p50 / p99", f"{get('concurrency', 'ttft_p50_ms', '{:.0f}')} / "
         f"{get('concurrency', 'ttft_p99_ms', '{:.0f}')} ms", ""),
        ("  throughput", f"{get('concurrency', 'streams_per_s', '{:.0f}')} streams/s "
         f"({get('concurrency', 'wall_s')} s wall)", ""),
        ("  worker processes / fds before -> after",
         f"{get('concurrency', 'procs_before', '{}')}/{get('concurrency', 'fds_before', '{}')} -> "
         f"{get('concurrency', 'procs_after', '{}')}/{get('concurrency', 'fds_after', '{}')}", "nothing left"),
        ("idle RSS, gunicorn master + 1 worker",
         f"{get('memory', 'master_rss_mb')} + {get('memory', 'worker_rss_mb')} MB", ""),
        ("idle RSS, one warm gemini CLI (process group)", f"{get('memory', 'warm_cli_rss_mb')} MB", ""),
        ("bytes to the API, one-line prompt, proxy's settings", f"{get('request_overhead', 'proxy_bytes', '{}')} B",
         "< 2 KB"),
        ("bytes to the API, same prompt, CLI defaults", f"{get('request_overhead', 'default_bytes', '{}')} B", ""),
    ]
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"\n== gemini-proxy benchmarks: {when}, {platform.machine()}, nproc {os.cpu_count()}, "
          f"Python {platform.python_version()} ==")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | result | target |")
    print(f"|{'-' * (width + 2)}|--------|--------|")
    for label, value, target in rows:
        print(f"| {label.ljust(width)} | {value} | {target} |")
    failed = [name for name, value in results.items() if not isinstance(value, dict)]
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
