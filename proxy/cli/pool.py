"""ProcessPool: the ACP processes of a worker, and which request's session goes on which.

Processes belong to a tenant (the API key a request came with; everyone when no keys are set)
and never serve another: a lab server's users stay in separate processes. How a process is
used is PROXY_ISOLATION:
- `session` (default): a process serves up to PROXY_PROCESS_MAX_SESSIONS sessions at once and
  PROXY_PROCESS_MAX_REQUESTS in its life, each request a fresh session of its own
  (proxy/cli/acp.py), so warm answers cost a session (~40 ms), not a start-up (~1.3 CPU-s).
- `process`: a process serves one request and is closed with it (what the pool did before
  sessions were shared); warm processes are started ahead for it.
With PROXY_POOL_SIZE=0 nothing is kept warm: every request starts a process of its own.

How many processes a tenant keeps comes from its traffic: a burst needs as many sessions as
arrive within one start-up. The pool remembers each tenant's arrivals of the last
BURST_MEMORY seconds and the measured start-up time, and keeps room for the largest number of
arrivals seen within one start-up on top of the sessions running (at least PROXY_POOL_SIZE
processes, at most PROXY_POOL_MAX for the whole worker). A tenant without requests for
PROXY_POOL_MAX_IDLE seconds keeps nothing. A process is retired (it takes no more sessions and
is closed once its own have ended, a replacement starting beforehand) after
PROXY_PROCESS_MAX_REQUESTS requests, PROXY_PROCESS_MAX_AGE seconds, RSS growth past
PROXY_PROCESS_MAX_GROWTH_MB, or anything it could not end cleanly (proxy/cli/acp.py: an
unconfirmed cancel, a JSON-RPC message it cannot attribute, a crash).

A process opens a session ahead for the spec of the request it last served (the one it was
started for, in `process` mode), so that the next request of that spec (an agent's next turn,
a client's next message) starts at the prompt.

Processes hold RunLimiter slots (each ~250 MB). Background start-ups take free slots only and
never queue; at most MAX_STARTING start at a time (start-ups compete for the CPUs the requests
use). The upkeep runs in one background thread (a greenlet under gevent) per worker, started by
the first request, and the pool closes everything in `process.close_all` (worker exit).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..service.errors import ApiError
from ..service.limits import RunLimiter, Slot
from . import process
from .acp import AcpProcess, AcpSession
from .home import UserAuth, find_user_auth
from .spec import AnswerShape, RunSpec

log = logging.getLogger(__name__)

TICK = 0.25  # seconds between upkeep rounds (start-ups finish, processes die, traffic ends)
MEMORY_CHECK = 2.0  # seconds between RSS checks of a process
BURST_MEMORY = 120.0  # seconds of arrivals a tenant's burst size is computed from
MAX_STARTING = 2  # processes initialising at once (each takes ~1.3 CPU-seconds)
DEFAULT_STARTUP = 1.5  # seconds a start-up is assumed to take until one has been measured
# No background start-up sooner than this after a request found no warm process (and none within
# one start-up time after a request had to start its own): requests arriving together get the
# CPUs first; the stock is refilled once they are going.
REFILL_DELAY = 0.5
REPLACE_AHEAD = 5  # requests before PROXY_PROCESS_MAX_REQUESTS at which a replacement starts
MAX_AHEADS = 6  # sessions a process keeps opened ahead, all specs together (4 crowded out Open WebUI's third task)
AHEAD_BURST = 3  # the most sessions opened ahead for one spec (Open WebUI sends three tasks at once)
AHEAD_WINDOW = 0.05  # seconds within which arrivals of one spec count as arriving at once
TRACKED_SPECS = 8  # specs of a tenant whose arrivals are remembered
MAX_DEATH_BACKOFF = 60.0  # a tenant whose processes keep dying is retried at most this rarely


class _NoMetric:
    def labels(self, *args: str) -> _NoMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass


def _make_metrics() -> tuple[Any, ...]:
    """Prometheus metrics, per worker; summed over workers when PROMETHEUS_MULTIPROC_DIR is set."""
    try:
        from prometheus_client import Counter, Gauge

        return (
            Gauge("gemini_proxy_warm_processes", "gemini processes started and ready for a request",
                  multiprocess_mode="livesum"),
            Counter("gemini_proxy_warm_hits", "Requests served by a gemini process that was already running"),
            Counter("gemini_proxy_warm_misses", "Requests that had to wait for a gemini process to start"),
            Gauge("gemini_proxy_cli_processes", "gemini ACP processes alive (starting, serving, retiring)",
                  multiprocess_mode="livesum"),
            Gauge("gemini_proxy_sessions_active", "Requests being answered in a session of a pooled process",
                  multiprocess_mode="livesum"),
            Counter("gemini_proxy_process_retirements", "gemini processes retired, by reason", ["reason"]),
        )
    except Exception as exc:  # noqa: BLE001 - no client library, or an unusable multiprocess dir
        log.warning("pool metrics disabled: %s", exc)
        return (_NoMetric(),) * 6


WARM_PROCESSES, WARM_HITS, WARM_MISSES, CLI_PROCESSES, SESSIONS_ACTIVE, RETIREMENTS = _make_metrics()


@dataclass
class _Tenant:
    """A tenant's recent arrivals, and the spec it asked for last."""

    arrivals: deque = field(default_factory=deque)  # time.monotonic() of requests, BURST_MEMORY long
    last: float | None = None  # the latest request, however long ago
    last_spec: RunSpec | None = None
    specs: OrderedDict = field(default_factory=OrderedDict)  # spec -> its arrivals, the latest spec last
    deaths: int = 0  # processes in a row that died before serving
    no_spawn_before: float = 0.0

    def arrive(self, now: float, spec: RunSpec) -> None:
        self.arrivals.append(now)
        self.last, self.last_spec = now, spec
        self.specs.setdefault(spec, deque()).append(now)
        self.specs.move_to_end(spec)
        while len(self.specs) > TRACKED_SPECS:
            self.specs.popitem(last=False)
        self.forget(now)

    def forget(self, now: float) -> None:
        while self.arrivals and self.arrivals[0] < now - BURST_MEMORY:
            self.arrivals.popleft()
        for spec, times in list(self.specs.items()):
            while times and times[0] < now - BURST_MEMORY:
                times.popleft()
            if not times:
                del self.specs[spec]

    def burst(self, window: float) -> int:
        """The most arrivals within any `window` seconds of the remembered ones."""
        return _burst(self.arrivals, window)

    def aheads_wanted(self, system_text: str) -> dict[RunSpec, int]:
        """Sessions worth opening ahead for the specs with this system prompt: those that came more
        than once lately, as many as arrived at once (up to AHEAD_BURST)."""
        return {spec: min(AHEAD_BURST, _burst(times, AHEAD_WINDOW)) for spec, times in self.specs.items()
                if spec.system_text == system_text and len(times) > 1}


