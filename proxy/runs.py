"""Starting the CLI run for a request: find the CLI and the login, lay out the run, spawn.

`spawn_run` is the one way a gemini process comes to life, for a request (cold) and for the
warm pool alike: a private run dir, a CLI home with the generated settings and a copy of the
login, the system prompt file, the primer in the pipe. `start_run` takes a warm process from
the pool when one fits the request, and spawns one otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import current_app

from .chat_request import ChatRequest
from .cli_home import UserAuth, cli_settings, find_user_auth, write_cli_home
from .cli_run import CliRun
from .errors import ApiError, no_retry_headers
from .limits import Slot
from .prompt import Prompt


def start_run(chat: ChatRequest, prompt: Prompt) -> CliRun:
    """A CLI run fed with this request, or the ApiError that says why it cannot run."""
    config = current_app.config
    gemini_bin = config["GEMINI_BIN"]
    if not gemini_bin:
        raise gemini_not_found(None)
    auth = find_user_auth(config["PROXY_GEMINI_CONFIG"])
    if auth.problem:
        raise ApiError(503, auth.problem, code="gemini_auth_missing", headers=no_retry_headers())
    pool = current_app.extensions.get("warm_pool")
    run = pool.take(chat.cli_model, prompt.system_text) if pool is not None else None
    if run is not None:
        run.from_pool = True
    try:
        if run is None:
            slot = current_app.extensions["run_limiter"].acquire()  # or 429 after queueing
            run = spawn_run(config, auth, slot, chat.cli_model, prompt.system_text)
    finally:
        if pool is not None:
            pool.wake()  # replace what was taken, or warm up for this request's key
    try:
        run.feed(prompt.text, prompt.images)
    except BaseException:
        run.close()
        raise
    return run


def spawn_run(config: Mapping[str, Any], auth: UserAuth, slot: Slot, cli_model: str, system_text: str) -> CliRun:
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
        write_cli_home(run.dir, run.home, cli_settings(auth.auth_type, config["PROXY_CLI_MAX_ATTEMPTS"],
                                                       config["PROXY_TOOLS"]), auth)
        run.spawn(gemini_bin, cli_model, system_text)
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
