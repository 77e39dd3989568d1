"""Real clients, headless, against the gateway: client -> gunicorn/gevent -> proxy -> real
`gemini` CLI -> loopback mock Gemini API, with tool calls the client itself runs.

- openai-node's tool runner (`chat.completions.runTools`, tests/clients/run_tools.mjs),
  streamed and not.
- The Continue CLI (`cn -p`), an agent that reads a file with its own `Read` tool.

Both are pinned npm packages (package.json; `npm ci`, which bin/test runs, installs them).
Each client runs in its own process group with a bounded wait and is killed when the test
ends; its HOME is an empty temp dir, and tests/clients/loopback_only.mjs (preloaded with
NODE_OPTIONS) stops it from reaching anything but 127.0.0.1.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import pytest

from tests.headless_run import Ran, clean_env, run_headless
from tests.mock_gemini_api import contents_text, declared_tools, function_call, model_turn
from tests.proxy_server import PROJECT_DIR, wait_until

CLIENTS = PROJECT_DIR / "tests" / "clients"
LOOPBACK_ONLY = CLIENTS / "loopback_only.mjs"
RUN_TOOLS = CLIENTS / "run_tools.mjs"
OPENAI_NODE = PROJECT_DIR / "node_modules" / "openai" / "package.json"
CONTINUE_CLI = PROJECT_DIR / "node_modules" / ".bin" / "cn"
# Continue CLI 1.5.47's tools as the model sees them (the CLI's MCP names for the request's
# tools), in the order it declares them.
CONTINUE_TOOLS = ["mcp_fn_Read", "mcp_fn_List", "mcp_fn_Bash", "mcp_fn_Fetch", "mcp_fn_Checklist",
                  "mcp_fn_CheckBackgroundJob", "mcp_fn_AskQuestion", "mcp_fn_Exit", "mcp_fn_Skills"]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path.relative_to(PROJECT_DIR)} is missing: run `npm ci` (bin/test does)")
    return path


def node() -> str:
    found = shutil.which("node")
    if not found:
        pytest.fail("node is not on PATH: the client tests need node >= 20 (and `npm ci`)")
    return found


def client_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment (tests/headless_run.py) with the loopback guard preloaded."""
    return clean_env(tmp_path, "client-home", NODE_OPTIONS=f"--import={LOOPBACK_ONLY.as_uri()}",
                     LOOPBACK_ONLY_LOG=str(tmp_path / "loopback-only.log"), **extra)


