"""Real coding agents, headless, against the gateway: agent -> gunicorn/gevent -> proxy -> real
`gemini` CLI -> loopback mock Gemini API. Each agent reads a file with its own tool (which
it runs itself, on this machine) and answers with what the file says.

- Codex CLI (`codex exec`, the Responses API: POST /v1/responses), with its `exec_command`
  shell tool, in its read-only sandbox.
- Claude Code (`claude -p`, the Anthropic Messages API: POST /v1/messages), with its `Read`
  tool, under its default Claude model name (which the gateway maps onto Gemini).

Both are pinned npm packages (package.json; `npm ci`, which bin/test runs, installs them into
node_modules/.bin). AGENT_BIN_DIR points the tests at another install (a directory holding
`codex` and `claude`). Each agent runs in its own process group with a bounded wait, in an
empty temp working dir and HOME, with a marker in its environment; whatever is left of it is
killed when the test ends. Every proxy variable points at a loopback sinkhole that refuses and
records what it is asked for (127.0.0.1 itself is exempt via NO_PROXY), so a request the agent
tries to send anywhere but the gateway shows up in the assertion.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
from pathlib import Path

import pytest

from tests.headless_run import Ran, clean_env, run_headless
from tests.mock_gemini_api import contents_text, declared_tools, function_call, model_turn
from tests.proxy_server import PROJECT_DIR, pid_alive, wait_until
from tests.test_real_cli import CLI_UPGRADES

AGENT_TIMEOUT = 180  # seconds, for one whole agent run
MARKER_VAR = "GEMINI_PROXY_AGENT_TEST"
# Codex CLI 0.169.0's function tools as the model sees them (the CLI's MCP names for the
# request's tools), in the order it declares them. Its `web_search` tool has no name and is
# off here (`web_search = "disabled"`); the gateway would not offer it anyway.
CODEX_TOOLS = ["mcp_fn_exec_command", "mcp_fn_write_stdin", "mcp_fn_request_user_input", "mcp_fn_view_image",
               "mcp_fn_get_goal", "mcp_fn_create_goal", "mcp_fn_update_goal"]


def agent_bin(name: str) -> Path:
    """The agent's executable: node_modules/.bin/<name>, or $AGENT_BIN_DIR/<name>."""
    bin_dir = Path(os.environ["AGENT_BIN_DIR"]) if os.environ.get("AGENT_BIN_DIR") else (
        PROJECT_DIR / "node_modules" / ".bin")
    path = bin_dir / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run bin/test (or `npm ci`), which installs the pinned agents "
                    "from package.json; AGENT_BIN_DIR can point at another install")
    return path


class Sinkhole:
    """A loopback HTTP proxy that forwards nothing: it records the first line of every request
    (`CONNECT host:443 HTTP/1.1` for https) and answers 403."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="agent-sinkhole", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5)
                    head = conn.recv(8192)
                    self.requests.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def sinkhole():
    hole = Sinkhole()
    yield hole
    hole.close()


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment carries this run's marker (the agent's descendants,
    whatever process group or session they moved to)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def agent_env(tmp_path: Path, sinkhole: Sinkhole, marker: str, **extra: str) -> dict[str, str]:
    """A clean environment (tests/headless_run.py): every proxy variable at the sinkhole (loopback
    exempt), the run's marker."""
    env = clean_env(tmp_path, "agent-home", **{MARKER_VAR: marker})
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = sinkhole.url
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def run_agent(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = AGENT_TIMEOUT) -> Ran:
    """Run an agent headless (tests/headless_run.py); every process carrying its marker counts as
    its own, wherever it moved, and must be gone soon after it."""
    return run_headless(argv, cwd=cwd, env=env, timeout=timeout,
                        stragglers=lambda: marked_processes(env[MARKER_VAR]))


def new_request_lines(server, before: int, count: int) -> list[str]:
    """The gateway's request log lines after the first `before`, once there are `count` of them
    (a line is written when its run has ended, which may be just after the reply)."""
    wait_until(lambda: len(server.request_lines()) >= before + count, 15)
    return server.request_lines()[before:]


def secret_task(tmp_path: Path) -> tuple[str, Path]:
    """A fresh working dir holding notes.txt with a random secret."""
    secret = f"s3cret-{secrets.token_hex(8)}"
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text(f"The secret word is {secret}.\n")
    return secret, work


