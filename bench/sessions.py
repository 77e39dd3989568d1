"""Several sessions at once on one ACP process: the real gemini CLI against the loopback mock
API, through gunicorn (one gevent worker), the pool held to one process (PROXY_POOL_MAX=1).

For N = 1, 2, 4, 8, 16 concurrent streams (same system prompt, so they run together), a few
rounds each, 1.5 s apart: time to first token at the client, the CLI process's CPU time per
request (utime + stime from /proc, from a round's start to 0.5 s after its end), and its PSS
before and after the level. This is what PROXY_PROCESS_MAX_SESSIONS rests on: node runs every
session on one thread, so what a session costs it decides how many can share a process.

    python bench/sessions.py [--rounds 3] [--levels 1,2,4,8,16]
"""

from __future__ import annotations

import argparse
import threading
import time

from _common import chat_body, cpu_seconds, header, median, need_real_cli, pct, pool_state, pss_kb, stream_chat

from tests.mock_gemini_api import MockGeminiApi
from tests.proxy_server import REAL_GEMINI, ProxyServer


def cli_pid(port: int) -> int:
    """The pid of the pool's one gemini process."""
    pids = [d["pid"] for d in pool_state(port).get("detail", []) if d["pid"]]
    if len(pids) != 1:
        raise RuntimeError(f"expected one gemini process, found {pids}")
    return pids[0]


def one_round(port: int, n: int, tag: str) -> list[float]:
    """N streams at once; their TTFTs in ms (an error in any fails the benchmark)."""
    ttfts: list[float] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            first, text = stream_chat(port, chat_body(f"{tag} stream {i}", system="Be brief."))
            if text != "Hello from the mock!":
                raise RuntimeError(f"wrong answer {text!r}")
            ttfts.append(first * 1000)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    if len(ttfts) != n:
        raise RuntimeError(f"{n - len(ttfts)} streams did not end within 60 s")
    return ttfts


def run(rounds: int = 3, levels: tuple[int, ...] = (1, 2, 4, 8, 16)) -> dict:
    need_real_cli()
    results: dict = {}
    with MockGeminiApi() as api:
        server = ProxyServer({"GEMINI_BIN": str(REAL_GEMINI), "GOOGLE_GEMINI_BASE_URL": api.base_url,
                              "PROXY_CLI_INTERFACE": "auto", "PROXY_POOL_SIZE": "1", "PROXY_POOL_MAX": "1",
                              "PROXY_STATUS_HOLD": "10"}, workers=1)
        with server:
            one_round(server.port, 1, "warm-up")
            time.sleep(3)
            pid = cli_pid(server.port)
            for n in levels:
                pss_before = pss_kb(pid) / 1024
                ttfts: list[float] = []
                cpu = 0.0
                for r in range(rounds):
                    before = cpu_seconds(pid)
                    ttfts += one_round(server.port, n, f"n{n}r{r}")
                    time.sleep(0.5)
                    cpu += cpu_seconds(pid) - before
                    time.sleep(1.0)
                if cli_pid(server.port) != pid:
                    raise RuntimeError("the pool replaced its process during the benchmark")
                results[n] = {"ttft_median_ms": median(ttfts), "ttft_p90_ms": pct(ttfts, 90), "max_ms": max(ttfts),
                              "cpu_ms_per_request": cpu * 1000 / (n * rounds), "pss_before_mb": pss_before,
                              "pss_after_mb": pss_kb(pid) / 1024, "requests": n * rounds}
    header(f"Sessions at once on one ACP process (real CLI + loopback mock, PROXY_POOL_MAX=1, {rounds} rounds "
           "a level, 1.5 s apart)")
    print("| at once | TTFT median / p90 / max | CLI CPU per request | CLI PSS before -> after |")
    print("|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n} | {r['ttft_median_ms']:.0f} / {r['ttft_p90_ms']:.0f} / {r['max_ms']:.0f} ms | "
              f"{r['cpu_ms_per_request']:.0f} ms | {r['pss_before_mb']:.0f} -> {r['pss_after_mb']:.0f} MB "
              f"({r['requests']} requests) |")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1,2,4,8,16")
    args = parser.parse_args()
    run(args.rounds, tuple(int(x) for x in args.levels.split(",")))
