"""Tests of the fake `gemini` CLI stand-in, keeping it honest to
/work/shared/gemini-cli-contract.md.  Every process is started in its own
session and its group is SIGKILLed in a finally block."""
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

FAKE = Path(__file__).resolve().parent / "fake_gemini" / "gemini"


def _env(tmp_path, relaunch=False, api_key=True, **extra):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("GEMINI") or k.startswith("GOOGLE") or k.startswith("FAKE_GEMINI"))}
    env["HOME"] = str(home)
    if api_key:
        env["GEMINI_API_KEY"] = "test-key"
    if not relaunch:
        env["GEMINI_CLI_NO_RELAUNCH"] = "true"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _killpg(pid):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def spawn(args, env, stdin=subprocess.PIPE):
    p = subprocess.Popen([str(FAKE), *args], stdin=stdin, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        yield p
    finally:
        _killpg(p.pid)
        with contextlib.suppress(Exception):
            p.wait(timeout=5)
        for f in (p.stdin, p.stdout, p.stderr):
            if f:
                with contextlib.suppress(Exception):
                    f.close()


def run(args, env, stdin_bytes=b"", timeout=10):
    with spawn(args, env) as p:
        out, err = p.communicate(stdin_bytes, timeout=timeout)
        return p.returncode, out.decode(), err.decode()


def events(out):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for(pred, timeout=5.0, step=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # zombies count as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_line(p, timeout=5.0):
    import select
    r, _, _ = select.select([p.stdout], [], [], timeout)
    assert r, "no stdout line within timeout"
    return p.stdout.readline().decode()


# ------------------------------------------------------------------ tests

def test_version_and_bad_args(tmp_path):
    env = _env(tmp_path)
    assert run(["--version"], env)[:2] == (0, "0.61.0-fake\n")
    rc, out, err = run(["--bogus"], env)
    assert rc == 1 and out == "" and "Unknown argument" in err
    rc, out, err = run(["-o", "xml", "-p", "x"], env)
    assert rc == 1 and out == "" and "Invalid values" in err
    rc, out, err = run(["-p", "x", "positional"], env)
    assert rc == 1 and out == ""


@pytest.mark.parametrize("relaunch", [False, True])
def test_normal_stream_json(tmp_path, relaunch):
    env = _env(tmp_path, relaunch=relaunch)
    rc, out, err = run(["-m", "gemini-2.5-flash", "-o", "stream-json"], env, b"say hi")
    assert rc == 0, err
    ev = events(out)
    assert [e["type"] for e in ev] == ["init", "message", "message", "message", "message", "result"]
    assert ev[0]["model"] == "gemini-2.5-flash" and ev[0]["session_id"] and ev[0]["timestamp"].endswith("Z")
    assert ev[1] == {**ev[1], "role": "user", "content": "say hi"}
    chunks = [e["content"] for e in ev[2:5]]
    assert chunks == ["Hello", " from", " the stand-in."]
    assert all(e["role"] == "assistant" and e["delta"] is True for e in ev[2:5])
    res = ev[-1]
    assert res["status"] == "success" and "error" not in res
    st = res["stats"]
    assert (st["input_tokens"], st["output_tokens"], st["cached"], st["input"]) == (1, 3, 0, 1)
    assert st["total_tokens"] == 4 and st["tool_calls"] == 0
    assert st["models"]["gemini-2.5-flash"]["output_tokens"] == 3
    assert "256-color support not detected" in err


def test_prompt_assembly_and_echo(tmp_path):
    env = _env(tmp_path)
    rc, out, _ = run(["-o", "stream-json", "-p", "FAKE:echo tail"], env, b"head\n")
    assert rc == 0
    ev = events(out)
    assert ev[0]["model"] == "auto"
    assert ev[1]["content"] == "head\n\n\nFAKE:echo tail"
    assert [e["content"] for e in ev if e.get("role") == "assistant"] == ["head\n\n\nFAKE:echo tail"]


def test_stdin_500ms_rule(tmp_path):
    env = _env(tmp_path)
    # Without -p: an open, silent pipe -> exit 42 after ~500 ms, nothing on stdout.
    with spawn(["-o", "stream-json"], env) as p:
        t0 = time.monotonic()
        rc = p.wait(timeout=5)
        dt = time.monotonic() - t0
        assert rc == 42
        assert p.stdout.read() == b""
        assert b"No input provided via stdin" in p.stderr.read()
        assert 0.45 <= dt < 3.0
    # With -p: goes on with the prompt alone; late stdin is ignored.
    with spawn(["-o", "stream-json", "-p", "from flag"], env) as p:
        assert p.wait(timeout=5) == 0
        ev = events(p.stdout.read().decode())
        assert ev[1]["content"] == "from flag" and ev[-1]["status"] == "success"
    # A first byte in time: waits for EOF however long.
    with spawn(["-o", "stream-json"], env) as p:
        p.stdin.write(b"a")
        p.stdin.flush()
        time.sleep(0.8)
        assert p.poll() is None
        p.stdin.write(b"bc")
        p.stdin.close()
        assert p.wait(timeout=5) == 0
        assert events(p.stdout.read().decode())[1]["content"] == "abc"


def test_relaunch_signal_structure(tmp_path):
    rec = tmp_path / "rec"
    env = _env(tmp_path, relaunch=True, FAKE_GEMINI_RECORD_DIR=rec)
    with spawn(["-o", "stream-json"], env) as p:
        p.stdin.write(b"FAKE:hang")
        p.stdin.close()
        assert json.loads(read_line(p))["type"] == "init"
        files = wait_for(lambda: list(rec.glob("*.json")))
        assert files and len(files) == 1
        child = json.loads(files[0].read_text())
        assert child["parent_pid"] == p.pid and child["ppid"] == p.pid
        assert child["pgid"] == p.pid and child["sid"] == p.pid
        assert child["env"]["GEMINI_CLI_NO_RELAUNCH"] == "true"
        # SIGTERM to the relauncher's pid alone: nothing ends.
        os.kill(p.pid, signal.SIGTERM)
        time.sleep(0.3)
        assert p.poll() is None and alive(child["pid"])
        # SIGTERM to the group: quick exit 0, no result event.
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGTERM)
        assert p.wait(timeout=3) == 0
        assert time.monotonic() - t0 < 1.0
        rest = p.stdout.read().decode()
        assert '"result"' not in rest
        assert wait_for(lambda: not alive(child["pid"]), timeout=2)


def test_stubborn_needs_sigkill(tmp_path):
    rec = tmp_path / "rec"
    env = _env(tmp_path, FAKE_GEMINI_RECORD_DIR=rec)
    with spawn(["-o", "stream-json"], env) as p:
        p.stdin.write(b"FAKE:stubborn")
        p.stdin.close()
        assert json.loads(read_line(p))["type"] == "init"
        os.killpg(p.pid, signal.SIGTERM)
        time.sleep(0.3)
        assert p.poll() is None
        os.killpg(p.pid, signal.SIGKILL)
        assert p.wait(timeout=3) == -signal.SIGKILL


def test_spawn_child_grandchild_dies_with_group(tmp_path):
    rec = tmp_path / "rec"
    env = _env(tmp_path, relaunch=True, FAKE_GEMINI_RECORD_DIR=rec)
    with spawn(["-o", "stream-json"], env) as p:
        p.stdin.write(b"FAKE:spawn-child")
        p.stdin.close()
        files = wait_for(lambda: [f for f in rec.glob("*.json")
                                  if "grandchild_pid" in json.loads(f.read_text())])
        assert files
        data = json.loads(files[0].read_text())
        gpid = data["grandchild_pid"]
        assert os.getpgid(gpid) == p.pid
        os.killpg(p.pid, signal.SIGTERM)
        assert p.wait(timeout=3) == 0
        assert wait_for(lambda: not alive(gpid) and not alive(data["pid"]), timeout=2)


def test_quota_and_api_errors(tmp_path):
    env = _env(tmp_path)
    rc, out, _ = run(["-o", "stream-json"], env, b"FAKE:quota")
    assert rc == 173
    res = events(out)[-1]
    assert res["type"] == "result" and res["status"] == "error"
    assert "Please retry in 17.5s." in res["error"]["message"]
    assert res["error"]["message"].startswith("[API Error: You exceeded your current quota")
    rc, out, _ = run(["-o", "stream-json"], env, b"FAKE:quota-noretry")
    assert rc == 173 and "retry" not in events(out)[-1]["error"]["message"].lower()
    rc, out, _ = run(["-o", "stream-json"], env, b"FAKE:api-error:503")
    assert rc == 503 & 0xFF
    assert "(Status: 503)]" in events(out)[-1]["error"]["message"]


def test_safety_crash_exit(tmp_path):
    env = _env(tmp_path)
    rc, out, _ = run(["-o", "stream-json"], env, b"FAKE:safety")
    ev = events(out)
    assert rc == 0
    assert ev[-2]["type"] == "error" and "safety" in ev[-2]["message"]
    assert ev[-1]["type"] == "result" and ev[-1]["status"] == "error" and "error" not in ev[-1]
    rc, out, err = run(["-o", "stream-json"], env, b"FAKE:crash")
    ev = events(out)
    assert rc == 1 and len([e for e in ev if e.get("role") == "assistant"]) == 2
    assert all(e["type"] != "result" for e in ev) and "at " in err
    rc, out, err = run(["-o", "stream-json"], env, b"FAKE:exit:7")
    assert (rc, out) == (7, "") and "fake failure" in err


def test_auth_exit_41(tmp_path):
    env = _env(tmp_path, api_key=False)
    rc, out, err = run(["-o", "stream-json", "-p", "hi"], env)
    assert (rc, out) == (41, "")
    assert f"Please set an Auth method in your {tmp_path / 'home'}/.gemini/settings.json" in err
    assert "GEMINI_API_KEY, GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_GENAI_USE_GCA" in err
    # settings.json under GEMINI_CLI_HOME satisfies auth.
    cli_home = tmp_path / "clihome"
    (cli_home / ".gemini").mkdir(parents=True)
    (cli_home / ".gemini" / "settings.json").write_text(
        json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}}))
    env2 = dict(env, GEMINI_CLI_HOME=str(cli_home))
    assert run(["-o", "stream-json", "-p", "hi"], env2)[0] == 0
    # The directive forces 41 regardless of env.
    rc, out, _ = run(["-o", "stream-json"], _env(tmp_path), b"FAKE:auth")
    assert (rc, out) == (41, "")


