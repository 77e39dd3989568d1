"""Settings: defaults, then the environment, then (in tests) an explicit mapping.

Every setting is documented in the README's settings table; keep the two in step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent

# The original design's model table: OpenAI model id -> the CLI's `-m` value.
DEFAULT_MODELS: dict[str, str] = {
    "gemini-cli": "gemini-3-flash",
    "gemini-3-flash": "gemini-3-flash",
    "gemini-3.1-flash-lite": "gemini-3.1-flash-lite",
    "gemini-1.5-pro": "gemini-1.5-pro",
    "gemini-2.5-pro": "gemini-2.5-pro",
    "gemini-3.1-pro-preview": "gemini-3.1-pro-preview",
}

# Names other clients send by default, mapped onto the table (first match wins): Claude Code
# asks for `claude-*` models (its small fast model for background work is a haiku one).
DEFAULT_MODEL_ALIASES = "claude-*haiku*=gemini-3.1-flash-lite,claude-*=gemini-3-flash"

# A short, neutral system prompt for requests that bring none: without one the CLI
# would send its ~25 KB coding-agent prompt with every request.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

def _bool(value: str) -> bool:
    if value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if value.strip().lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(f"must be positive: {value!r}")
    return number


def _int_at_least(low: int):
    """A parser of whole numbers of at least `low`."""
    def parse(value: str) -> int:
        number = int(value)
        if number < low:
            raise ValueError(f"must be {low} or more: {value!r}")
        return number
    return parse


_non_negative_int = _int_at_least(0)
_positive_int = _int_at_least(1)


def _choice(name: str, *choices: str, aliases: Mapping[str, str] | None = None):
    """A parser of one of `choices` (case-insensitive); `aliases` map other words onto them."""
    def parse(value: str) -> str:
        value = value.strip().lower()
        value = (aliases or {}).get(value, value)
        if value not in choices:
            raise ValueError(f"{name} must be one of: {', '.join(choices + tuple(aliases or ()))}")
        return value
    return parse


def _key_list(value: str) -> tuple[str, ...]:
    """`PROXY_API_KEYS`: comma-separated client keys (blanks ignored)."""
    return tuple(key.strip() for key in value.split(",") if key.strip())


def parse_model_table(value: str) -> dict[str, str]:
    """Parse `id=cli-model,id2=cli-model2`, a JSON object, or `@/path/to/file` of either."""
    value = value.strip()
    if value.startswith("@"):
        value = Path(value[1:]).expanduser().read_text(encoding="utf-8").strip()
    if value.startswith("{"):
        table = json.loads(value)
        if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in table.items()):
            raise ValueError("model table JSON must map model ids to CLI model names")
        return dict(table)
    table: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.replace("\n", ",").split(","))):
        model_id, sep, cli_model = item.partition("=")
        if not sep or not model_id.strip() or not cli_model.strip():
            raise ValueError(f"model table entry {item!r} is not id=cli-model")
        table[model_id.strip()] = cli_model.strip()
    return table


def parse_model_aliases(value: str) -> tuple[tuple[str, str], ...]:
    """`pattern=model-id,...` (shell-style `*` and `?` patterns; first match wins; empty: none)."""
    aliases = []
    for item in filter(None, (part.strip() for part in value.replace("\n", ",").split(","))):
        pattern, sep, target = item.partition("=")
        if not sep or not pattern.strip() or not target.strip():
            raise ValueError(f"model alias {item!r} is not pattern=model-id")
        aliases.append((pattern.strip(), target.strip()))
    return tuple(aliases)


# name -> (default, parser). Names are the environment variables.
SETTINGS: dict[str, tuple[Any, Any]] = {
    "GEMINI_BIN": (None, str),
    "PROXY_REQUEST_TIMEOUT": (300.0, _positive_float),
    "PROXY_FIRST_TOKEN_TIMEOUT": (120.0, _positive_float),
    "PROXY_HEARTBEAT_INTERVAL": (2.0, _positive_float),
    "PROXY_KILL_GRACE": (2.0, _positive_float),
    "PROXY_MAX_BODY_BYTES": (25 * 1024 * 1024, _non_negative_int),
    "PROXY_MODELS": (None, parse_model_table),
    "PROXY_EXTRA_MODELS": (None, parse_model_table),
    "PROXY_MODEL_ALIASES": (DEFAULT_MODEL_ALIASES, parse_model_aliases),
    "PROXY_DEFAULT_SYSTEM_PROMPT": (DEFAULT_SYSTEM_PROMPT, str),
    "PROXY_GEMINI_CONFIG": ("~/.gemini", str),
    "PROXY_RUN_DIR": (None, str),
    "PROXY_CLI_MAX_ATTEMPTS": (1, _non_negative_int),
    "PROXY_TOOLS": ("none", _choice("PROXY_TOOLS", "none", "read-only")),
    # How the CLI is driven: `acp` (or `auto`): every request is an ACP session, on a process that
    # serves many (thoughts, tools, warm answers); `headless`: a headless process per request.
    "PROXY_CLI_INTERFACE": ("acp", _choice("PROXY_CLI_INTERFACE", "acp", "headless", aliases={"auto": "acp"})),
    "PROXY_STATUS_HOLD": (5.0, _positive_float),
    "PROXY_MAX_CONCURRENT": (None, _non_negative_int),
    "PROXY_QUEUE_SIZE": (16, _non_negative_int),
    "PROXY_QUEUE_TIMEOUT": (30.0, _positive_float),
    "PROXY_RUN_MEMORY_MB": (250, _non_negative_int),
    "WORKERS": (2, _non_negative_int),
    # The process pool (proxy/cli/pool.py): the fewest processes a tenant in use keeps (0 = no pool:
    # a process per request); the most per worker; how long a tenant stays warm without requests.
    "PROXY_POOL_SIZE": (1, _non_negative_int),
    "PROXY_POOL_MAX": (8, _non_negative_int),
    "PROXY_POOL_MAX_IDLE": (300.0, _positive_float),
    # `session`: a process serves many requests, each in a fresh session; `process`: one each.
    "PROXY_ISOLATION": ("session", _choice("PROXY_ISOLATION", "session", "process")),
    # A pooled process's limits (session isolation): sessions at once; requests in its life, its age
    # and its memory growth before it is retired (proxy/cli/acp.py: a session's memory stays).
    "PROXY_PROCESS_MAX_SESSIONS": (50, _positive_int),
    "PROXY_PROCESS_MAX_REQUESTS": (100, _positive_int),
    "PROXY_PROCESS_MAX_AGE": (3600.0, _positive_float),
    "PROXY_PROCESS_MAX_GROWTH_MB": (512, _positive_int),
    # Client access (proxy/service/auth.py): keys for `Authorization: Bearer <key>`.
    "PROXY_API_KEYS": ((), _key_list),
    "PROXY_API_KEYS_FILE": (None, str),
    "PROXY_METRICS_OPEN": (False, _bool),
}


def load_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Defaults overridden by whatever of SETTINGS the environment sets."""
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    for name, (default, parse) in SETTINGS.items():
        raw = environ.get(name)
        if raw is None or raw == "":
            settings[name] = default
            continue
        try:
            settings[name] = parse(raw)
        except (ValueError, OSError) as exc:
            raise RuntimeError(f"invalid setting {name}={raw!r}: {exc}") from exc
    return settings


