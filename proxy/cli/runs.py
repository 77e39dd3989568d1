"""Starting the CLI run for a request: find the CLI and the login, lay out the run, spawn.

`spawn_run` is the one way a gemini process comes to life, for a request (cold) and for the
warm pool alike: a private run dir, a CLI home with the generated settings and a copy of the
login, the system prompt file, the primer in the pipe (headless) or `initialize` (ACP).
`start_run` takes a warm process from the pool when one fits the request, and spawns one
otherwise; then feeds it the prompt (headless) or prepares its session (ACP).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import current_app

from ..service.errors import ApiError, no_retry_headers
from ..service.limits import Slot
from .acp import ahead_session, prepare_session
from .home import UserAuth, cli_settings, find_user_auth, write_cli_home
from .process import CliRun
from .prompt import Prompt
from .spec import TOOL_SOCKET, TOOLS_FILE, RunSpec


def start_run(spec: RunSpec, prompt: Prompt) -> CliRun:
    """A CLI run fed with this request, or the ApiError that says why it cannot run."""
    config = current_app.config
    gemini_bin = config["GEMINI_BIN"]
    if not gemini_bin:
        raise gemini_not_found(None)
    auth = find_user_auth(config["PROXY_GEMINI_CONFIG"])
    if auth.problem:
        raise ApiError(503, auth.problem, code="gemini_auth_missing", headers=no_retry_headers())
    pool = current_app.extensions.get("warm_pool")
    run = pool.take(spec) if pool is not None else None
    if run is not None:
        run.from_pool = True
    try:
        if run is None:
            slot = current_app.extensions["run_limiter"].acquire()  # or 429 after queueing
            run = spawn_run(config, auth, slot, spec)
    finally:
        if pool is not None:
            pool.wake()  # replace what was taken, or warm up for this request's key
    try:
        if run.acp:
            # Its session opened ahead, if the run was started for this spec; else a new one
            # that reads the request's own settings and system prompt (proxy/cli/acp.py).
            prepare_session(run, spec, run_settings(config, auth, spec, run.dir), prompt.system_text)
        else:
            run.feed(prompt.text, prompt.images)
    except BaseException:
        run.close()
        raise
    return run


def run_settings(config: Mapping[str, Any], auth: UserAuth, spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """The settings.json of a run of `spec` laid out in `run_dir`."""
    return cli_settings(auth.auth_type, config["PROXY_CLI_MAX_ATTEMPTS"], config["PROXY_TOOLS"],
                        client_tools=spec.cli_tool_names(), mcp_servers=spec.mcp_servers(run_dir),
                        model_configs=json.loads(spec.model_configs) if spec.model_configs else None)


def spawn_run(config: Mapping[str, Any], auth: UserAuth, slot: Slot, spec: RunSpec) -> CliRun:
    """Lay out a run holding `slot` (released when the run closes) and start the CLI in it;
    the CLI then initialises and waits for `feed()`."""
    try:
        run = CliRun(config["PROXY_RUN_DIR"], config["PROXY_KILL_GRACE"])
    except BaseException:
        slot.release()
        raise
    run.on_close.append(slot.release)
    gemini_bin = config["GEMINI_BIN"]
    try:
        write_cli_home(run.dir, run.home, run_settings(config, auth, spec, run.dir), auth)
        if spec.tools:
            (run.dir / TOOLS_FILE).write_text(json.dumps(spec.tool_declarations()), encoding="utf-8")
            run.listen_for_tool_calls(run.dir / TOOL_SOCKET)
        acp = spec.interface == "acp"
        run.spec = spec
        run.spawn(gemini_bin, spec.cli_model, spec.system_text, acp=acp, ahead=ahead_session(run) if acp else ())
    except (FileNotFoundError, PermissionError) as exc:
        run.close()
        raise gemini_not_found(gemini_bin) from exc
    except BaseException:
        run.close()
        raise
    return run


def gemini_not_found(gemini_bin: str | None) -> ApiError:
    where = f"`{gemini_bin}` could not be run" if gemini_bin else "no `gemini` on PATH"
    return ApiError(503, f"The gemini CLI was not found ({where}). Install it (`npm install -g "
                    "@google/gemini-cli`, or `npm ci` in the proxy's folder) or set GEMINI_BIN.",
                    code="gemini_not_found", headers=no_retry_headers())
