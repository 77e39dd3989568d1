"""Warm answers for real traffic: the real gemini CLI against the loopback mock API, through
gunicorn (one gevent worker), with the pool's defaults (PROXY_ISOLATION=session: a process
serves many requests, each in a fresh session) and, side by side in the same run,
PROXY_ISOLATION=process (a warm process of its own for each request).

Scenarios (time to first token measured at the client; non-streamed replies count when the
whole body arrives, which is when such a client sees its first token):
- back_to_back: one client, 10 streamed requests, each sent as soon as the previous ends.
  Twice: the first burst is the pool's first sight of this traffic, the second (5 s later)
  what a client doing this regularly gets.
- clients: 4 clients, each with its own system prompt, 2 models, 60 streamed requests sent at
  random 0.3-1.5 s intervals (seeded), each client choosing at random.
- openwebui: Open WebUI's pattern, 5 rounds: a streamed chat answer, then at once its title,
  tags and follow-up requests (non-streamed, max_tokens 1000, Open WebUI's task prompts).
- agent: an agent loop, 10 consecutive tool turns with the same tools and system prompt, each
  sent as soon as the last one's stream ends (the conversation growing by a call and its result
  each turn): time to the first tool-call chunk.
- burst: 100 concurrent tool-less streams: all intact? How many CLI processes served them
  (the log lines' `cli_pid`) and their total PSS right after.
- overhead: on warm hits, client-side first token minus the CLI's own time from being handed
  the request to its first text (`cli_ttft_ms` in the server's request log).
- idle: processes and their memory after the scenarios, and after PROXY_POOL_MAX_IDLE without
  requests (set to 20 s here).

    python bench/warm_traffic.py [--only session|process]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import secrets
import threading
import time

from _common import descendants, header, median, need_real_cli, pct, pool_state, pss_kb, wait_for, worker_pid

from tests.mock_gemini_api import MockGeminiApi, contents_text, declared_tools, function_call, model_turn
from tests.proxy_server import REAL_GEMINI, ProxyServer

CHAT_SYSTEM = "You are a helpful assistant. Answer in the user's language."
TITLE = ("### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
         "### Guidelines:\n- The title should clearly represent the main theme or subject of the conversation.\n"
         "### Output:\nJSON format: { \"title\": \"your concise title here\" }\n"
         "### Chat History:\n<chat_history>\n{h}\n</chat_history>")
TAGS = ("### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more "
        "specific subtopic tags.\n### Output:\nJSON format: { \"tags\": [\"tag1\", \"tag2\", \"tag3\"] }\n"
        "### Chat History:\n<chat_history>\n{h}\n</chat_history>")
FOLLOW_UPS = ("### Task:\nSuggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next "
              "in this conversation as a **user**, based on the chat history.\n### Output:\nJSON format: "
              "{ \"follow_ups\": [\"Question 1?\", \"Question 2?\"] }\n### Chat History:\n<chat_history>\n{h}\n"
              "</chat_history>")
AGENT_SYSTEM = "You are a coding agent. Use the tools to inspect the project before you answer."
AGENT_TOOLS = [{"type": "function", "function": {
    "name": name, "description": f"{name} in the project.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
    for name in ("read_file", "list_directory", "grep")]
_LINE_ID = re.compile(r" id=(\S+) ")


def agent_script(body: dict) -> list[dict] | None:
    """The model calls read_file on every turn of the agent loop."""
    if any(d["name"] == "mcp_fn_read_file" for d in declared_tools(body)):
        step = contents_text(body).count("result of call")
        return model_turn([function_call("mcp_fn_read_file", {"path": f"src/file{step}.py"})])
    return None


def request(port: int, body: dict, stream: bool, marker: bytes = b'"content":"') -> tuple[str, float]:
    """(request id, seconds to the first content: streamed, the first chunk holding `marker`; else
    the whole body)."""
    request_id = f"bench-{secrets.token_hex(6)}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body | {"stream": stream}).encode(),
                     headers={"Content-Type": "application/json", "X-Request-Id": request_id})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
        if not stream:
            data = json.loads(response.read())
            if not data["choices"][0]["message"]["content"]:
                raise RuntimeError("empty answer")
            return request_id, time.perf_counter() - started
        first = None
        while True:
            line = response.readline()
            if not line:
                raise RuntimeError("stream ended without [DONE]")
            if first is None and line.startswith(b"data: {") and marker in line and b'"content":""' not in line:
                first = time.perf_counter() - started
            if line.strip() == b"data: [DONE]":
                if first is None:
                    raise RuntimeError("stream ended without content")
                return request_id, first
    finally:
        conn.close()


def intact(port: int, body: dict) -> tuple[str, bool, int]:
    """(request id, whether the stream carried the whole answer and ended properly, HTTP status)."""
    request_id = f"bench-{secrets.token_hex(6)}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body | {"stream": True}).encode(),
                     headers={"Content-Type": "application/json", "X-Request-Id": request_id})
        response = conn.getresponse()
        text = []
        for line in response.read().splitlines():
            if line.startswith(b"data: {"):
                for choice in json.loads(line[6:]).get("choices", []):
                    text.append(choice.get("delta", {}).get("content") or "")
        return request_id, response.status == 200 and "".join(text) == "Hello from the mock!", response.status
    finally:
        conn.close()


def chat_body(system: str | None, text: str, model: str = "gemini-cli", **extra) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return {"model": model, "messages": messages, **extra}


def log_fields(server: ProxyServer) -> dict[str, dict[str, str]]:
    """Request id -> the fields of its request log line."""
    out = {}
    for line in server.request_lines():
        match = _LINE_ID.search(line)
        if match:
            out[match.group(1)] = dict(part.split("=", 1) for part in line.split(" chat ", 1)[1].split() if "=" in part)
    return out


def back_to_back(port: int, n: int = 10) -> list[tuple[str, float]]:
    return [request(port, chat_body(None, f"Step {i}: go on."), stream=True) for i in range(n)]


def clients(port: int, n: int = 60, seed: int = 7) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    systems = [f"You are assistant number {c}. {'Be brief.' if c % 2 else 'Explain.'}" for c in range(4)]
    models = ["gemini-2.5-pro", "gemini-2.5-pro", "gemini-3-flash", "gemini-3-flash"]
    results: list[tuple[str, float]] = []
    errors: list[BaseException] = []
    threads = []

    def one(c: int, i: int) -> None:
        try:
            results.append(request(port, chat_body(systems[c], f"Message {i} from client {c}.", models[c]), True))
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)

    for i in range(n):
        thread = threading.Thread(target=one, args=(rng.randrange(4), i))
        thread.start()
        threads.append(thread)
        time.sleep(rng.uniform(0.3, 1.5))
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return results


def openwebui(port: int, rounds: int = 5) -> list[list[tuple[str, float]]]:
    out = []
    for r in range(rounds):
        question = f"What is the capital of country number {r}?"
        chat = request(port, chat_body(CHAT_SYSTEM, question), stream=True)
        history = f"USER: {question}\nASSISTANT: Hello from the mock!"
        tasks: list[tuple[str, float]] = []
        bodies = [chat_body(None, t.replace("{h}", history), max_tokens=1000) for t in (TITLE, TAGS, FOLLOW_UPS)]
        threads = [threading.Thread(target=lambda b=b, out=tasks: out.append(request(port, b, stream=False)))
                   for b in bodies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        out.append([chat] + tasks)
        time.sleep(5)  # the user reads the answer
    return out


def agent_loop(port: int, turns: int = 10) -> list[tuple[str, float]]:
    """An agent's consecutive tool turns: each request carries the whole conversation so far."""
    messages: list[dict] = [{"role": "system", "content": AGENT_SYSTEM},
                            {"role": "user", "content": f"Find the bug in the project ({secrets.token_hex(3)})."}]
    out = []
    for turn in range(turns):
        body = {"model": "gemini-cli", "messages": messages, "tools": AGENT_TOOLS}
        request_id, seconds = request(port, body, stream=True, marker=b'"tool_calls":[')
        out.append((request_id, seconds))
        call_id = f"call_{turn}"
        messages = messages + [
            {"role": "assistant", "tool_calls": [{"id": call_id, "type": "function", "function": {
                "name": "read_file", "arguments": json.dumps({"path": f"src/file{turn}.py"})}}]},
            {"role": "tool", "tool_call_id": call_id, "content": f"def f{turn}():\n    return {turn}\n"}]
    return out


