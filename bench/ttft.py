"""Time to first token, cold (pool off) vs warm (pool on): the real gemini CLI against the
loopback mock API, through gunicorn (one gevent worker).

20 sequential streamed requests per mode, measured at the client (plain HTTP) from sending
the request to the first content chunk. Warm requests are paced `--gap` seconds apart (as
between the turns of a chat), each a new session on the pool's process; cold ones (a process
of their own) 0.5 s apart. A short extra series without gaps shows back-to-back requests.

    python bench/ttft.py [-n 20] [--gap 3]
"""

from __future__ import annotations

import argparse
import time

from _common import REAL_GEMINI, header, median, need_real_cli, pct, stream_chat

from tests.mock_gemini_api import MockGeminiApi
from tests.proxy_server import ProxyServer

SYSTEM = "You are a helpful assistant. Be brief."
EXPECTED = "Hello from the mock!"


def series(port: int, n: int, gap: float) -> list[float]:
    out = []
    for i in range(n):
        ttft, text = stream_chat(port, _body(i))
        if text != EXPECTED:
            raise RuntimeError(f"unexpected answer {text!r}")
        out.append(ttft * 1000)
        time.sleep(gap)
    return out


def _body(i: int) -> bytes:
    from _common import chat_body
    return chat_body(f"Question number {i}: say hi.", SYSTEM)


def run(n: int = 20, gap: float = 3.0, burst: int = 5) -> dict:
    need_real_cli()
    results: dict = {}
    with MockGeminiApi() as api:
        for mode, pool in (("cold", "0"), ("warm", "1")):
            server = ProxyServer({"GEMINI_BIN": str(REAL_GEMINI), "GOOGLE_GEMINI_BASE_URL": api.base_url,
                                  "PROXY_POOL_SIZE": pool, "PROXY_STATUS_HOLD": "10",
                                  "PROXY_CLI_INTERFACE": "auto"}, workers=1)
            with server:
                pause = gap if mode == "warm" else 0.5
                series(server.port, 2, pause)  # warm-up: node's file cache; the pool learns the key
                results[mode] = series(server.port, n, pause)
                if mode == "warm":
                    results["warm_no_gap"] = series(server.port, burst, 0)
    cold, warm = results["cold"], results["warm"]
    summary = {
        "cold_median_ms": median(cold), "cold_p90_ms": pct(cold, 90),
        "warm_median_ms": median(warm), "warm_p90_ms": pct(warm, 90),
        "ratio": median(cold) / median(warm),
        "warm_no_gap_median_ms": median(results["warm_no_gap"]),
        "n": n, "gap_s": gap,
    }
    header(f"TTFT, real CLI + loopback mock, 1 gevent worker, {n} sequential streams per mode, warm ones {gap} s apart")
    for mode, pool in (("cold", 0), ("warm", 1)):
        print(f"{mode} (PROXY_POOL_SIZE={pool}): median {summary[mode + '_median_ms']:7.1f} ms   "
              f"p90 {summary[mode + '_p90_ms']:7.1f} ms")
    print(f"ratio cold/warm (medians): {summary['ratio']:.1f}x")
    print(f"warm, {burst} back-to-back requests: median "
          f"{summary['warm_no_gap_median_ms']:.1f} ms")
    print("cold ms:", " ".join(f"{v:.0f}" for v in cold))
    print("warm ms:", " ".join(f"{v:.0f}" for v in warm))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--gap", type=float, default=3.0)
    args = parser.parse_args()
    run(args.n, args.gap)
