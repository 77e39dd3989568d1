"""Starting the CLI run for a request: find the CLI and the login, lay out the run, spawn."""

from __future__ import annotations

from flask import current_app

from .chat_request import ChatRequest
from .cli_home import cli_settings, find_user_auth, write_cli_home
from .cli_run import CliRun
from .errors import ApiError, no_retry_headers
from .prompt import Prompt


def start_run(chat: ChatRequest, prompt: Prompt) -> CliRun:
    """Spawn the CLI for this request, or raise the ApiError that says why it cannot run."""
    config = current_app.config
    gemini_bin = config["GEMINI_BIN"]
    if not gemini_bin:
        raise gemini_not_found(None)
    auth = find_user_auth(config["PROXY_GEMINI_CONFIG"])
    if auth.problem:
        raise ApiError(503, auth.problem, code="gemini_auth_missing", headers=no_retry_headers())
    slot = current_app.extensions["run_limiter"].acquire()  # or 429 after queueing
    try:
        run = CliRun(config["PROXY_RUN_DIR"], config["PROXY_KILL_GRACE"])
    except BaseException:
        slot.release()
        raise
    run.on_close.append(slot.release)
    try:
        write_cli_home(run.dir, run.home, cli_settings(auth.auth_type, config["PROXY_CLI_MAX_ATTEMPTS"],
                                              config["PROXY_TOOLS"]), auth)
        run.spawn(gemini_bin, chat.cli_model, prompt.system_text)
        run.feed(prompt.text, prompt.images)
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
