"""The CLI home every run gets: settings the proxy generates, plus copies of the user's login.

Runs never share the user's `~/.gemini`: the CLI writes session transcripts, locks and
project lists there, which would leak prompts to disk and make parallel runs contend. The
user's gemini configuration is only read, to learn which login to use and to copy its
credential files into the run's private home (removed with the run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Files of a user's gemini configuration that carry a login. Copied, never linked: a token
# refresh by the CLI rewrites oauth_creds.json, and must not write into the user's home.
AUTH_FILES = ("oauth_creds.json", "google_accounts.json", ".env")

# Built-in tools offered with PROXY_TOOLS=read-only. web_fetch is left out on purpose: it
# would let a prompt make the server fetch addresses on its own network.
READ_ONLY_TOOLS = ["list_directory", "read_file", "glob", "grep_search", "google_web_search"]

LOGIN_HELP = ("Run `gemini` once in a terminal, as the user the proxy runs as, and log in "
              "(or set GEMINI_API_KEY for the proxy), then retry.")


@dataclass
class UserAuth:
    """Which login the CLI should use, and the files that carry it."""

    auth_type: str | None
    files: dict[str, bytes] = field(default_factory=dict)
    problem: str | None = None


def _env_auth_type(environ: Mapping[str, str]) -> str | None:
    # The order the CLI itself uses when settings name no auth type.
    if environ.get("GOOGLE_GENAI_USE_GCA", "").lower() == "true":
        return "oauth-personal"
    if environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() == "true":
        return "vertex-ai"
    if environ.get("GEMINI_API_KEY"):
        return "gemini-api-key"
    return None


def _settings_auth_type(config_dir: Path) -> str | None:
    try:
        settings = json.loads((config_dir / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(settings, dict):
        return None
    auth = settings.get("security", {}).get("auth", {}) if isinstance(settings.get("security"), dict) else {}
    selected = auth.get("selectedType") if isinstance(auth, dict) else None
    return selected or settings.get("selectedAuthType")


def find_user_auth(config_dir: str, environ: Mapping[str, str] | None = None) -> UserAuth:
    """Read (never write) the user's gemini configuration to find a usable login."""
    environ = os.environ if environ is None else environ
    directory = Path(config_dir)
    files = {}
    for name in AUTH_FILES:
        try:
            files[name] = (directory / name).read_bytes()
        except OSError:
            pass
    auth_type = _settings_auth_type(directory) or _env_auth_type(environ)
    problem = None
    if auth_type is None:
        problem = f"No Gemini login found in {directory} or the environment. {LOGIN_HELP}"
    elif auth_type == "oauth-personal" and "oauth_creds.json" not in files:
        problem = f"The Google login's credentials are missing from {directory}. {LOGIN_HELP}"
    elif auth_type == "gemini-api-key" and not environ.get("GEMINI_API_KEY") and ".env" not in files:
        problem = ("The gemini configuration selects an API key, but GEMINI_API_KEY is not set for "
                   "the proxy. Set it in the proxy's environment, then retry.")
    elif auth_type == "vertex-ai" and not (
            (environ.get("GOOGLE_CLOUD_PROJECT") and environ.get("GOOGLE_CLOUD_LOCATION"))
            or environ.get("GOOGLE_API_KEY") or ".env" in files):
        problem = ("The gemini configuration selects Vertex AI, but GOOGLE_CLOUD_PROJECT and "
                   "GOOGLE_CLOUD_LOCATION (or GOOGLE_API_KEY) are not set for the proxy. Set them "
                   "(and run `gcloud auth application-default login`), then retry.")
    return UserAuth(auth_type=auth_type, files=files, problem=problem)


def cli_settings(auth_type: str | None, max_attempts: int, tools: str, client_tools: list[str] = (),
                 mcp_servers: dict[str, Any] | None = None, model_configs: dict[str, Any] | None = None,
                 max_session_turns: int | None = None) -> dict[str, Any]:
    """The settings.json every process gets; `client_tools`, `mcp_servers` and `model_configs` are
    what a request adds (its tools' names and server, its generation settings): in the CLI home
    for a headless run, in the session's own workspace settings over ACP (proxy/cli/acp.py)."""
    settings: dict[str, Any] = {
        # The CLI's own telemetry costs two requests to Google per run.
        "privacy": {"usageStatisticsEnabled": False},
        # Few retries: a failing API should fail in seconds (the client's SDK retries anyway);
        # no retention sweep: it is what deletes other runs' files and leaves stale locks.
        "general": {"maxAttempts": max(1, max_attempts), "sessionRetention": {"enabled": False}},
        # A chat gateway offers the model no file or shell access unless configured to. The list
        # is an allowlist: the client's tools are declared only under their exact names.
        "tools": {"core": (READ_ONLY_TOOLS if tools == "read-only" else []) + list(client_tools)},
        # `@generalist` and friends in user text must not delegate to an agent.
        "experimental": {"enableAgents": False},
        # The workspace is an empty temp dir: its tree is noise in every request.
        "context": {"includeDirectoryTree": False},
    }
    if max_session_turns:
        # One model turn a prompt: a turn that calls tools ends before their results go back
        # to the API (proxy/cli/mcp_tool_server.py), and no request ever makes two API calls.
        settings["model"] = {"maxSessionTurns": max_session_turns}
    if auth_type:
        settings["security"] = {"auth": {"selectedType": auth_type}}
    if mcp_servers:
        settings["mcpServers"] = mcp_servers
    if model_configs:
        settings["modelConfigs"] = model_configs
    return settings


def write_cli_home(run_dir: Path, home: Path, settings: dict[str, Any], auth: UserAuth) -> None:
    """Lay out `<home>/.gemini/` for one run (the caller removes it with the run).

    The CLI loads the first `.gemini/.env` or `.env` it finds walking up from its cwd, in
    every ancestor: a file another local user left in /tmp would set its environment (an
    API base URL, say). The run dir, the cwd's parent, therefore always holds one, with the
    user's own `.env` (if any) or nothing, and the walk stops there.
    """
    gemini_dir = home / ".gemini"
    gemini_dir.mkdir(mode=0o700, parents=True)
    (gemini_dir / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    for name, data in auth.files.items():
        if name == ".env":
            continue
        path = gemini_dir / name
        path.write_bytes(data)
        path.chmod(0o600)
    env_dir = run_dir / ".gemini"
    env_dir.mkdir(mode=0o700, exist_ok=True)
    (env_dir / ".env").write_bytes(auth.files.get(".env", b""))