def finish_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Derive what depends on several settings (model table, paths, the CLI binary)."""
    models = dict(settings.get("PROXY_MODELS") or DEFAULT_MODELS)
    models.update(settings.get("PROXY_EXTRA_MODELS") or {})
    settings["MODELS"] = models
    aliases = settings.get("PROXY_MODEL_ALIASES")
    if aliases == DEFAULT_MODEL_ALIASES:
        # The defaults point at the default table: with a replaced table, those that miss go.
        aliases = tuple(a for a in parse_model_aliases(aliases) if a[1] in models)
    elif isinstance(aliases, str):
        aliases = parse_model_aliases(aliases)
    unknown = [target for _, target in aliases if target not in models]
    if unknown:
        raise RuntimeError(f"PROXY_MODEL_ALIASES maps onto model ids that are not in the table: {', '.join(unknown)}")
    settings["MODEL_ALIASES"] = aliases
    settings["PROXY_RUN_DIR"] = settings.get("PROXY_RUN_DIR") or tempfile.gettempdir()
    settings["PROXY_GEMINI_CONFIG"] = str(Path(settings["PROXY_GEMINI_CONFIG"]).expanduser())
    settings["GEMINI_BIN"] = resolve_gemini_bin(settings.get("GEMINI_BIN"))
    if settings.get("PROXY_MAX_CONCURRENT") is None:
        settings["PROXY_MAX_CONCURRENT"] = default_max_concurrent(settings["PROXY_RUN_MEMORY_MB"],
                                                                  settings["WORKERS"] or 1)
    return settings


def default_max_concurrent(run_memory_mb: int, workers: int) -> int:
    """Per-worker cap on gemini processes: 60% of the machine's memory over the cost of a run
    (~250 MB measured), shared by the workers; at least 2."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        total_mb = pages * page_size // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        total_mb = 4096
    return max(2, int(total_mb * 0.6) // max(1, run_memory_mb) // max(1, workers))


def resolve_gemini_bin(configured: str | None) -> str | None:
    """GEMINI_BIN if set, else `gemini` on PATH, else the project's pinned npm install."""
    if configured:
        return shutil.which(configured) or configured
    on_path = shutil.which("gemini")
    if on_path:
        return on_path
    pinned = PROJECT_DIR / "node_modules" / ".bin" / "gemini"
    return str(pinned) if pinned.exists() else None
