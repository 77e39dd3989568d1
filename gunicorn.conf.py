"""gunicorn settings for gemini-proxy: `gunicorn -c gunicorn.conf.py wsgi:app`.

Each setting can be overridden from the environment (see the README's settings table).
No monkey-patching here: the gevent worker class patches the worker itself, and nothing
is preloaded, so no CLI process, pipe or greenlet is ever created in the master.
"""

import glob
import json
import os
import shutil
import signal
import tempfile


def _env(name, default):
    value = os.environ.get(name)
    return default if value in (None, "") else value


# Localhost by default: on a shared host anything else needs PROXY_API_KEYS.
bind = f"{_env('BIND_ADDRESS', '127.0.0.1')}:{_env('PORT', '8765')}"

# gevent: one worker serves many concurrent streams, each waiting on its CLI's pipe.
worker_class = "gevent"

# A worker costs ~60 MB; the CLI runs (~250 MB each) are what matter. Two workers keep the
# service up if one restarts; more add little, since one already holds hundreds of streams.
workers = int(_env("WORKERS", "2"))

# Simultaneous connections per worker (streams, health checks, queued requests).
worker_connections = int(_env("WORKER_CONNECTIONS", "1000"))

# With gevent, `timeout` only catches a worker whose loop is blocked, not a long request;
# the proxy keeps its own per-request deadline (PROXY_REQUEST_TIMEOUT).
timeout = int(_env("GUNICORN_TIMEOUT", "60"))

# On restart or SIGTERM, in-flight streams get as long as the request deadline to finish;
# after that the workers exit and each kills the CLIs it still owns. Service managers'
# stop timeouts (deploy/) are set above this.
# GRACEFUL_TIMEOUT overrides it (seconds; tests use a short one).
_request_timeout = float(_env("PROXY_REQUEST_TIMEOUT", "300"))
graceful_timeout = int(float(_env("GRACEFUL_TIMEOUT", int(_request_timeout) + 15)))

# The master SIGKILLs a worker still alive graceful_timeout after its TERM, and then no
# cleanup runs in it. So the workers themselves stop waiting a little earlier (5 s, or half
# of a short graceful_timeout): they end the streams still open, which kills those runs'
# process groups, and worker_exit kills whatever is left, all before that SIGKILL.
_worker_graceful_margin = min(5, graceful_timeout // 2)

# Streams are long-lived; keep-alive between requests stays short.
keepalive = 5

preload_app = False

# Access log off by default: the app logs one line per chat request with its timings.
accesslog = _env("ACCESS_LOG", None)
errorlog = "-"
loglevel = _env("LOG_LEVEL", "info")

# gunicorn's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl), which
# several instances on one host would fight over; nothing here uses it.
control_socket_disable = True


def post_worker_init(worker):
    """In the worker: its own copy of the settings, with the shorter graceful period."""
    worker.cfg.set("graceful_timeout", graceful_timeout - _worker_graceful_margin)


def worker_exit(server, worker):
    """A worker leaving (restart, graceful timeout passed): kill the CLI runs it still owns."""
    from proxy.cli.process import close_all

    closed = close_all()
    if closed:
        server.log.warning("worker %s exiting: killed %d gemini run(s) still in flight", worker.pid, closed)


# --- Prometheus multiprocess mode (proxy/service/metrics.py) ---
# Every worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR, and /metrics sums
# them. If the variable is unset, the master makes a private temp dir (removed at exit).
# It is set in on_starting, in the master, so that every worker inherits it.
_private_metrics_dir = None


def on_starting(server):
    global _private_metrics_dir
    # Runs left by an instance that died (its master is gone): prompts must not stay on disk.
    # Their processes died with their worker (PDEATHSIG); after so long a group id may have
    # been reused, so nothing is killed here.
    reaped = _reap_runs(lambda owner: not _pid_alive(int(owner.get("master", 0))), kill=False)
    if reaped:
        server.log.warning("removed %d gemini run(s) left by a previous instance", reaped)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = _private_metrics_dir = tempfile.mkdtemp(prefix="gemini-proxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    os.makedirs(directory, exist_ok=True)
    # Files of a previous run (other pids) would be summed into this one's numbers.
    for stale in glob.glob(os.path.join(directory, "*.db")):
        try:
            os.remove(stale)
        except OSError:
            pass


def on_exit(server):
    if _private_metrics_dir:
        shutil.rmtree(_private_metrics_dir, ignore_errors=True)


def _reap_runs(should_reap, kill=True):
    """Kill the process groups of (if `kill`), and remove, the run dirs whose owner matches
    (stdlib only: the master never imports the app). Run dirs and `owner`: proxy/cli/process.py."""
    run_dir = _env("PROXY_RUN_DIR", tempfile.gettempdir())
    reaped = 0
    for owner_file in glob.glob(os.path.join(run_dir, "gemini-proxy-*", "owner")):
        try:
            with open(owner_file, encoding="utf-8") as f:
                owner = json.load(f)
            if not should_reap(owner):
                continue
            if kill:
                os.killpg(int(owner["pgid"]), signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is gone already; the dir still has to go
        except (OSError, ValueError, KeyError, TypeError):
            continue
        shutil.rmtree(os.path.dirname(owner_file), ignore_errors=True)
        reaped += 1
    return reaped


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_exit(server, worker):
    """A worker is gone (in the master). If it was killed before cleaning up (SIGKILL, OOM),
    its CLI runs' process groups and run dirs are still there: finish them. Then drop its
    live gauges (runs in flight, queue)."""
    reaped = _reap_runs(lambda owner: owner.get("worker") == worker.pid)
    if reaped:
        server.log.warning("worker %s died: killed and removed %d gemini run(s) it left", worker.pid, reaped)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _exposed_addresses(listeners):
    """The listening addresses beyond loopback (unix sockets are local)."""
    import ipaddress
    import socket

    exposed = []
    for listener in listeners:
        sock = getattr(listener, "sock", None)
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        host, port = sock.getsockname()[:2]
        if not ipaddress.ip_address(host.split("%", 1)[0]).is_loopback:
            exposed.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return exposed


def when_ready(server):
    """Listening (in the master, once): warn loudly if beyond loopback with no API key.
    Stdlib only: the master must not import the app (see preload_app)."""
    keys_set = bool(_env("PROXY_API_KEYS", "").strip(", ") or _env("PROXY_API_KEYS_FILE", ""))
    exposed = _exposed_addresses(server.LISTENERS)
    if exposed and not keys_set:
        server.log.warning(
            "!!! gemini-proxy listens on %s, beyond loopback, and NO API key is set: anyone who can "
            "reach it can run gemini on this account. Set PROXY_API_KEYS or PROXY_API_KEYS_FILE, or "
            "bind to 127.0.0.1 (BIND_ADDRESS). !!!", ", ".join(exposed))
