"""WarmPool: gemini processes started ahead of the requests that will use them.

The CLI spends ~1 s initialising before it reads stdin, and once it has read the primer
byte it waits for the rest of the prompt however long that takes (see
shared/gemini-cli-contract.md). A process spawned early therefore answers a prompt ~30-40 ms
after it is fed, instead of ~1 s.

What is fixed when the CLI starts is the model (`-m`) and the system prompt (read from
GEMINI_SYSTEM_MD during start-up): a warm process can only serve a request with the same
(cli_model, system_text), its key. Keys are learned from traffic: a request's key becomes
warm-worthy as soon as it is seen (served warm or cold), the pool keeps the
PROXY_POOL_KEYS most recently requested keys, and each keeps PROXY_POOL_SIZE processes.

Each warm process is an ordinary CliRun laid out by `runs.spawn_run`, exactly as a cold run
(own run dir, CLI home, TMPDIR, process group, RunLimiter slot), and is used once. One
background thread (a greenlet under gevent) per worker spawns replacements, recycles
processes older than PROXY_POOL_MAX_IDLE seconds (credentials and the date in the prompt
are fixed at start-up), and closes processes that died while idle; `take()` checks again, so
a dead process is never handed out. Warm processes take free slots only (`try_acquire`,
never queueing), and a request that needs a slot gets one by closing the oldest idle warm
process (the reclaimer). Nothing is spawned before the first chat request of a worker, and
the pool stops and closes everything in `cli_run.close_all_runs` (gunicorn's worker_exit).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import cli_run
from .cli_home import find_user_auth
from .cli_run import CliRun
from .limits import RunLimiter
from .run_spec import RunSpec

log = logging.getLogger(__name__)

Key = RunSpec  # what a CLI process fixes at start-up

TICK = 1.0  # seconds between checks of the idle processes
RECLAIM_PAUSE = 5.0  # after a request reclaimed a warm process's slot, no refill for this long
MAX_DEATH_BACKOFF = 60.0  # a key whose processes keep dying is retried at most this rarely


class _NoMetric:
    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass


def _make_metrics() -> tuple[Any, Any, Any]:
    """Prometheus metrics, per worker; summed over workers when PROMETHEUS_MULTIPROC_DIR is set."""
    try:
        from prometheus_client import Counter, Gauge

        return (
            Gauge("gemini_proxy_warm_processes", "Warm gemini processes waiting for a request",
                  multiprocess_mode="livesum"),
            Counter("gemini_proxy_warm_hits", "Chat requests served by a warm gemini process"),
            Counter("gemini_proxy_warm_misses", "Chat requests that had to start a gemini process"),
        )
    except Exception as exc:  # noqa: BLE001 - no client library, or an unusable multiprocess dir
        log.warning("warm pool metrics disabled: %s", exc)
        return _NoMetric(), _NoMetric(), _NoMetric()


WARM_PROCESSES, WARM_HITS, WARM_MISSES = _make_metrics()


@dataclass
class _Warm:
    run: CliRun
    key: Key
    born: float  # time.monotonic() at spawn


class WarmPool:
    def __init__(self, config: Mapping[str, Any], limiter: RunLimiter, size: int, max_keys: int,
                 max_idle: float):
        self.config = config
        self.limiter = limiter
        self.size = size
        self.max_keys = max_keys
        self.max_idle = max_idle
        self.hits = self.misses = self.spawned = self.recycled = self.died = self.reclaimed = 0
        self._keys: OrderedDict[Key, list[_Warm]] = OrderedDict()  # least recently requested first
        self._doomed: list[tuple[CliRun, str]] = []  # taken out of the pool, to close in the background
        self._deaths: dict[Key, tuple[int, float]] = {}  # key -> (deaths in a row, no spawn before)
        self._refill_after = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        limiter.reclaimers.append(self.reclaim)
        cli_run.before_close_all.append(self.close)

    # -- the request side ---------------------------------------------------------------

    def take(self, key: RunSpec) -> CliRun | None:
        """A warm process for this key (its slot comes with it), or None: serve the request cold.
        Either way the key is learned; call `wake()` once the request has its run."""
        now = time.monotonic()
        found: _Warm | None = None
        with self._lock:
            if self._closed:
                return None
            self._start()
            if key in self._keys:
                self._keys.move_to_end(key)
            else:
                self._keys[key] = []
                while len(self._keys) > self.max_keys:
                    _, evicted = self._keys.popitem(last=False)
                    self._doomed.extend((w.run, "key evicted") for w in evicted)
            idle = self._keys[key]
            self._sweep(key, idle, now)
            if idle:
                # The oldest that has finished initialising, else the oldest (closest to ready).
                found = next((w for w in idle if w.run.ready()), idle[0])
                idle.remove(found)
                self.hits += 1
                self._deaths.pop(key, None)
            else:
                self.misses += 1
        (WARM_HITS if found else WARM_MISSES).inc()
        self._publish()
        if found is None:
            return None
        return found.run

    def wake(self) -> None:
        """Have the background thread close what was dropped and spawn what is missing."""
        self._wake.set()

    def reclaim(self) -> bool:
        """RunLimiter reclaimer: close the oldest idle warm process so a request gets its slot."""
        with self._lock:
            candidates = [w for idle in self._keys.values() for w in idle]
            if not candidates:
                return False
            oldest = min(candidates, key=lambda w: w.born)
            self._keys[oldest.key].remove(oldest)
            self.reclaimed += 1
            self._refill_after = time.monotonic() + RECLAIM_PAUSE
        oldest.run.close()  # releases its slot
        self._publish()
        return True

    def stats(self) -> dict[str, int]:
        with self._lock:
            idle = [w for ws in self._keys.values() for w in ws]
            return {"size": len(idle), "ready": sum(1 for w in idle if w.run.ready()), "keys": len(self._keys),
                    "hits": self.hits, "misses": self.misses, "spawned": self.spawned,
                    "recycled": self.recycled, "died": self.died, "reclaimed": self.reclaimed}

    def close(self) -> None:
        """Stop spawning and close every idle warm process (worker exit, app teardown)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # Let a spawn in progress finish; the thread closes what it spawned once it sees _closed.
            thread.join(timeout=float(self.config.get("PROXY_KILL_GRACE", 2.0)) + 10)
        with self._lock:
            runs = [w.run for ws in self._keys.values() for w in ws] + [run for run, _ in self._doomed]
            self._keys.clear()
            self._doomed.clear()
        for run in runs:
            run.close()
        self._publish()
        try:
            self.limiter.reclaimers.remove(self.reclaim)
        except ValueError:
            pass
        try:
            cli_run.before_close_all.remove(self.close)
        except ValueError:
            pass

    # -- the background side ------------------------------------------------------------

    def _start(self) -> None:
        """Start the background thread on the first chat request (called under the lock)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="warm-pool", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(TICK)
            self._wake.clear()
            if self._closed:
                break
            try:
                self._tend()
            except Exception:  # noqa: BLE001 - the pool must outlive any one failure
                log.exception("warm pool upkeep failed")

    def _sweep(self, key: Key, idle: list[_Warm], now: float) -> None:
        """Take out (to close later) the processes of `idle` that died or waited too long.
        Called with the lock held."""
        for warm in list(idle):
            if not warm.run.waiting():
                idle.remove(warm)
                self._doomed.append((warm.run, "died while idle"))
                self._note_death(key, now)
            elif now - warm.born >= self.max_idle:
                idle.remove(warm)
                self._doomed.append((warm.run, "recycled"))
                self.recycled += 1

    def _tend(self) -> None:
        now = time.monotonic()
        with self._lock:
            for key, idle in self._keys.items():
                self._sweep(key, idle, now)
            doomed, self._doomed = self._doomed, []
        for run, why in doomed:
            if why == "died while idle":
                run.finish(timeout=0.5)
                log.warning("warm gemini process %s exited while idle (code %s): %s", run.pid, run.returncode,
                            run.stderr_tail[-500:].strip())
            run.close()
        self._publish()
        self._refill()

    def _refill(self) -> None:
        gemini_bin = self.config.get("GEMINI_BIN")
        if not gemini_bin or time.monotonic() < self._refill_after:
            return
        auth = None
        while not self._closed:
            key = self._next_key()
            if key is None:
                return
            if auth is None:
                auth = find_user_auth(self.config["PROXY_GEMINI_CONFIG"])
                if auth.problem:
                    return  # requests report it; nothing to warm up meanwhile
            slot = self.limiter.try_acquire()
            if slot is None:
                return  # every slot is in use, or requests are queueing for one
            from .runs import spawn_run  # runs imports flask; keep this module light to import

            try:
                run = spawn_run(self.config, auth, slot, key)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not start a warm gemini process: %s", exc)
                with self._lock:
                    self._note_death(key, time.monotonic())
                return
            with self._lock:
                keep = not self._closed and key in self._keys
                if keep:
                    self._keys[key].append(_Warm(run, key, time.monotonic()))
                    self.spawned += 1
            if not keep:
                run.close()
            self._publish()

    def _next_key(self) -> Key | None:
        """The most recently requested key that lacks a process and is not backing off."""
        now = time.monotonic()
        with self._lock:
            for key in reversed(self._keys):
                if len(self._keys[key]) < self.size and self._deaths.get(key, (0, 0.0))[1] <= now:
                    return key
        return None

    def _note_death(self, key: Key, now: float) -> None:
        """A process of `key` died on its own (called under the lock): retry it later and later."""
        self.died += 1
        count = self._deaths.get(key, (0, 0.0))[0] + 1
        self._deaths[key] = (count, now + min(MAX_DEATH_BACKOFF, 2.0 ** (count - 1)))

    def _publish(self) -> None:
        with self._lock:
            WARM_PROCESSES.set(sum(len(idle) for idle in self._keys.values()))