def burst(server: ProxyServer, n: int = 100) -> dict:
    results: list[tuple[str, bool, int]] = []
    threads = [threading.Thread(target=lambda i=i: results.append(intact(server.port, chat_body(None, f"Burst {i}."))))
               for i in range(n)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    wall = time.perf_counter() - started
    mb = warm_mb(server)
    fields = log_fields(server)
    pids = {fields.get(request_id, {}).get("cli_pid") for request_id, _, _ in results}
    statuses = sorted({status for _, ok, status in results if not ok})
    return {"ok": sum(1 for _, ok, _ in results if ok), "n": n, "wall_s": wall, "processes": len(pids - {None, "-"}),
            "pss_mb": mb, "others": {status: sum(1 for _, ok, st in results if not ok and st == status)
                                     for status in statuses}}


def warm_mb(server: ProxyServer) -> float:
    """PSS of every process under the worker (the gemini CLIs and their MCP tool servers)."""
    worker = worker_pid(server.proc.pid)
    return sum(pss_kb(p) for p in descendants(worker)) / 1024


def ms(values: list[float]) -> str:
    return f"median {median(values):.0f} ms, p90 {pct(values, 90):.0f} ms, max {max(values):.0f} ms"


def run(only: str | None = None) -> dict:
    need_real_cli()
    summary: dict = {}
    modes = [m for m in ("session", "process") if only in (None, m)]
    with MockGeminiApi() as api:
        api.configure(script=agent_script)
        for mode in modes:
            server = ProxyServer({"GEMINI_BIN": str(REAL_GEMINI), "GOOGLE_GEMINI_BASE_URL": api.base_url,
                                  "PROXY_CLI_INTERFACE": "auto", "PROXY_POOL_SIZE": "1", "PROXY_POOL_MAX_IDLE": "20",
                                  "PROXY_ISOLATION": mode, "PROXY_STATUS_HOLD": "10"}, workers=1)
            with server:
                port = server.port
                request(port, chat_body(None, "warm-up"), stream=True)  # node's file cache; the first start-up
                time.sleep(3)
                s: dict = {}
                first = back_to_back(port)
                time.sleep(5)
                second = back_to_back(port)
                s["b2b_first"], s["b2b"] = [t * 1000 for _, t in first], [t * 1000 for _, t in second]
                s["idle_after_b2b"] = (pool_state(server.port), warm_mb(server))
                time.sleep(3)
                many = clients(port)
                s["clients"] = [t * 1000 for _, t in many]
                time.sleep(3)
                s["idle_after_clients"] = (pool_state(server.port), warm_mb(server))
                rounds = openwebui(port)
                s["owui"] = [[t * 1000 for _, t in rnd] for rnd in rounds]
                s["idle_after_owui"] = (pool_state(server.port), warm_mb(server))
                agent_loop(port, 3)  # the agent's system prompt and tools are new here: a first loop
                time.sleep(3)
                turns = agent_loop(port)
                s["agent"] = [t * 1000 for _, t in turns]
                time.sleep(3)
                s["burst"] = burst(server)
                time.sleep(3)
                s["idle_after_burst"] = (pool_state(server.port), warm_mb(server))
                fields = log_fields(server)
                overheads = []
                for request_id, seconds in second + many + [x for rnd in rounds for x in rnd[:1]]:
                    line = fields.get(request_id, {})
                    if line.get("pool") == "hit" and line.get("cli_ttft_ms", "-") != "-":
                        overheads.append(seconds * 1000 - float(line["cli_ttft_ms"]))
                s["overhead"] = overheads
                s["hits"] = sum(1 for f in fields.values() if f.get("pool") == "hit")
                s["requests"] = len(fields)
                s["processes"] = len({f.get("cli_pid") for f in fields.values()} - {None, "-"})
                wait_for(lambda srv=server: pool_state(srv.port).get("processes", 1) == 0, 45, 0.5)
                s["idle_after_max_idle"] = (pool_state(server.port), warm_mb(server))
                summary[mode] = s
    header("Warm answers for real traffic: real CLI + loopback mock, 1 gevent worker, pool defaults "
           "(PROXY_POOL_SIZE=1, PROXY_POOL_MAX=8), PROXY_ISOLATION=session side by side with =process")
    for mode, s in summary.items():
        print(f"-- {mode} ({s['hits']} of {s['requests']} requests served by a running process; "
              f"{s['processes']} CLI processes in all)")
        print(f"  10 back to back, first burst:  {ms(s['b2b_first'])}")
        print(f"  10 back to back, next burst:   {ms(s['b2b'])}   (target p90 <= 150)")
        print(f"  4 clients x own prompt, 2 models, 60 requests: {ms(s['clients'])}   (target median <= 100, "
              "p90 <= 200)")
        worst = [max(r) for r in s["owui"]]
        print(f"  Open WebUI chat + title/tags/follow-ups, 5 rounds: worst of each round "
              f"{' '.join(f'{w:.0f}' for w in worst)} ms; all {ms([x for r in s['owui'] for x in r])}   "
              "(target all four <= 200)")
        print(f"  agent loop, 10 tool turns, first tool-call chunk: {ms(s['agent'])}   (target median <= 100, "
              "p90 <= 200)")
        b = s["burst"]
        print(f"  100 concurrent streams: {b['ok']}/{b['n']} intact in {b['wall_s']:.1f} s, {b['processes']} CLI "
              f"processes, {b['pss_mb']:.0f} MB PSS after"
              + "".join(f"; {count} got HTTP {status}" for status, count in b["others"].items()))
        if s["overhead"]:
            print(f"  proxy's own cost on warm hits (client TTFT - CLI's own TTFT): median "
                  f"{median(s['overhead']):.1f} ms, p90 {pct(s['overhead'], 90):.1f} ms, n={len(s['overhead'])}   "
                  "(target median <= 5)")
        for name in ("idle_after_b2b", "idle_after_clients", "idle_after_owui", "idle_after_burst",
                     "idle_after_max_idle"):
            if name in s:
                state, mb = s[name]
                print(f"  {name}: {state.get('processes', 0)} processes ({state.get('ready', 0)} ready), "
                      f"{mb:.0f} MB PSS, start-up {state.get('startup_s', '-')} s")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("session", "process"))
    run(parser.parse_args().only)
