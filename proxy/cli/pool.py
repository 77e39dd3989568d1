"""WarmPool: gemini processes started ahead of the requests that will use them.

The CLI spends ~1 s initialising before it can take a prompt; a process started early answers
~30-70 ms after it is given one. What a process fixes at start-up is its key,
a RunSpec: model, system prompt, settings and tools (headless runs, requests with client tools),
or model, system prompt and settings (ACP runs, requests without; proxy/cli/acp.py). An ACP
process has opened its session for its key ahead of the request, so a request of that key
starts at the prompt; a request of another ACP key can still take it (opening a session of
its own, ~40 ms more) before it is served cold. Keys are learned from traffic, the
PROXY_POOL_KEYS most recently requested kept.

How many processes a key keeps is sized from its traffic: a burst needs as many processes as
arrive within one start-up. The pool remembers each key's arrivals of the last BURST_MEMORY
seconds and its processes' measured start-up time, and keeps the largest number of arrivals
seen within one start-up time (at least PROXY_POOL_SIZE, at most PROXY_POOL_MAX for the whole
worker). A key not requested for PROXY_POOL_MAX_IDLE seconds keeps nothing.

Each warm process is an ordinary CliRun laid out by `runs.spawn_run`, exactly as a cold run
(own run dir, CLI home, TMPDIR, process group, RunLimiter slot), and is used once. One
background thread (a greenlet under gevent) per worker spawns replacements, at most
MAX_STARTING at a time (start-ups compete for the same CPUs as the requests), recycles
processes older than PROXY_POOL_MAX_IDLE seconds (credentials and the date in the prompt
are fixed at start-up), and closes processes that died while idle; `take()` checks again, so
a dead process is never handed out. Warm processes take free slots only (`try_acquire`,
never queueing), and a request that needs a slot gets one by closing the oldest idle warm
process (the reclaimer). Nothing is spawned before the first request of a worker, and
the pool stops and closes everything in `cli_run.close_all_runs` (gunicorn's worker_exit).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..service.limits import RunLimiter
from . import process
from .home import find_user_auth
from .process import CliRun
from .spec import RunSpec

log = logging.getLogger(__name__)

Key = RunSpec  # what a CLI process fixes at start-up

TICK = 0.25  # seconds between checks of the idle processes (start-ups finish, processes die)
BURST_MEMORY = 120.0  # seconds of arrivals a key's size is computed from
MAX_STARTING = 2  # processes initialising at once (each takes ~1.25 CPU-seconds)
DEFAULT_STARTUP = 1.5  # seconds a start-up is assumed to take until one has been measured
# No start-up begins sooner than this after a request took a process (and none within one start-up
# time after a request had to start its own): requests arriving together (a burst, Open WebUI's
# follow-ups) get the CPUs first; the stock is refilled once they are going.
REFILL_DELAY = 0.5
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
    ready_seen: bool = False


@dataclass
class _KeyTraffic:
    """A key's recent arrivals, and the processes kept for it."""

    idle: list[_Warm] = field(default_factory=list)
    arrivals: deque = field(default_factory=deque)  # time.monotonic() of requests, BURST_MEMORY long
    last: float | None = None  # the latest request, however long ago

    def arrive(self, now: float) -> None:
        self.arrivals.append(now)
        self.last = now
        self.forget(now)

    def forget(self, now: float) -> None:
        while self.arrivals and self.arrivals[0] < now - BURST_MEMORY:
            self.arrivals.popleft()

    def burst(self, window: float) -> int:
        """The most arrivals within any `window` seconds of the remembered ones."""
        times, best, first = list(self.arrivals), 0, 0
        for last, at in enumerate(times):
            while at - times[first] > window:
                first += 1
            best = max(best, last - first + 1)
        return best


