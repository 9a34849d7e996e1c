"""Keyed locks' metrics, per lock prefix (never per key: keys are unbounded)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LABELS = ("namespace", "election", "prefix")


class LockMetrics:
    """Counters for the driver (`LockCounters`), the held gauge read at scrape time, and the lock
    Leases' API calls by verb (apiserver writes per lock-minute, in `make bench`)."""

    def __init__(self, registry: CollectorRegistry, namespace: str, election: str, prefix: str) -> None:
        self._labels = (namespace, election, prefix)
        self._acquisitions = Counter("lease_sidecar_lock_acquisitions", "Keyed locks acquired by this pod's owners.",
                                     _LABELS, registry=registry).labels(*self._labels)
        self._conflicts = Counter("lease_sidecar_lock_conflicts", "Lock acquisitions refused: held by another "
                                  "owner, not free yet, or the wait ran out.", _LABELS,
                                  registry=registry).labels(*self._labels)
        self._losses = Counter("lease_sidecar_lock_losses", "Locks lost before their owner released them "
                               "(deadline passed, owner or app silent, taken, deleted).", _LABELS,
                               registry=registry).labels(*self._labels)
        self._calls = Counter("lease_sidecar_lock_api_requests", "API calls on lock Leases, by verb and result.",
                              (*_LABELS, "verb", "result"), registry=registry)
        self._held: Callable[[], int] = lambda: 0
        registry.register(_HeldCollector(self))

    def watch_held(self, held: Callable[[], int]) -> None:
        self._held = held

    def acquired(self) -> None:
        self._acquisitions.inc()

    def conflicted(self) -> None:
        self._conflicts.inc()

    def lost(self) -> None:
        self._losses.inc()

    def observe_request(self, verb: str, result: str, seconds: float) -> None:
        self._calls.labels(*self._labels, verb, result).inc()


class _HeldCollector(Collector):
    def __init__(self, metrics: LockMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("lease_sidecar_locks_held", "Keyed locks this pod's owners hold now.",
                                   labels=list(_LABELS))
        family.add_metric(list(self._metrics._labels), self._metrics._held())
        yield family
