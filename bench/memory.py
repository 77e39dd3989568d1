"""Idle memory: the gunicorn master plus one gevent worker, and one warm real gemini CLI.

RSS (and PSS, which splits shared pages among the processes sharing them) read from /proc.
The warm CLI is the pool's process (it served one request and stays for the next ones),
summed over its process group, measured once it has settled.

    python bench/memory.py
"""

from __future__ import annotations

import time

from _common import (
    REAL_GEMINI,
    chat_body,
    children,
    group_members,
    header,
    need_real_cli,
    pss_kb,
    rss_kb,
    stream_chat,
    wait_for,
    worker_pid,
)

from tests.mock_gemini_api import MockGeminiApi
from tests.proxy_server import ProxyServer


def run(settle: float = 4.0) -> dict:
    need_real_cli()
    with MockGeminiApi() as api, ProxyServer({"GEMINI_BIN": str(REAL_GEMINI), "GOOGLE_GEMINI_BASE_URL": api.base_url,
                                              "PROXY_POOL_SIZE": "1", "PROXY_CLI_INTERFACE": "auto"},
                                             workers=1) as server:
        master = server.proc.pid
        worker = worker_pid(master)
        time.sleep(1.0)
        idle = {"master_rss_mb": rss_kb(master) / 1024, "worker_rss_mb": rss_kb(worker) / 1024,
                "master_pss_mb": pss_kb(master) / 1024, "worker_pss_mb": pss_kb(worker) / 1024}
        stream_chat(server.port, chat_body("hi", "You are a helpful assistant."))  # the pool learns the key
        assert wait_for(lambda: len(children(worker)) == 1, 20), "no warm process appeared"
        time.sleep(settle)  # let it finish starting (~1 s) and settle
        [cli] = children(worker)
        group = group_members(cli)
        warm = {"warm_cli_rss_mb": sum(rss_kb(p) for p in group) / 1024,
                "warm_cli_pss_mb": sum(pss_kb(p) for p in group) / 1024, "warm_cli_processes": len(group)}
        after = {"worker_rss_after_request_mb": rss_kb(worker) / 1024}
    summary = {**idle, **warm, **after}
    header("Idle memory (RSS; PSS in brackets)")
    print(f"gunicorn master: {idle['master_rss_mb']:.1f} MB ({idle['master_pss_mb']:.1f})")
    print(f"gevent worker, before any request: {idle['worker_rss_mb']:.1f} MB ({idle['worker_pss_mb']:.1f}); "
          f"after one request: {after['worker_rss_after_request_mb']:.1f} MB")
    print(f"master + worker: {idle['master_rss_mb'] + idle['worker_rss_mb']:.1f} MB")
    print(f"one warm gemini CLI ({warm['warm_cli_processes']} process(es) in its group): "
          f"{warm['warm_cli_rss_mb']:.1f} MB ({warm['warm_cli_pss_mb']:.1f})")
    return summary


if __name__ == "__main__":
    run()