def _burst(arrivals: deque, window: float) -> int:
    """The most of `arrivals` (times, in order) within any `window` seconds."""
    times, best, first = list(arrivals), 0, 0
    for last, at in enumerate(times):
        while at - times[first] > window:
            first += 1
        best = max(best, last - first + 1)
    return best


class ProcessPool:
    def __init__(self, config: Mapping[str, Any], limiter: RunLimiter):
        self.config = config
        self.limiter = limiter
        self.size = config["PROXY_POOL_SIZE"]  # the fewest processes a tenant in use keeps; 0: no pool
        self.warm = self.size > 0
        self.isolation = config["PROXY_ISOLATION"] if self.warm else "process"
        shared = self.isolation == "session"
        self.max_sessions = config["PROXY_PROCESS_MAX_SESSIONS"] if shared else 1
        self.max_requests = config["PROXY_PROCESS_MAX_REQUESTS"] if shared else 1
        self.max_total = max(self.size, config["PROXY_POOL_MAX"])
        self.max_idle = config["PROXY_POOL_MAX_IDLE"]
        self.max_age = config["PROXY_PROCESS_MAX_AGE"]
        self.max_growth_kb = config["PROXY_PROCESS_MAX_GROWTH_MB"] * 1024
        self.startup = DEFAULT_STARTUP  # measured: seconds from spawn to ready, smoothed
        self.hits = self.misses = self.spawned = self.died = self.reclaimed = 0
        self.retired: dict[str, int] = {}
        self._processes: list[AcpProcess] = []
        self._tenants: dict[str, _Tenant] = {}
        self._cond = threading.Condition(threading.RLock())
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._refill_after = 0.0
        self._memory_checked = 0.0
        self._closed = False
        limiter.reclaimers.append(self.reclaim)
        process.before_close_all.append(self.close)

    # -- the request side ---------------------------------------------------------------

    def take(self, spec: RunSpec, shape: AnswerShape, tenant: str, auth: UserAuth) -> AcpSession:
        """A session for this request, on a warm process of its tenant or a new one (its start-up
        then runs while the request waits); a 429 when the worker has no room for either."""
        now = time.monotonic()
        with self._cond:
            if self._closed:
                raise ApiError(503, "The gateway is shutting down.", code="shutting_down")
            if self.warm:
                self._start()
                traffic = self._tenants.setdefault(tenant, _Tenant())
                traffic.arrive(now, spec)
            session = self._place(spec, shape, tenant)
            self._refill_after = max(self._refill_after, now + REFILL_DELAY)
            if session is None and self.warm:
                # This request starts a process of its own: no background start-up competes with it.
                self._refill_after = max(self._refill_after, now + self.startup)
        if session is None:
            session = self._spawn_for(spec, shape, tenant, auth)
        if session.from_pool:
            self.hits += 1
            WARM_HITS.inc()
        else:
            self.misses += 1
            WARM_MISSES.inc()
        self.wake()
        self._publish()
        return session

    def wake(self) -> None:
        """Have the upkeep run now (close what ended, start what is missing)."""
        self._wake.set()

    def reclaim(self) -> bool:
        """RunLimiter reclaimer: close the least recently used idle process so a request gets its slot."""
        with self._cond:
            # Not one already closed (it stays listed until the upkeep removes it): picking it again
            # would "reclaim" forever without yielding, and block the worker.
            idle = [p for p in self._processes if not p.active and p.ready.is_set() and not p.exited]
            if not idle:
                return False
            oldest = min(idle, key=lambda p: p.last_used)
            oldest.retire("evicted")
            self.reclaimed += 1
        oldest.close()
        return True

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._cond:
            processes = list(self._processes)
            return {
                "isolation": self.isolation, "size": sum(1 for p in processes if self._ready_for_more(p)),
                "ready": sum(1 for p in processes if p.ready.is_set() and not p.exited),
                "processes": len(processes), "tenants": len(self._tenants),
                "sessions": sum(len(p.active) for p in processes),
                "target": sum(self._wanted(t, tenant, now) for tenant, t in self._tenants.items()),
                "startup_s": round(self.startup, 3), "hits": self.hits, "misses": self.misses,
                "spawned": self.spawned, "died": self.died, "reclaimed": self.reclaimed, "retired": dict(self.retired),
                "max_sessions": self.max_sessions, "max_requests": self.max_requests,
                "detail": [{"pid": p.cli.pid, "active": len(p.active), "served": p.served,
                            "ready": p.ready.is_set(), "retiring": p.retire_reason,
                            "aheads": len(p.aheads), "age_s": round(now - p.born, 1)} for p in processes],
            }

    def close(self) -> int:
        """Stop starting processes and close every one (worker exit, app teardown); returns how many
        requests were still being answered on them."""
        with self._cond:
            if self._closed:
                return 0
            self._closed = True
            processes = list(self._processes)
            cut = sum(len(p.active) for p in processes)
            self._cond.notify_all()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=float(self.config.get("PROXY_KILL_GRACE", 2.0)) + 10)
        for p in processes:
            p.retire("closing")
            p.close()
        with self._cond:
            self._processes.clear()
        self._publish()
        for hooks, hook in ((self.limiter.reclaimers, self.reclaim), (process.before_close_all, self.close)):
            try:
                hooks.remove(hook)
            except ValueError:
                pass
        return cut

    # -- placing a request ----------------------------------------------------------------

    def _place(self, spec: RunSpec, shape: AnswerShape, tenant: str) -> AcpSession | None:
        """A session on a process that is running or starting (under the lock), or None."""
        mine = [p for p in self._processes if p.tenant == tenant and not p.exited]
        for p in mine:
            ahead = p.take_ahead(spec)
            if ahead is not None:
                ahead.shape = shape
                ahead.from_pool = p.ready.is_set()  # else the request waits for the rest of its start-up
                return ahead
        usable = [p for p in mine if p.usable]
        # A ready process that can open it now, one with the same system prompt first, then the least
        # busy; else one still starting (the request waits for the rest of its start-up).
        ready = [p for p in usable if p.ready.is_set() and p.fits_now(spec.system_text)]
        if ready:
            return self._reserve(min(ready, key=lambda p: (p.system_text != spec.system_text, len(p.active))),
                                 spec, shape, True)
        starting = [p for p in usable if not p.ready.is_set()]
        if starting:
            return self._reserve(min(starting, key=lambda p: (p.system_text != spec.system_text, len(p.active))),
                                 spec, shape, False)
        if usable and (not self.warm or self._count() >= self.max_total):
            # No room for another process: wait on a busy one until it can switch its system prompt.
            return self._reserve(min(usable, key=lambda p: len(p.unsent)), spec, shape, True)
        return None

    def _why_none(self, spec: RunSpec, tenant: str) -> str:
        """Why no process of the tenant could take the request (for the log)."""
        mine = [p for p in self._processes if p.tenant == tenant and not p.exited]
        if not mine:
            return "its API key has no process"
        if not any(p.usable for p in mine):
            return "its API key's processes are full or retiring"
        return (f"its API key's {len(mine)} process(es) hold other system prompts, which their sessions "
                "still need")

    def _reserve(self, p: AcpProcess, spec: RunSpec, shape: AnswerShape, from_pool: bool) -> AcpSession:
        if self.isolation == "process":
            p.drop_aheads()  # this process serves one request, and it is not the one it expected
        session = AcpSession(p, spec, shape, from_pool=from_pool)
        p.reserve(session)
        return session

    def _spawn_for(self, spec: RunSpec, shape: AnswerShape, tenant: str, auth: UserAuth) -> AcpSession:
        """Start a process for this request (a run slot, queueing for one if need be, or a 429). The
        process is registered before it starts, so that the requests after this one join it."""
        deadline = time.monotonic() + self.config["PROXY_QUEUE_TIMEOUT"]
        slot: Slot | None = None
        while slot is None:
            with self._cond:
                session = self._place(spec, shape, tenant)
                if session is not None:
                    return session
                why = self._why_none(spec, tenant)
                full = self.warm and self._count() >= self.max_total
                if not full:
                    slot = self.limiter.try_acquire()
                    if slot is not None:
                        p, session = self._register(slot, tenant, spec, shape)
                        break
            if full:
                # The worker's processes are all in use: wait for room on one, or for one to go.
                if not self._reclaim_or_wait(deadline):
                    raise self.limiter.busy(f"all {self.max_total} gemini processes (PROXY_POOL_MAX) are busy")
                continue
            slot = self.limiter.acquire()  # or 429 after queueing
            with self._cond:
                p, session = self._register(slot, tenant, spec, shape)
        log.info("starting a gemini process for a request: %s", why)
        self._spawn(p, spec, auth)
        return session

    def _reclaim_or_wait(self, deadline: float) -> bool:
        if self.reclaim():
            return True
        with self._cond:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(min(left, TICK))
        return True

    def _register(self, slot: Slot, tenant: str, spec: RunSpec,
                  shape: AnswerShape | None) -> tuple[AcpProcess, AcpSession | None]:
        """A new ACP process for `tenant` holding `slot`, in the pool (under the lock), not started
        yet; with a request's `shape`, the session of that request."""
        p = AcpProcess(self.config, slot, tenant, self.max_sessions, self.max_requests)
        p.on_change = self._changed
        session = None
        if shape is not None:
            session = AcpSession(p, spec, shape, from_pool=False)
            p.reserve(session)
        self._processes.append(p)
        self.spawned += 1
        return p, session

    def _spawn(self, p: AcpProcess, spec: RunSpec, auth: UserAuth) -> None:
        """Start a registered process, its system prompt file set for `spec` (outside the lock)."""
        try:
            p.spawn(auth, spec.cli_model, spec.system_text)
        except BaseException:
            p.close()
            with self._cond:
                if p in self._processes:
                    self._processes.remove(p)
            raise
        self._publish()

    def _open_ahead(self, p: AcpProcess, spec: RunSpec) -> None:
        ahead = AcpSession(p, spec, None, from_pool=True, ahead=True)
        if p.add_ahead(ahead, 1 if self.isolation == "process" else MAX_AHEADS):
            ahead.open_ahead()

    def _changed(self, p: AcpProcess) -> None:
        with self._cond:
            self._cond.notify_all()
        self._wake.set()

    # -- the background side ------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="process-pool", daemon=True)
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
                log.exception("process pool upkeep failed")

    def _count(self) -> int:
        return sum(1 for p in self._processes if not p.exited)

    def _ready_for_more(self, p: AcpProcess) -> bool:
        return p.usable and p.ready.is_set()

    def _counts(self, p: AcpProcess) -> bool:
        """Whether `p` counts as capacity for the tenant's future requests (not about to retire)."""
        return p.usable and p.served < self.max_requests - (REPLACE_AHEAD if self.max_requests > REPLACE_AHEAD else 0)

    def _wanted(self, traffic: _Tenant, tenant: str, now: float) -> int:
        """How many processes a tenant should have that can take more sessions: none once unused for
        PROXY_POOL_MAX_IDLE, else room for its largest burst within one start-up on top of its running
        sessions (at least PROXY_POOL_SIZE)."""
        traffic.forget(now)
        if traffic.last is None or now - traffic.last >= self.max_idle:
            return 0
        running = sum(len(p.active) for p in self._processes if p.tenant == tenant and self._counts(p))
        room = running + max(1, traffic.burst(self.startup))
        return max(self.size, math.ceil(room / self.max_sessions))

    def _tend(self) -> None:
        now = time.monotonic()
        check_memory = now - self._memory_checked >= MEMORY_CHECK
        if check_memory:
            self._memory_checked = now
        doomed: list[AcpProcess] = []
        with self._cond:
            for p in list(self._processes):
                if p.cli.closed:
                    self._processes.remove(p)
                    if p.served == 0 and p.retire_reason is None:
                        self._note_death(p.tenant, now)
                    self._note_retired(p.retire_reason or ("died" if p.served else "died before serving"))
                    continue
                if p.ready.is_set() and p.ready_at is not None and not getattr(p, "_startup_noted", False):
                    p._startup_noted = True  # type: ignore[attr-defined]
                    self.startup = 0.7 * self.startup + 0.3 * (p.ready_at - p.born)
                    self._tenants.get(p.tenant, _Tenant()).deaths = 0
                self._retire_if_due(p, now, check_memory)
                if (p.retire_reason is not None or p.exited) and not p.active:
                    doomed.append(p)
            for tenant, traffic in list(self._tenants.items()):
                wanted = self._wanted(traffic, tenant, now)
                idle = sorted((p for p in self._processes if p.tenant == tenant and self._counts(p) and not p.active
                               and p.cli.proc is not None and p not in doomed), key=lambda p: p.last_used)
                have = sum(1 for p in self._processes if p.tenant == tenant and self._counts(p))
                for p in idle[:max(0, have - wanted)]:  # more than the traffic needs: shed the least used
                    p.retire("idle" if wanted == 0 else "shed")
                    doomed.append(p)
                if wanted == 0 and not any(p.tenant == tenant for p in self._processes if p not in doomed):
                    del self._tenants[tenant]  # nobody uses it any more
        for p in doomed:
            p.close()
        self._refill(now)
        self._open_aheads()
        self._publish()

    def _retire_if_due(self, p: AcpProcess, now: float, check_memory: bool) -> None:
        if p.retire_reason is not None or p.exited:
            return
        if self.isolation == "process":
            if p.ready.is_set() and not p.active and now - p.born >= self.max_idle:
                p.retire("age")  # waited too long: its login copy and start-up state are stale
            return
        if now - p.born >= self.max_age:
            p.retire("age")
        elif check_memory and p.rss_at_ready and p.cli.rss_kb() - p.rss_at_ready > self.max_growth_kb:
            p.retire("memory")

    def _refill(self, now: float) -> None:
        if not self.warm or self._closed or now < self._refill_after or not self.config.get("GEMINI_BIN"):
            return
        auth: UserAuth | None = None
        while not self._closed:
            with self._cond:
                if (self._count() >= self.max_total
                        or sum(1 for p in self._processes if not p.ready.is_set() and not p.exited) >= MAX_STARTING):
                    return
                want = None
                for tenant, traffic in self._tenants.items():
                    have = sum(1 for p in self._processes if p.tenant == tenant and self._counts(p))
                    if (have < self._wanted(traffic, tenant, now) and traffic.no_spawn_before <= now
                            and traffic.last_spec is not None):
                        want = (tenant, traffic.last_spec)
                        break
                if want is None:
                    return
            if auth is None:
                auth = find_user_auth(self.config["PROXY_GEMINI_CONFIG"])
                if auth.problem:
                    return  # requests report it; nothing to warm up meanwhile
            slot = self.limiter.try_acquire()
            if slot is None:
                return  # every slot is in use, or requests are queueing for one
            with self._cond:
                p, _ = self._register(slot, want[0], want[1], None)
            try:
                self._spawn(p, want[1], auth)
                self._open_ahead(p, want[1])
            except Exception as exc:  # noqa: BLE001
                log.warning("could not start a warm gemini process: %s", exc)
                with self._cond:
                    self._note_death(want[0], time.monotonic())
                return

    def _open_aheads(self) -> None:
        """Processes open sessions ahead for the specs that repeat with the system prompt they hold
        (a session costs ~45 ms of one process's time, not a start-up: no brake here), and drop
        those opened for specs that stopped coming. In `process` mode a warm process exists for one
        request anyway, and opens one session for its tenant's latest spec."""
        if self._closed:
            return
        for p in list(self._processes):
            traffic = self._tenants.get(p.tenant)
            # Only a quiet process opens one: node runs a `session/new` on the thread that streams the
            # other sessions' answers (~45 ms each), and a request's own open must not wait for it.
            if traffic is None or traffic.last_spec is None or not p.ready.is_set() or p.capabilities is None \
                    or not self._counts(p) or p.active or p.opening:
                continue
            if self.isolation == "process":
                wanted = {traffic.last_spec: 1}
            else:
                wanted = traffic.aheads_wanted(p.system_text)
                # Those for another system prompt are kept while their spec still comes: they are valid
                # again whenever the process holds that prompt.
                p.drop_aheads(lambda spec, w=wanted, t=traffic, text=p.system_text:
                              spec in w or (spec.system_text != text and spec in t.specs))
            for spec, count in wanted.items():
                if not p.fits_now(spec.system_text):
                    continue
                for _ in range(count - p.ahead_count(spec)):
                    self._open_ahead(p, spec)

    def _note_death(self, tenant: str, now: float) -> None:
        """A process of `tenant` died before serving (under the lock): retry later and later."""
        self.died += 1
        traffic = self._tenants.get(tenant)
        if traffic is not None:
            traffic.deaths += 1
            traffic.no_spawn_before = now + min(MAX_DEATH_BACKOFF, 2.0 ** (traffic.deaths - 1))

    def _note_retired(self, reason: str) -> None:
        key = reason if reason in ("requests", "age", "memory", "idle", "shed", "evicted", "closing",
                                   "died", "died before serving") else "unclean"
        self.retired[key] = self.retired.get(key, 0) + 1
        RETIREMENTS.labels(key).inc()

    def _publish(self) -> None:
        with self._cond:
            processes = list(self._processes)
        WARM_PROCESSES.set(sum(1 for p in processes if self._ready_for_more(p) and not p.active))
        CLI_PROCESSES.set(sum(1 for p in processes if not p.exited))
        SESSIONS_ACTIVE.set(sum(len(p.active) for p in processes))
