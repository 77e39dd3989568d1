"""RunLimiter: a per-worker cap on gemini processes, with a bounded, time-limited queue.

Each gemini process costs ~250 MB and a CPU-second to start, so a worker holds at most
PROXY_MAX_CONCURRENT of them (running or warm in the pool). A request beyond that waits
in a queue of at most PROXY_QUEUE_SIZE for at most PROXY_QUEUE_TIMEOUT seconds, then gets
429 with Retry-After. Idle warm processes give their slot back when requests need it
(the pool registers a reclaimer).

The cap is per worker process: the whole service runs at most
WORKERS x PROXY_MAX_CONCURRENT gemini processes, and queues at most
WORKERS x PROXY_QUEUE_SIZE requests.

`listeners` are called (with the limiter, under its lock) whenever `in_use` or `queued`
changes; metrics uses this to keep its per-worker gauges current. They must be quick and
must not call back into the limiter's acquire/release.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from .errors import ApiError


class Slot:
    """The right to run one gemini process; `release()` is idempotent."""

    def __init__(self, limiter: RunLimiter):
        self._limiter = limiter
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release()


class RunLimiter:
    def __init__(self, capacity: int, queue_size: int, queue_timeout: float):
        self.capacity = capacity
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.in_use = 0
        self.queued = 0
        # Called, newest first, to free a slot held by something idle (warm processes).
        self.reclaimers: list[Callable[[], bool]] = []
        # Called after every change of in_use or queued (see the module docstring).
        self.listeners: list[Callable[[RunLimiter], None]] = []
        self._cond = threading.Condition()

    def _changed(self) -> None:
        for listener in list(self.listeners):
            try:
                listener(self)
            except Exception:  # noqa: BLE001 - observers must never break admission
                continue

    def try_acquire(self) -> Slot | None:
        """A slot only if one is free and no request is waiting (the pool uses this)."""
        with self._cond:
            if self.in_use < self.capacity and self.queued == 0:
                self.in_use += 1
                self._changed()
                return Slot(self)
        return None

    def acquire(self) -> Slot:
        """A slot for a request: now, after an idle holder gave one back, or after queueing."""
        with self._cond:
            if self.in_use < self.capacity:
                self.in_use += 1
                self._changed()
                return Slot(self)
        self._reclaim()
        with self._cond:
            if self.in_use < self.capacity:
                self.in_use += 1
                self._changed()
                return Slot(self)
            if self.queued >= self.queue_size:
                raise self.busy("the queue is full")
            self.queued += 1
            self._changed()
            deadline = time.monotonic() + self.queue_timeout
            try:
                while self.in_use >= self.capacity:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self.busy(f"no run slot freed within {self.queue_timeout:g} s")
                    self._cond.wait(left)
                self.in_use += 1
                return Slot(self)
            finally:
                self.queued -= 1
                self._changed()

    def _reclaim(self) -> None:
        for reclaim in list(self.reclaimers):
            try:
                if reclaim():
                    return
            except Exception:  # noqa: BLE001 - a failing reclaimer must not fail the request
                continue

    def _release(self) -> None:
        with self._cond:
            self.in_use -= 1
            self._changed()
            self._cond.notify()

    def busy(self, why: str) -> ApiError:
        """The 429 for a request the worker has no room for, saying why."""
        retry_after = max(1, math.ceil(self.queue_timeout / 2))
        return ApiError(429, f"The gateway is busy: {self.capacity} gemini runs are in progress and {why}. "
                        "Retry shortly (PROXY_MAX_CONCURRENT sets the limit).", code="gateway_busy",
                        headers={"Retry-After": str(retry_after)})
