"""How late the event loop runs what is due: the stall every request, renewal and timer waits out.

A timer is set `interval_s` ahead; the time between its due moment and the moment the loop runs
it is the loop's lag, fed to `observe` (seconds). Lag comes from a callback that holds the loop
(JSON encoding, file writes, a TLS handshake, a garbage collection) or from the process not being
scheduled. Up to 1 ms of it is the loop's own: epoll waits in whole milliseconds, rounded up, so
only lags beyond that are stalls. It is a sample: a stall of d seconds is seen with probability
about d / interval_s, but stalls that matter for /leader latency (milliseconds) recur and overlap
many samples over a minute. Cost: one timer per interval (the default 20 ms is ~50 wake-ups a second).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
