"""Health checks: GET /healthz (the process answers) and GET /readyz (it can serve chats).

Neither needs an API key. /readyz reports, per worker, what a chat request needs: the
gemini executable (found, and `<bin> --version` runs; the result is kept ~60 s), a login
it can use, and the run limiter's occupancy (reported, never a reason to be unready).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, jsonify

from ..cli.process import cli_environment

bp = Blueprint("health", __name__)

VERSION_TTL = 60.0       # seconds a successful `--version` is trusted
FAILURE_TTL = 5.0        # ... and a failed one (so a fix shows soon)
VERSION_TIMEOUT = 10.0   # the CLI takes ~1 s to start; far more means it is stuck



@dataclass
class VersionCheck:
    ok: bool
    detail: str
    checked_at: float


_cache: dict[str | None, VersionCheck] = {}
_cache_lock = threading.Lock()


def gemini_version(gemini_bin: str | None) -> VersionCheck:
    """`<bin> --version`, cached; one check at a time per worker (gevent-cooperative)."""
    with _cache_lock:
        cached = _cache.get(gemini_bin)
        now = time.monotonic()
        if cached and now - cached.checked_at < (VERSION_TTL if cached.ok else FAILURE_TTL):
            return cached
        result = _run_version(gemini_bin)
        _cache[gemini_bin] = result
        return result


def _run_version(gemini_bin: str | None) -> VersionCheck:
    now = time.monotonic()
    if not gemini_bin:
        return VersionCheck(False, "no `gemini` on PATH and GEMINI_BIN is not set", now)
    env = cli_environment()
    try:
        done = subprocess.run([gemini_bin, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=VERSION_TIMEOUT, env=env, close_fds=True)
    except subprocess.TimeoutExpired:
        return VersionCheck(False, f"`{gemini_bin} --version` did not finish within {VERSION_TIMEOUT:g} s",
                            time.monotonic())
    except OSError as exc:
        return VersionCheck(False, f"`{gemini_bin}` could not be run: {exc.strerror or exc}", time.monotonic())
    output = (done.stdout or b"").decode("utf-8", "replace").strip()
    if done.returncode != 0:
        tail = (done.stderr or b"").decode("utf-8", "replace").strip()[-300:]
        return VersionCheck(False, f"`{gemini_bin} --version` exited {done.returncode}: {tail}",
                            time.monotonic())
    return VersionCheck(True, output.splitlines()[-1] if output else "", time.monotonic())


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    from ..cli.home import find_user_auth

    config = current_app.config
    missing = []
    gemini_bin = config.get("GEMINI_BIN")
    version = gemini_version(gemini_bin)
    if not version.ok:
        missing.append("gemini")
    auth = find_user_auth(config["PROXY_GEMINI_CONFIG"])
    if auth.problem:
        missing.append("credentials")
    limiter = current_app.extensions["run_limiter"]
    body = {
        "status": "not_ready" if missing else "ready",
        "missing": missing,
        "gemini": {"ok": version.ok, "bin": gemini_bin,
                   ("version" if version.ok else "problem"): version.detail},
        "credentials": {"ok": auth.problem is None, "auth_type": auth.auth_type,
                        **({"problem": auth.problem} if auth.problem else {})},
        # Per worker: this process's gemini runs against its PROXY_MAX_CONCURRENT.
        "runs": {"in_use": limiter.in_use, "capacity": limiter.capacity,
                 "queued": limiter.queued, "queue_size": limiter.queue_size},
        "pid": os.getpid(),
    }
    pool = current_app.extensions["process_pool"]
    if pool.warm:
        # Per worker: warm processes (and how many have finished starting), keys, what the traffic
        # asks for, the measured start-up time, and hit/miss counts.
        body["pool"] = pool.stats()
    response = jsonify(body)
    response.status_code = 503 if missing else 200
    response.headers["Cache-Control"] = "no-store"
    return response