def assert_agent_left_nothing(done: Ran, sinkhole: Sinkhole, server) -> None:
    assert not done.group_left, f"the agent's process group outlived it:\n{done.describe()}"
    assert not done.left_behind, f"processes of the agent's run outlived it: {done.left_behind}"
    assert sinkhole.requests == [], f"the agent tried to reach more than the gateway: {sinkhole.requests}"
    assert wait_until(lambda: not server.run_dirs(), 10), server.run_dirs()


# -- Codex CLI: codex exec, its shell tool --------------------------------------------------------

def codex_config(base_url: str) -> str:
    """CODEX_HOME/config.toml: the gateway as a Responses API provider, nothing that phones
    home (checked: --strict-config rejects a key this Codex does not know, and the sinkhole
    sees every attempt), commands in Codex's read-only sandbox without asking."""
    return f"""\
model = "gemini-cli"
model_provider = "gemini-proxy"
# Commands run in the read-only sandbox (bubblewrap), never an approval prompt.
sandbox_mode = "read-only"
approval_policy = "never"
# Nothing but the gateway: no update check, no web search tool, no analytics, feedback or
# OpenTelemetry export, no history file.
check_for_update_on_startup = false
web_search = "disabled"

[features]
# The curated plugin sync (git ls-remote https://github.com/openai/plugins.git, then
# api.github.com, then chatgpt.com/backend-api/plugins/export/curated) runs on every start.
plugins = false

[analytics]
enabled = false

[feedback]
enabled = false

[history]
persistence = "none"

[otel]
exporter = "none"
metrics_exporter = "none"
trace_exporter = "none"

[model_providers.gemini-proxy]
name = "gemini-proxy"
base_url = "{base_url}/v1"
wire_api = "responses"
env_key = "GEMINI_PROXY_KEY"
# A failure shows at once instead of after Codex's retries.
request_max_retries = 0
stream_max_retries = 0
"""


def test_codex_exec_reads_a_file_with_its_shell_tool(real_server, mock, tmp_path, sinkhole):
    codex = agent_bin("codex")
    secret, work = secret_task(tmp_path)
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(codex_config(real_server.base_url))
    last_message = tmp_path / "last-message.txt"
    declared: list[list[str]] = []

    def script(body):
        names = [d["name"] for d in declared_tools(body)]
        declared.append(names)
        if secret in contents_text(body):  # the command's output came back
            return model_turn([{"text": f"The secret is {secret}"}])
        if "mcp_fn_exec_command" in names:
            return model_turn([function_call("mcp_fn_exec_command", {"cmd": "cat notes.txt"})])
        return None  # the mock's default text: the assertions below then fail

    mock.configure(script=script)
    lines_before = len(real_server.request_lines())
    env = agent_env(tmp_path, sinkhole, secrets.token_hex(8), CODEX_HOME=str(codex_home),
                    GEMINI_PROXY_KEY="sk-test")
    done = run_agent([str(codex), "exec", "--skip-git-repo-check", "--strict-config", "--ephemeral",
                      "--color", "never", "-o", str(last_message), "Read notes.txt and tell me the secret word."],
                     cwd=work, env=env)
    assert done.returncode == 0, done.describe() + "\n--- gateway log\n" + real_server.log()[-4000:]
    assert secret in done.stdout, done.describe()
    assert last_message.read_text().strip() == f"The secret is {secret}", done.describe()

    # The task's requests: those carrying Codex's tools (it may send others of its own alongside).
    requests = [body for body in mock.stream_bodies() if declared_tools(body)]
    assert len(requests) == 2, (declared, done.describe())
    first, second = requests
    assert declared[0] == CODEX_TOOLS
    shell = next(d for d in declared_tools(first) if d["name"] == "mcp_fn_exec_command")
    assert shell["parametersJsonSchema"]["required"] == ["cmd"]
    assert secret not in contents_text(first)
    # Codex ran the command itself (in its sandbox) and sent its output back as the call's result.
    history = contents_text(second)
    assert "(called the tool exec_command with call id " in history
    assert ' to exec_command) #' in history
    assert "Process exited with code 0" in history, history[-2000:]
    assert f"The secret word is {secret}." in history
    # Both were streamed Responses requests that ended well (as did any other Codex sent).
    lines = new_request_lines(real_server, lines_before, 2)
    assert len(lines) >= 2 and all("stream=true" in ln and "status=200" in ln for ln in lines), lines

    assert_agent_left_nothing(done, sinkhole, real_server)
    assert not any((tmp_path / "agent-home").iterdir()), "codex wrote into HOME"


