"""Starting a request's run: the one entry into proxy/cli/ for the gateway.

`start_run` checks that there is a CLI and a login, then gives the request a driver: a session
on a pooled ACP process (proxy/cli/pool.py, proxy/cli/acp.py), or with
PROXY_CLI_INTERFACE=headless a headless process of its own (proxy/cli/headless.py). Both speak
the same small interface (`Run`): `send` the prompt, read `next_event`, `cancel`, `close`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..answer import AnswerEvent
from ..service.errors import ApiError, no_retry_headers
from ..service.limits import RunLimiter
from .headless import HeadlessRun
from .home import find_user_auth
from .pool import ProcessPool
from .process import CliNotRunnable
from .prompt import Prompt
from .spec import AnswerShape, RunSpec


class Run(Protocol):
    """One request's conversation with the CLI, however it is driven."""

    from_pool: bool  # served by a process that was running before the request came
    session_kind: str  # ACP: `ahead` (its session was opened before it came) or `new`; headless: `-`
    handed_at: float | None  # time.perf_counter() when the CLI was given the request

    @property
    def pid(self) -> int | None: ...  # the gemini process's
    @property
    def spawn_ms(self) -> float | None: ...  # the request's own process start, if it had one
    @property
    def exit_code(self) -> int | None: ...  # how its process ended, if it ended with the request

    def send(self, prompt: Prompt) -> None: ...
    def next_event(self, timeout: float) -> AnswerEvent | None: ...  # raises ApiError
    def cancel(self) -> None: ...
    def close(self) -> None: ...  # idempotent, never raises


def start_run(config: Mapping[str, Any], pool: ProcessPool, limiter: RunLimiter, spec: RunSpec,
              shape: AnswerShape, prompt: Prompt, tenant: str) -> Run:
    """A run given this request's prompt, or the ApiError that says why it cannot run."""
    gemini_bin = config["GEMINI_BIN"]
    if not gemini_bin:
        raise gemini_not_found(None)
    auth = find_user_auth(config["PROXY_GEMINI_CONFIG"])
    if auth.problem:
        raise ApiError(503, auth.problem, code="gemini_auth_missing", headers=no_retry_headers())
    try:
        if spec.interface == "headless":
            run: Run = HeadlessRun.start(config, auth, limiter.acquire(), spec, shape)
        else:
            run = pool.take(spec, shape, tenant, auth)
    except CliNotRunnable as exc:
        raise gemini_not_found(gemini_bin) from exc
    try:
        run.send(prompt)
    except BaseException:
        run.close()
        raise
    return run


def gemini_not_found(gemini_bin: str | None) -> ApiError:
    where = f"`{gemini_bin}` could not be run" if gemini_bin else "no `gemini` on PATH"
    return ApiError(503, f"The gemini CLI was not found ({where}). Install it (`npm install -g "
                    "@google/gemini-cli`, or `npm ci` in the proxy's folder) or set GEMINI_BIN.",
                    code="gemini_not_found", headers=no_retry_headers())
