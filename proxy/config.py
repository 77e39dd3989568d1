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


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must be zero or more: {value!r}")
    return number


def _key_list(value: str) -> tuple[str, ...]:
    """`PROXY_API_KEYS`: comma-separated client keys (blanks ignored)."""
    return tuple(key.strip() for key in value.split(",") if key.strip())


def _interface(value: str) -> str:
    value = value.strip().lower()
    if value not in {"auto", "headless"}:
        raise ValueError("PROXY_CLI_INTERFACE must be 'auto' or 'headless'")
    return value


def _tools(value: str) -> str:
    value = value.strip().lower()
    if value not in {"none", "read-only"}:
        raise ValueError("PROXY_TOOLS must be 'none' or 'read-only'")
    return value


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
    "PROXY_TOOLS": ("none", _tools),
    # How the CLI is driven: `auto` = ACP for requests without client tools (thoughts, one warm
    # pool for every such request), headless for those with tools; `headless` = always headless.
    "PROXY_CLI_INTERFACE": ("auto", _interface),
    "PROXY_STATUS_HOLD": (5.0, _positive_float),
    "PROXY_MAX_CONCURRENT": (None, _non_negative_int),
    "PROXY_QUEUE_SIZE": (16, _non_negative_int),
    "PROXY_QUEUE_TIMEOUT": (30.0, _positive_float),
    "PROXY_RUN_MEMORY_MB": (250, _non_negative_int),
    "WORKERS": (2, _non_negative_int),
    # Warm pool (proxy/cli/pool.py): the least a key in use keeps warm (0 = pool off); how many keys;
    # the most warm processes per worker (bursts are sized from traffic up to this); how long a
    # warm process may wait before it is replaced, and a key stays warm without requests.
    "PROXY_POOL_SIZE": (1, _non_negative_int),
    "PROXY_POOL_KEYS": (4, _non_negative_int),
    "PROXY_POOL_MAX": (8, _non_negative_int),
    "PROXY_POOL_MAX_IDLE": (300.0, _positive_float),
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