def run_client(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> Ran:
    """Run a client headless (tests/headless_run.py); its loopback guard must have been loaded."""
    done = run_headless(argv, cwd=cwd, env=env, timeout=timeout)
    log_path = Path(env["LOOPBACK_ONLY_LOG"])
    guard_log = log_path.read_text(errors="replace") if log_path.exists() else ""
    done.notes = f"--- loopback guard\n{guard_log[-2000:]}"
    assert " loaded " in guard_log, f"the loopback guard was not loaded:\n{done.describe()}"
    return done


# -- openai-node: chat.completions.runTools ---------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["non-streamed", "streamed"])
def test_openai_node_run_tools(real_server, mock, tmp_path, stream):
    need(OPENAI_NODE)
    tag = f"tag-{secrets.token_hex(6)}"
    answer = f"Oslo has light rain and 12 C (report {tag})."

    def script(body):
        if tag in contents_text(body):  # the tool's result is in the history
            return model_turn([{"text": answer}])
        if "mcp_fn_get_weather" in {d["name"] for d in declared_tools(body)}:
            return model_turn([function_call("mcp_fn_get_weather", {"city": "Oslo"})])
        return None  # the mock's default text: the assertions below then fail

    mock.configure(script=script)
    done = run_client(
        [node(), str(RUN_TOOLS), "--base-url", real_server.base_url + "/v1", "--stream", str(stream).lower(),
         "--tag", tag, "--question", "What is the weather in Oslo?"],
        cwd=tmp_path, env=client_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.describe()
    summary = json.loads(done.stdout.strip().splitlines()[-1])

    assert summary["final_content"] == answer, done.describe()
    if stream:
        assert summary["streamed_text"] == answer
    # The SDK ran the tool once, with the arguments the model gave (no `wait_for_previous`).
    assert summary["tool_runs"] == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    [call] = summary["tool_calls"]
    assert call["type"] == "function" and call["name"] == "get_weather" and call["id"]
    assert json.loads(call["arguments"]) == {"city": "Oslo"}
    assert summary["finish_reasons"] == ["tool_calls", "stop"]
    # Two HTTP requests: the question, then the question + the call + its result.
    assert summary["requests"] == 2, summary
    assert summary["request_roles"] == [["user"], ["user", "assistant", "tool"]]
    assert summary["request_stream"] == [stream, stream]

    # The client's requests are those carrying its tool (a straggler of an earlier test's run may
    # also have reached the shared mock).
    first, second = [body for body in mock.stream_bodies() if declared_tools(body)]
    assert tag not in contents_text(first)
    assert [d["name"] for d in declared_tools(first)] == ["mcp_fn_get_weather"]
    history = contents_text(second)
    assert f"call id {call['id']}" in history
    assert f"result of call {call['id']} to get_weather" in history
    assert tag in history and "light rain, 12 C" in history  # the tool's JSON result
    assert wait_until(lambda: not real_server.run_dirs(), 10), real_server.run_dirs()


# -- Continue CLI: cn -p, with its Read tool ------------------------------------------------------

def test_continue_cli_reads_a_file_with_its_tool(real_server, mock, tmp_path):
    cn = need(CONTINUE_CLI)
    node()  # cn.js runs with the node on PATH
    secret = f"s3cret-{secrets.token_hex(8)}"
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text(f"The secret word is {secret}.\n")
    request_id = f"continue-{secrets.token_hex(6)}"
    config = tmp_path / "config.yaml"
    config.write_text(
        "name: gateway-test\nversion: 0.0.1\nschema: v1\nmodels:\n"
        "  - name: gemini\n    provider: openai\n    model: gemini-cli\n"
        f"    apiBase: {real_server.base_url}/v1\n    apiKey: sk-test\n    roles: [chat]\n"
        # The gateway logs this id for each request, so the test can find its log lines.
        f"    requestOptions:\n      headers:\n        X-Request-Id: {request_id}\n")
    tools_seen: list[list[str]] = []  # the tools each API request declared

    def script(body):
        names = [d["name"] for d in declared_tools(body)]
        tools_seen.append(names)
        if secret in contents_text(body):  # the Read tool's result came back
            return model_turn([{"text": f"The secret is {secret}"}])
        if len(tools_seen) > 3:  # the read keeps failing: end the agent's loop (the test fails)
            return model_turn([{"text": "I could not read the file."}])
        if "mcp_fn_Read" in names:
            return model_turn([function_call("mcp_fn_Read", {"filepath": "notes.txt"})])
        return None  # the mock's default text: the assertions below then fail

    mock.configure(script=script)
    env = client_env(
        tmp_path,
        CONTINUE_GLOBAL_DIR=str(tmp_path / "client-home" / ".continue"),
        # Its OpenTelemetry metrics off, and never a self-update.
        CONTINUE_METRICS_ENABLED="0", CONTINUE_CLI_ENABLE_TELEMETRY="0", CONTINUE_CLI_AUTO_UPDATED="true",
    )
    done = run_client([str(cn), "-p", "Read notes.txt and tell me the secret", "--config", str(config),
                       "--allow", "Read"], cwd=work, env=env, timeout=120)
    assert done.returncode == 0, done.describe()
    assert secret in done.stdout, done.describe()

    requests = [body for body in mock.stream_bodies() if declared_tools(body)]  # Continue's own
    assert len(requests) == 2, (tools_seen, done.describe())
    first, second = requests
    assert tools_seen[0] == CONTINUE_TOOLS
    read = next(d for d in declared_tools(first) if d["name"] == "mcp_fn_Read")
    assert read["parametersJsonSchema"]["required"] == ["filepath"]
    assert secret not in contents_text(first)
    # The second request carried what Continue's Read tool returned, as the result of its call.
    history = contents_text(second)
    assert secret in history
    assert "(called the tool Read with call id " in history and " to Read) #" in history
    assert wait_until(lambda: not real_server.run_dirs(), 10), real_server.run_dirs()
    # Continue streams: both requests were streamed chat requests that ended well.
    ours = f" chat id={request_id} "

    def logged() -> list[str]:
        return [line for line in real_server.request_lines() if ours in line]

    assert wait_until(lambda: len(logged()) >= 2, 10), real_server.request_lines()[-5:]
    assert len(logged()) == 2 and all(" stream=true status=200 outcome=ok " in line for line in logged()), logged()