def test_missing_system_md(tmp_path):
    env = _env(tmp_path, GEMINI_SYSTEM_MD=tmp_path / "nope.md")
    rc, out, err = run(["-o", "stream-json", "-p", "hi"], env)
    assert (rc, out) == (1, "") and "nope.md" in err


def test_record_file(tmp_path):
    rec = tmp_path / "rec"
    sysmd = tmp_path / "system.md"
    sysmd.write_text("You are terse.")
    env = _env(tmp_path, relaunch=True, FAKE_GEMINI_RECORD_DIR=rec, GEMINI_SYSTEM_MD=sysmd,
               TMPDIR=tmp_path, GOOGLE_CLOUD_PROJECT="proj", UNRELATED_VAR="x")
    secret = "user secret text 12345"
    args = ["-m", "gemini-2.5-pro", "-o", "stream-json", "--approval-mode", "default", "--skip-trust"]
    rc, out, _ = run(args, env, secret.encode())
    assert rc == 0
    files = list(rec.glob("*.json"))
    assert len(files) == 1 and not list(rec.glob("*.tmp"))
    d = json.loads(files[0].read_text())
    assert d["argv"][1:] == args and not any(secret in a for a in d["argv"])
    assert d["stdin"] == secret
    assert d["system_md_text"] == "You are terse."
    assert d["parent_pid"] == d["ppid"] and isinstance(d["parent_pid"], int)
    assert d["cwd"] == os.getcwd()
    e = d["env"]
    assert e["GEMINI_SYSTEM_MD"] == str(sysmd) and e["GOOGLE_CLOUD_PROJECT"] == "proj"
    assert e["TMPDIR"] == str(tmp_path) and e["HOME"] == str(tmp_path / "home")
    assert "UNRELATED_VAR" not in e
    assert not alive(d["pid"]) and not alive(d["parent_pid"])