# -- Claude Code: claude -p, its Read tool ---------------------------------------------------------

# Claude Code 2.1.328's tools as the model sees them, in the order it declares them (the rest of
# its tools are deferred behind ToolSearch).
CLAUDE_TOOLS = ["mcp_fn_Agent", "mcp_fn_Bash", "mcp_fn_Edit", "mcp_fn_ListAgents", "mcp_fn_Read",
                "mcp_fn_ReportFindings", "mcp_fn_ScheduleWakeup", "mcp_fn_Skill", "mcp_fn_ToolSearch",
                "mcp_fn_Workflow", "mcp_fn_DeferredToolPlaceholder", "mcp_fn_Write"]
CLAUDE_DEFAULT_MODEL = "claude-opus-5-5"  # what Claude Code 2.1.328 asks for without --model


@pytest.mark.parametrize("model", [None, "gemini-cli"], ids=["default-claude-model", "gemini-cli"])
def test_claude_code_reads_a_file_with_its_read_tool(real_server, mock, tmp_path, sinkhole, model):
    claude = agent_bin("claude")
    secret, work = secret_task(tmp_path)
    notes = str(work / "notes.txt")
    declared: list[list[str]] = []

    def script(body):
        names = [d["name"] for d in declared_tools(body)]
        declared.append(names)
        if secret in contents_text(body):  # the Read tool's result came back
            return model_turn([{"text": f"The secret is {secret}"}])
        if "mcp_fn_Read" in names:
            return model_turn([function_call("mcp_fn_Read", {"file_path": notes})])
        return None  # the mock's default text: the assertions below then fail

    mock.configure(script=script)
    lines_before = len(real_server.request_lines())
    env = agent_env(
        tmp_path, sinkhole, secrets.token_hex(8),
        ANTHROPIC_BASE_URL=real_server.base_url, ANTHROPIC_AUTH_TOKEN="sk-test",
        # Offline: no update check or auto-update, no telemetry, error reports or other
        # non-essential requests (the sinkhole checks that nothing else is tried).
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1", DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
    )
    argv = [str(claude), "-p", "Read notes.txt and tell me the secret word.", "--allowedTools", "Read",
            "--output-format", "json"]
    if model:
        argv += ["--model", model]
    done = run_agent(argv, cwd=work, env=env)
    assert done.returncode == 0, done.describe() + "\n--- gateway log\n" + real_server.log()[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["result"] == f"The secret is {secret}", done.describe()
    assert result["is_error"] is False and result["num_turns"] == 2, done.describe()
    assert result["permission_denials"] == [], done.describe()

    requests = [body for body in mock.stream_bodies() if declared_tools(body)]  # the task's requests
    assert len(requests) == 2, (declared, done.describe())
    first, second = requests
    assert declared[0] == CLAUDE_TOOLS
    read = next(d for d in declared_tools(first) if d["name"] == "mcp_fn_Read")
    assert read["parametersJsonSchema"]["required"] == ["file_path"]
    assert secret not in contents_text(first)
    # Claude Code ran its Read tool itself and sent the file back as the call's result.
    history = contents_text(second)
    assert "(called the tool Read with call id toolu_" in history and " to Read) #" in history
    assert f"The secret word is {secret}." in history
    # Both were streamed Messages requests that ended well, under the name Claude Code asked
    # for; a claude-* name reaches the API as the default Gemini model, as gemini-cli does.
    lines = new_request_lines(real_server, lines_before, 2)
    asked = model or CLAUDE_DEFAULT_MODEL
    task_lines = [ln for ln in lines if f"model={asked} " in ln]
    assert len(task_lines) >= 2 and all(f"model={asked} stream=true status=200" in ln for ln in task_lines), lines
    assert {r.model for r in mock.generate_requests()} == {CLI_UPGRADES["gemini-3-flash"]}

    assert_agent_left_nothing(done, sinkhole, real_server)
