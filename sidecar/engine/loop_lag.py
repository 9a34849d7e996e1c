"""How late the event loop runs what is due: the stall every request, renewal and timer waits out.

A timer is set `interval_s` ahead; the time between its due moment and the moment the loop runs
it is the loop's lag, fed to `observe` (seconds). Lag comes from a callback that holds the loop
(JSON encoding, file writes, a TLS handshake, a garbage collection) or from the process not being
scheduled. Up to 1 ms of it is the loop's own: epoll waits in whole milliseconds, rounded up, so
only lags beyond that are stalls. It is a sample: a stall of d seconds is seen with probability
about d / interval_s, but stalls that matter for /leader latency (milliseconds) recur and overlap
many samples over a minute. Cost: one timer per interval (the default 20 ms is ~50 wake-ups a second).

`GcPauseTimer` names one cause outright: a garbage collection runs inside whatever allocates, so
it holds the loop for its whole length, which it times exactly (every one, not a sample).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

DEFAULT_INTERVAL_S = 0.02


class LoopLagMonitor:
    def __init__(self, observe: Callable[[float], None], interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s}")
        self.observe = observe
        self.interval_s = interval_s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.observe(max(0.0, loop.time() - due))


class GcPauseTimer:
    """Times every collection of the garbage collector: `observe(generation, seconds)` after each.

    Installed through `gc.callbacks` for the process's life (`install`/`remove`). Cost: two calls
    of a few microseconds per collection; young collections run every few thousand allocations.
    """

    def __init__(self, observe: Callable[[int, float], None],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.observe = observe
        self._clock = clock
        self._started: float | None = None

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def remove(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
        elif self._started is not None:
            self.observe(int(info.get("generation", -1)), self._clock() - self._started)
            self._started = None