class WarmPool:
    def __init__(self, config: Mapping[str, Any], limiter: RunLimiter, size: int, max_keys: int,
                 max_idle: float, max_total: int | None = None):
        self.config = config
        self.limiter = limiter
        self.size = size  # the least a key in use keeps
        self.max_keys = max_keys
        self.max_idle = max_idle
        self.max_total = max(size, max_total if max_total is not None else size * max_keys)
        self.startup = DEFAULT_STARTUP  # measured: seconds from spawn to ready, smoothed
        self.hits = self.misses = self.spawned = self.recycled = self.died = self.reclaimed = 0
        self._keys: OrderedDict[Key, _KeyTraffic] = OrderedDict()  # least recently requested first
        self._doomed: list[tuple[CliRun, str]] = []  # taken out of the pool, to close in the background
        self._deaths: dict[Key, tuple[int, float]] = {}  # key -> (deaths in a row, no spawn before)
        self._refill_after = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        limiter.reclaimers.append(self.reclaim)
        process.before_close_all.append(self.close)

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
                self._keys[key] = _KeyTraffic()
                while len(self._keys) > self.max_keys:
                    _, evicted = self._keys.popitem(last=False)
                    self._doomed.extend((w.run, "key evicted") for w in evicted.idle)
            traffic = self._keys[key]
            traffic.arrive(now)
            self._sweep(key, traffic.idle, now)
            found = self._pick(traffic.idle)
            if found is None and key.interface == "acp":
                # Any ACP process can serve the request: it opens a session for it (proxy/cli/acp.py).
                # The least recently requested keys give first.
                for other, other_traffic in self._keys.items():
                    if other != key and other.interface == "acp":
                        self._sweep(other, other_traffic.idle, now)
                        found = self._pick([w for w in other_traffic.idle if w.run.ready()])
                        if found is not None:
                            break
            self._refill_after = max(self._refill_after, now + REFILL_DELAY)
            if found is not None:
                self._keys[found.key].idle.remove(found)
                self.hits += 1
                self._deaths.pop(found.key, None)
            else:
                self.misses += 1
                # This request starts a process of its own: no warm start-up competes with it.
                self._refill_after = max(self._refill_after, now + self.startup)
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
            candidates = self._all_idle()
            if not candidates:
                return False
            oldest = min(candidates, key=lambda w: w.born)
            self._keys[oldest.key].idle.remove(oldest)
            self.reclaimed += 1
            self._refill_after = time.monotonic() + RECLAIM_PAUSE
        oldest.run.close()  # releases its slot
        self._publish()
        return True

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            idle = self._all_idle()
            return {"size": len(idle), "ready": sum(1 for w in idle if w.run.ready()), "keys": len(self._keys),
                    "target": sum(self._target(t, now) for t in self._keys.values()),
                    "startup_s": round(self.startup, 3), "hits": self.hits, "misses": self.misses,
                    "spawned": self.spawned, "recycled": self.recycled, "died": self.died,
                    "reclaimed": self.reclaimed}

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
            runs = [w.run for w in self._all_idle()] + [run for run, _ in self._doomed]
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
            process.before_close_all.remove(self.close)
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

    @staticmethod
    def _pick(idle: list[_Warm]) -> _Warm | None:
        """The oldest that has finished initialising, else the oldest (closest to ready)."""
        return next((w for w in idle if w.run.ready()), idle[0] if idle else None)

    def _all_idle(self) -> list[_Warm]:
        return [w for traffic in self._keys.values() for w in traffic.idle]

    def _target(self, traffic: _KeyTraffic, now: float) -> int:
        """How many processes a key should keep: none once unused for PROXY_POOL_MAX_IDLE, else its
        largest burst within one start-up (at least PROXY_POOL_SIZE, at most PROXY_POOL_MAX)."""
        traffic.forget(now)
        if traffic.last is None or now - traffic.last >= self.max_idle:
            return 0
        return max(self.size, min(self.max_total, traffic.burst(self.startup)))

    def _tend(self) -> None:
        now = time.monotonic()
        with self._lock:
            for key, traffic in list(self._keys.items()):
                self._sweep(key, traffic.idle, now)
                self._note_startups(traffic.idle, now)
                target = self._target(traffic, now)
                # More than the traffic needs (a burst has passed): shed the oldest.
                for warm in sorted(traffic.idle, key=lambda w: w.born)[:max(0, len(traffic.idle) - target)]:
                    traffic.idle.remove(warm)
                    self._doomed.append((warm.run, "shed"))
                if target == 0 and not traffic.idle:
                    del self._keys[key]  # nobody uses it any more
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
                    self._keys[key].idle.append(_Warm(run, key, time.monotonic()))
                    self.spawned += 1
            if not keep:
                run.close()
            self._publish()

    def _next_key(self) -> Key | None:
        """The most recently requested key that lacks a process and is not backing off, while the
        worker's warm processes number fewer than PROXY_POOL_MAX and fewer than MAX_STARTING are
        still initialising."""
        now = time.monotonic()
        with self._lock:
            idle = self._all_idle()
            if len(idle) >= self.max_total or sum(1 for w in idle if not w.run.ready()) >= MAX_STARTING:
                return None
            for key in reversed(self._keys):
                traffic = self._keys[key]
                if len(traffic.idle) < self._target(traffic, now) and self._deaths.get(key, (0, 0.0))[1] <= now:
                    return key
        return None

    def _note_startups(self, idle: list[_Warm], now: float) -> None:
        """Learn the start-up time from processes seen ready for the first time (under the lock)."""
        for warm in idle:
            if not warm.ready_seen and warm.run.ready():
                warm.ready_seen = True
                took = (warm.run.ready_at or now) - warm.born
                self.startup = 0.7 * self.startup + 0.3 * took

    def _note_death(self, key: Key, now: float) -> None:
        """A process of `key` died on its own (called under the lock): retry it later and later."""
        self.died += 1
        count = self._deaths.get(key, (0, 0.0))[0] + 1
        self._deaths[key] = (count, now + min(MAX_DEATH_BACKOFF, 2.0 ** (count - 1)))

    def _publish(self) -> None:
        with self._lock:
            WARM_PROCESSES.set(len(self._all_idle()))
