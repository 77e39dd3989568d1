"""Client access: `Authorization: Bearer <key>` (or Anthropic's `x-api-key: <key>`) on /v1/*
(and /metrics), when keys are set.

Keys come from PROXY_API_KEYS (comma-separated) and/or PROXY_API_KEYS_FILE (one key a
line, `#` comments, blank lines ignored); both are read when the app is built, so a
changed key file takes effect on the next worker start (`kill -HUP` the gunicorn master
replaces the workers gracefully). With no key set, everything is open: fine on loopback,
and gunicorn.conf.py (when_ready) warns loudly when the proxy listens anywhere else.

A presented key is compared against every configured key, each through SHA-256 and
`hmac.compare_digest`, so neither the match nor its position shows in the timing. Keys
never appear in logs or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g, request

from .errors import ApiError

log = logging.getLogger(__name__)

_INVALID = ("Incorrect or missing API key. Send `Authorization: Bearer <key>` (or `x-api-key: <key>`) with a "
            "key this proxy accepts.")


def read_key_file(path: str) -> list[str]:
    """Keys from a file: one a line; blank lines and `#` comments ignored."""
    keys = []
    for line in Path(path).expanduser().read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(line)
    return keys


def load_keys(config: Mapping[str, Any]) -> tuple[bytes, ...]:
    """The SHA-256 digests of every configured key. An unreadable or empty key file is an
    error: a proxy meant to be closed must not start open."""
    keys = list(config.get("PROXY_API_KEYS") or ())
    key_file = config.get("PROXY_API_KEYS_FILE")
    if key_file:
        try:
            from_file = read_key_file(key_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise RuntimeError(f"PROXY_API_KEYS_FILE={key_file!r} cannot be read: {exc}") from exc
        if not from_file:
            raise RuntimeError(f"PROXY_API_KEYS_FILE={key_file!r} holds no keys")
        keys.extend(from_file)
    return tuple(_digest(key) for key in keys)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_matches(presented: str, digests: Iterable[bytes]) -> bool:
    """Constant time in the presented key and in which configured key (if any) it matches."""
    return matching_key(presented, digests) is not None


def matching_key(presented: str, digests: Iterable[bytes]) -> int | None:
    """The position of the configured key the presented one is (None: none), in constant time."""
    given = _digest(presented)
    found = -1
    for index, digest in enumerate(digests):
        same = hmac.compare_digest(given, digest)
        found = index if same and found < 0 else found
    return None if found < 0 else found


def needs_key(path: str, metrics_open: bool) -> bool:
    if path == "/v1" or path.startswith("/v1/"):
        return True
    return path == "/metrics" and not metrics_open


def bearer_token(header: str | None) -> str | None:
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_key() -> None:
    """before_request: 401 (OpenAI's invalid_api_key) for a protected path without a good key.
    The key a request came with is its tenant (`g.tenant`): gemini processes are never shared
    between two keys (proxy/cli/pool.py)."""
    digests = current_app.extensions.get("api_key_digests")
    if not digests or not needs_key(request.path, current_app.config["PROXY_METRICS_OPEN"]):
        return
    token = bearer_token(request.headers.get("Authorization")) or request.headers.get("x-api-key", "").strip()
    index = matching_key(token, digests) if token else None
    if index is not None:
        g.tenant = f"key-{index}"
    else:
        raise ApiError(401, _INVALID, code="invalid_api_key", type="authentication_error",
                       headers={"WWW-Authenticate": 'Bearer realm="gemini-proxy"', "x-should-retry": "false"})


def init_app(app: Flask) -> None:
    app.extensions["api_key_digests"] = load_keys(app.config)
    app.before_request(check_key)