def test_startup_delay(tmp_path):
    env = _env(tmp_path, FAKE_GEMINI_STARTUP_MS=300)
    t0 = time.monotonic()
    rc, out, _ = run(["-o", "stream-json", "-p", "hi"], env, b"x")
    assert rc == 0 and time.monotonic() - t0 >= 0.3
    assert events(out)[1]["content"] == "x\n\nhi"


# ------------------------------------------------------------------ ACP mode (`--acp`)

class Acp:
    """A JSON-RPC peer over one spawned stand-in: bounded reads (select + os.read on the raw
    fd, never the buffered file object), notifications collected on the way to a response."""

    def __init__(self, p):
        self.p = p
        self.fd = p.stdout.fileno()
        self.buf = b""
        self.next_id = 0
        self.eof = False

    def send(self, obj):
        self.send_raw((json.dumps(obj) + "\n").encode())

    def send_raw(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def request(self, method, params):
        rid = self.next_id
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return rid

    def read(self, timeout=5.0):
        """The next message, or None at EOF; fails the test after `timeout` seconds."""
        import select
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = end - time.monotonic()
            assert left > 0, "no ACP message within timeout"
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.eof = True
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def response(self, rid, timeout=5.0):
        """(the response to `rid`, the notifications that came before it)."""
        notes = []
        while True:
            msg = self.read(timeout)
            assert msg is not None, f"EOF before the response to {rid}; notes {notes}"
            assert msg.get("jsonrpc") == "2.0"
            if "method" not in msg and msg.get("id") == rid:
                return msg, notes
            notes.append(msg)

    def call(self, method, params, timeout=5.0):
        return self.response(self.request(method, params), timeout)

    def initialize(self):
        msg, _ = self.call("initialize", {"protocolVersion": 1, "clientCapabilities": {
            "fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}})
        return msg["result"]

    def new_session(self, cwd="/"):
        msg, _ = self.call("session/new", {"cwd": str(cwd), "mcpServers": []})
        return msg["result"]["sessionId"]

    def prompt(self, sid, *blocks, timeout=5.0):
        blocks = [{"type": "text", "text": b} if isinstance(b, str) else b for b in blocks]
        msg, notes = self.call("session/prompt", {"sessionId": sid, "prompt": blocks}, timeout)
        return msg, [n for n in notes if n.get("method") == "session/update"]


def chunks(notes, kind="agent_message_chunk"):
    return [n["params"]["update"]["content"]["text"] for n in notes
            if n["params"]["update"]["sessionUpdate"] == kind]


@contextlib.contextmanager
def acp(tmp_path, args=(), **env_kw):
    relaunch = env_kw.pop("relaunch", False)
    api_key = env_kw.pop("api_key", True)
    with spawn(["--acp", *args], _env(tmp_path, relaunch=relaunch, api_key=api_key, **env_kw)) as p:
        yield Acp(p)


def test_acp_initialize(tmp_path):
    t0 = time.monotonic()
    with acp(tmp_path) as c:
        c.send_raw(b"this is not JSON\n\n[1, 2]\n")  # ignored, not answered
        res = c.initialize()
        assert time.monotonic() - t0 < 3.0
        assert res["protocolVersion"] == 1
        assert [m["id"] for m in res["authMethods"]] == ["oauth-personal", "gemini-api-key", "vertex-ai"]
        assert res["agentCapabilities"] == {
            "loadSession": True,
            "promptCapabilities": {"image": True, "audio": True, "embeddedContext": True},
            "mcpCapabilities": {"http": True, "sse": True}}
        msg, notes = c.call("session/unknown_thing", {})
        assert notes == [] and msg["error"]["code"] == -32601
        assert msg["error"]["message"] == "Method not found"
        c.send({"jsonrpc": "2.0", "method": "some/notification", "params": {}})  # no answer
        msg, notes = c.call("session/prompt", {"sessionId": "nope", "prompt": []})
        assert notes == [] and msg["error"]["code"] == -32603
        # No 500 ms rule: a silent, open stdin keeps it waiting.
        time.sleep(0.7)
        assert c.p.poll() is None
        # EOF: exit 0.
        c.p.stdin.close()
        assert c.p.wait(timeout=3) == 0 and c.read() is None


def test_acp_init_delay(tmp_path):
    with acp(tmp_path, FAKE_GEMINI_ACP_INIT_DELAY="0.4") as c:
        t0 = time.monotonic()
        rid = c.request("initialize", {"protocolVersion": 1, "clientCapabilities": {}})
        c.response(rid)
        assert time.monotonic() - t0 >= 0.3
    with acp(tmp_path, FAKE_GEMINI_ACP_STARTUP="hang-before-init") as c:
        c.request("initialize", {"protocolVersion": 1, "clientCapabilities": {}})
        time.sleep(0.5)
        assert c.p.poll() is None and c.buf == b""
        import select
        assert select.select([c.fd], [], [], 0)[0] == []
        os.killpg(c.p.pid, signal.SIGTERM)
        assert c.p.wait(timeout=3) == 0


def test_acp_normal_prompt(tmp_path):
    with acp(tmp_path, ["-m", "gemini-2.5-flash"]) as c:
        c.initialize()
        msg, notes = c.call("session/new", {"cwd": str(tmp_path), "mcpServers": []})
        sid = msg["result"]["sessionId"]
        assert len(sid) == 36 and sid.count("-") == 4
        # available_commands_update follows (clients must ignore it).
        note = c.read()
        assert note == {"jsonrpc": "2.0", "method": "session/update", "params": {
            "sessionId": sid, "update": {"sessionUpdate": "available_commands_update",
                                         "availableCommands": []}}}
        msg, _ = c.call("session/set_model", {"sessionId": sid, "modelId": "gemini-2.5-pro"})
        assert msg["result"] == {}
        msg, notes = c.prompt(sid, "say hi")
        assert chunks(notes) == ["Hello", " from", " the stand-in."]
        assert all(n["params"]["sessionId"] == sid for n in notes)
        assert notes[0]["params"]["update"]["content"] == {"type": "text", "text": "Hello"}
        assert chunks(notes, "agent_thought_chunk") == []
        assert msg["result"] == {"stopReason": "end_turn", "_meta": {"quota": {
            "token_count": {"input_tokens": 1, "output_tokens": 3},
            "model_usage": [{"model": "gemini-2.5-pro",
                             "token_count": {"input_tokens": 1, "output_tokens": 3}}]}}}
        # Still alive: the same session answers again; -m is the default of a new session.
        msg, notes = c.prompt(sid, "FAKE:echo", " again")
        assert chunks(notes) == ["FAKE:echo again"] and msg["result"]["stopReason"] == "end_turn"
        sid2 = c.new_session(tmp_path)
        msg, notes = c.prompt(sid2, "FAKE:long:5")
        assert len(chunks(notes)) == 5
        assert msg["result"]["_meta"]["quota"]["model_usage"][0]["model"] == "gemini-2.5-flash"
        assert msg["result"]["_meta"]["quota"]["token_count"]["output_tokens"] == 5
        time.sleep(0.2)
        assert c.p.poll() is None
        c.p.stdin.close()
        assert c.p.wait(timeout=3) == 0


def test_acp_think(tmp_path):
    with acp(tmp_path) as c:
        c.initialize()
        sid = c.new_session()
        msg, notes = c.prompt(sid, "ponder FAKE:think")
        kinds = [n["params"]["update"]["sessionUpdate"] for n in notes
                 if n["params"]["update"]["sessionUpdate"] != "available_commands_update"]
        assert kinds == ["agent_thought_chunk"] + ["agent_message_chunk"] * 3
        assert chunks(notes, "agent_thought_chunk") == ["**Thinking**\nabout it"]
        assert chunks(notes) == ["Hello", " from", " the stand-in."]
        assert msg["result"]["_meta"]["quota"]["token_count"]["output_tokens"] == 3
        # think combines with another directive
        msg, notes = c.prompt(sid, "FAKE:think FAKE:slow:10")
        assert len(chunks(notes, "agent_thought_chunk")) == 1 and len(chunks(notes)) == 5


def test_acp_quota_then_another_session(tmp_path):
    with acp(tmp_path) as c:
        c.initialize()
        sid = c.new_session()
        msg, notes = c.prompt(sid, "FAKE:quota")
        assert chunks(notes) == [] and "result" not in msg
        e = msg["error"]
        assert e["code"] == 429
        assert e["message"].startswith("You exceeded your current quota")
        assert "Please retry in 17.5s." in e["message"] and "[API Error" not in e["message"]
        time.sleep(0.1)
        assert c.p.poll() is None
        msg, _ = c.prompt(c.new_session(), "FAKE:quota-noretry")
        assert msg["error"]["code"] == 429 and "retry" not in msg["error"]["message"].lower()
        msg, notes = c.prompt(c.new_session(), "hi again")
        assert chunks(notes) == ["Hello", " from", " the stand-in."]
        assert msg["result"]["stopReason"] == "end_turn"


@pytest.mark.parametrize("status", [404, 500])
def test_acp_api_error(tmp_path, status):
    with acp(tmp_path, ["-m", "gemini-2.5-flash"]) as c:
        c.initialize()
        sid = c.new_session()
        msg, notes = c.prompt(sid, f"FAKE:api-error:{status}")
        assert chunks(notes) == []
        e = msg["error"]
        assert e["code"] == status
        body = json.loads(e["message"])
        assert body["error"]["code"] == status and body["error"]["message"]
        if status == 404:
            assert "gemini-2.5-flash is not found" in body["error"]["message"]
        else:
            assert body == {"error": {"code": 500, "message": "Internal error encountered.",
                                      "status": "INTERNAL"}}
        msg, _ = c.prompt(sid, "ok now")
        assert msg["result"]["stopReason"] == "end_turn"


def test_acp_safety(tmp_path):
    with acp(tmp_path) as c:
        c.initialize()
        msg, notes = c.prompt(c.new_session(), "FAKE:safety please")
        assert chunks(notes) == [] and chunks(notes, "agent_thought_chunk") == []
        res = msg["result"]
        assert res["stopReason"] == "end_turn" and "blocked" not in json.dumps(res)
        assert res["_meta"]["quota"]["token_count"]["output_tokens"] == 0


def test_acp_crash_and_exit(tmp_path):
    with acp(tmp_path) as c:
        c.initialize()
        sid = c.new_session()
        rid = c.request("session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "FAKE:crash"}]})
        msgs = []
        while (m := c.read()) is not None:
            msgs.append(m)
        assert c.p.wait(timeout=3) == 1
        assert chunks([m for m in msgs if m.get("method") == "session/update"]) == ["Hello", " from"]
        assert not any(m.get("id") == rid for m in msgs)
        stderr = c.p.stderr.read().decode()
        assert "fake crash" in stderr and "    at " in stderr
    with acp(tmp_path) as c:
        c.initialize()
        sid = c.new_session()
        rid = c.request("session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "FAKE:exit:7"}]})
        while (m := c.read()) is not None:  # only the session's available_commands_update
            assert m.get("id") != rid and "agent_message_chunk" not in json.dumps(m)
        assert c.p.wait(timeout=3) == 7
        assert "fake failure" in c.p.stderr.read().decode()


@pytest.mark.parametrize("relaunch", [False, True])
def test_acp_sigterm_exits_0_quickly(tmp_path, relaunch):
    with acp(tmp_path, relaunch=relaunch) as c:
        c.initialize()
        sid = c.new_session()
        rid = c.request("session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "FAKE:hang"}]})
        time.sleep(0.2)
        assert c.p.poll() is None
        t0 = time.monotonic()
        os.killpg(c.p.pid, signal.SIGTERM)
        assert c.p.wait(timeout=3) == 0
        assert time.monotonic() - t0 < 0.5
        while (m := c.read()) is not None:
            assert m.get("id") != rid


def test_acp_cancel_and_stubborn(tmp_path):
    with acp(tmp_path) as c:
        c.initialize()
        sid = c.new_session()
        rid = c.request("session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "FAKE:hang"}]})
        time.sleep(0.1)
        c.send({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": sid}})
        msg, _ = c.response(rid)
        assert msg["result"] == {"stopReason": "cancelled"}
        rid = c.request("session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "FAKE:stubborn"}]})
        time.sleep(0.1)
        os.killpg(c.p.pid, signal.SIGTERM)
        c.p.stdin.close()
        time.sleep(0.3)
        assert c.p.poll() is None
        os.killpg(c.p.pid, signal.SIGKILL)
        assert c.p.wait(timeout=3) == -signal.SIGKILL


def test_acp_auth_exit_41(tmp_path):
    with acp(tmp_path, api_key=False) as c:
        c.send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": 1, "clientCapabilities": {}}})
        assert c.p.wait(timeout=5) == 41
        assert c.read() is None
        assert "Please set an Auth method in your" in c.p.stderr.read().decode()


def test_acp_record_file(tmp_path):
    rec = tmp_path / "rec"
    sysmd = tmp_path / "system.md"
    sysmd.write_text("You are terse.")
    with acp(tmp_path, ["-m", "flash"], FAKE_GEMINI_RECORD_DIR=rec, GEMINI_SYSTEM_MD=sysmd) as c:
        c.initialize()
        sid = c.new_session(tmp_path)
        sysmd.write_text("You are verbose.")  # read at session/new, not later
        c.call("session/set_model", {"sessionId": sid, "modelId": "gemini-2.5-pro"})
        secret = "user secret text 12345"
        png = b"\x89PNG\r\n\x1a\n" + b"\0" * 17
        import base64
        msg, _ = c.prompt(sid, secret, {"type": "image", "mimeType": "image/png",
                                        "data": base64.b64encode(png).decode()}, " tail")
        assert msg["result"]["stopReason"] == "end_turn"
        files = list(rec.glob("*.json"))
        assert len(files) == 1 and not list(rec.glob("*.tmp"))
        d = json.loads(files[0].read_text())
        assert d["mode"] == "acp" and d["argv"][1:] == ["--acp", "-m", "flash"]
        assert d["pid"] == c.p.pid and d["parent_pid"] is None
        assert d["stdin"] == secret + " tail" and d["prompt"] == d["stdin"]
        assert d["images"] == [{"mimeType": "image/png", "bytes": len(png)}]
        assert d["system_md"] == "You are terse." and d["system_md_text"] == "You are terse."
        assert d["acp_model"] == "gemini-2.5-pro"
        assert d["session_ids"] == [sid] and d["env"]["GEMINI_SYSTEM_MD"] == str(sysmd)
        assert d["prompts"][0]["model"] == "gemini-2.5-pro"
        # A second session re-reads the system prompt; without set_model it has -m's model.
        sid2 = c.new_session(tmp_path)
        c.prompt(sid2, "second")
        d = json.loads(files[0].read_text())
        assert d["system_md"] == "You are verbose." and d["acp_model"] == "flash"
        assert d["stdin"] == "second" and len(d["prompts"]) == 2
        assert d["prompts"][1]["system_md"] == "You are verbose."
        # A missing system prompt file fails that session/new only.
        sysmd.unlink()
        msg, _ = c.call("session/new", {"cwd": str(tmp_path), "mcpServers": []})
        assert msg["error"]["code"] == -32603 and "system.md" in json.dumps(msg["error"])
        assert c.p.poll() is None
