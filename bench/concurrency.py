"""200 concurrent streams on one gevent worker, with the stand-in CLI.

WORKERS=1, PROXY_MAX_CONCURRENT=250, pool off: every stream spawns its own stand-in process,
which sends five chunks 100 ms apart. Checks every answer is intact, reports p50/p99 time to
first token and throughput, and counts the worker's child processes and open fds (via /proc)
before and after: nothing may be left.

    python bench/concurrency.py [-n 200]
"""

from __future__ import annotations

import argparse
import threading
import time

from _common import chat_body, children, fd_count, header, median, pct, stream_chat, wait_for, worker_pid

from tests.proxy_server import ProxyServer

EXPECTED = "".join(f"tick {i} " for i in range(5))


def run(n: int = 200) -> dict:
    env = {"PROXY_POOL_SIZE": "0", "PROXY_MAX_CONCURRENT": "250", "PROXY_QUEUE_SIZE": "16",
           "PROXY_FIRST_TOKEN_TIMEOUT": "120", "WORKER_CONNECTIONS": "1000"}
    with ProxyServer(env, workers=1) as server:
        worker = worker_pid(server.proc.pid)
        stream_chat(server.port, chat_body("warm-up FAKE:slow:10"))  # imports, first spawn
        time.sleep(0.5)
        before = {"procs": len(children(worker)), "fds": fd_count(worker)}

        results: list = [None] * n
        barrier = threading.Barrier(n)

        def one(i: int) -> None:
            try:
                barrier.wait(timeout=30)
                results[i] = stream_chat(server.port, chat_body(f"stream {i} FAKE:slow:100"), timeout=120)
            except Exception as exc:  # noqa: BLE001
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        elapsed = time.perf_counter() - started
        peak_note = "-"
        failures = [r for r in results if not (isinstance(r, tuple) and r[1] == EXPECTED)]
        settled = wait_for(lambda: len(children(worker)) == before["procs"] and fd_count(worker) <= before["fds"], 15)
        after = {"procs": len(children(worker)), "fds": fd_count(worker)}
        run_dirs_left = len(list(server.run_dir.iterdir()))
    ttfts = [r[0] * 1000 for r in results if isinstance(r, tuple)]
    summary = {"n": n, "ok": n - len(failures), "ttft_p50_ms": median(ttfts) if ttfts else None,
               "ttft_p99_ms": pct(ttfts, 99) if ttfts else None, "wall_s": elapsed, "streams_per_s": n / elapsed,
               "procs_before": before["procs"], "procs_after": after["procs"], "fds_before": before["fds"],
               "fds_after": after["fds"], "run_dirs_left": run_dirs_left, "settled": settled}
    header(f"{n} concurrent streams, one gevent worker, stand-in CLI (5 chunks, 100 ms apart), pool off")
    first_failure = f"   first failure: {failures[0]!r}"[:300] if failures else ""
    print(f"complete and intact: {summary['ok']}/{n}{first_failure}")
    if ttfts:
        print(f"TTFT p50 {summary['ttft_p50_ms']:.0f} ms, p99 {summary['ttft_p99_ms']:.0f} ms")
    print(f"wall {elapsed:.2f} s, {summary['streams_per_s']:.0f} streams/s ({peak_note})".replace(" (-)", ""))
    print(f"worker child processes before/after: {before['procs']}/{after['procs']}; "
          f"fds before/after: {before['fds']}/{after['fds']}; run dirs left: {run_dirs_left}")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200)
    run(parser.parse_args().n)
