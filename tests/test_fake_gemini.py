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
