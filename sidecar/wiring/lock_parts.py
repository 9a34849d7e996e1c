"""Keyed locks (`--locks`) wired in: settings check, the driver, its routes, loops and shutdown."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from kubernetes_asyncio.client import ApiClient
from prometheus_client import CollectorRegistry

from sidecar.core.clock import Clock
from sidecar.core.config import ConfigError
from sidecar.core.keyed_locks import LockLimits, check_max_ttl, check_prefix, election_label, lock_election_config
from sidecar.core.liveness import AppLiveness
from sidecar.engine.app_link import AppLink
from sidecar.engine.keyed_locks import KeyedLocks
from sidecar.kube.lock_leases import LockLeases
from sidecar.publish import locks_api
from sidecar.publish.lock_metrics import LockMetrics


def lock_prefix(settings: Any) -> str:
    return settings.lock_prefix or f"{settings.lease_name}-lock-"


def check_lock_settings(settings: Any) -> None:
    """One line naming the flag (exit 2) for a wrong lock setting."""
    if not settings.locks:
        return
    check_prefix(lock_prefix(settings))
    check_max_ttl(settings.lock_max_ttl)
    if settings.lock_max_keys < 1:
        raise ConfigError("--lock-max-keys", f"must be at least 1; got {settings.lock_max_keys}")
    if not settings.lock_rate > 0:
        raise ConfigError("--lock-rate", f"must be a positive number of requests per second; got {settings.lock_rate}")
    if settings.lock_gc_after < settings.lock_max_ttl:
        raise ConfigError("--lock-gc-after", f"must be at least --lock-max-ttl ({settings.lock_gc_after:g}s < "
                                             f"{settings.lock_max_ttl:g}s)")


@dataclass
class LockParts:
    locks: KeyedLocks
    metrics: LockMetrics

    def install_routes(self, app: web.Application) -> None:
        locks_api.add_routes(app, self.locks)

    def follow_app(self, link: AppLink) -> None:
        """An acquisition waiting (`?wait=`) for a live app is taken at the app's heartbeat."""
        link.on_alive(self.locks.app_seen_alive)

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {"lock_watch": self.locks.watch_forever(), "lock_gc": self.locks.gc_forever()}

    async def shut_down(self, timeout_s: float) -> None:
        await self.locks.close(timeout_s)


RequestObserver = Callable[[str, str, float], None]


def lock_request_observer(count_lock_call: RequestObserver,
                          observe_election_request: RequestObserver | None) -> RequestObserver:
    """Each lock Lease request counted by the locks' own metrics and, in the election's request
    histogram, under a verb of its own ("lock_update", as the members view's are
    "member_update"): the renewal-latency alert reads verb="update", and a lock's requests must
    neither page for nor hide the election's renewals."""
    def observe(verb: str, result: str, seconds: float) -> None:
        count_lock_call(verb, result, seconds)
        if observe_election_request is not None:
            observe_election_request(f"lock_{verb}", result, seconds)
    return observe


def build_lock_parts(settings: Any, api_client: ApiClient, namespace: str, identity: str, clock: Clock,
                     liveness: AppLiveness, registry: CollectorRegistry,
                     observe_request: Callable[[str, str, float], None] | None = None) -> LockParts | None:
    if not settings.locks:
        return None
    prefix = lock_prefix(settings)
    metrics = LockMetrics(registry, namespace, settings.lease_name, prefix)

    observe = lock_request_observer(metrics.observe_request, observe_request)
    leases = LockLeases(api_client, namespace, election_label(settings.lease_name), prefix, observe)
    config = lock_election_config(settings.lock_max_ttl, settings.api_timeout)
    limits = LockLimits(max_keys=settings.lock_max_keys, rate_per_s=settings.lock_rate,
                        burst=max(1, int(settings.lock_rate * 2)), gc_after_s=settings.lock_gc_after)
    locks = KeyedLocks(leases, clock, identity, config, limits, app=liveness, counters=metrics)
    metrics.watch_held(lambda: locks.held_count)
    return LockParts(locks, metrics)
