"""Prometheus metrics from an injected registry (never the global one).

Election figures are read from the Elector at scrape time, so a scrape can never show a leader
that the local API would not: both evaluate the renew deadline at the moment of asking.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.core.clock import Clock
from sidecar.core.election import BeatRole, Elector
from sidecar.core.liveness import AppLiveness
from sidecar.core.members import MemberTable

_API_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LOOP_LAG_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

_COUNTERS = (
    ("heartbeats_sent", "Heartbeats: periodic refreshes of the published status and role files."),
    ("leader_elections_won", "Leadership terms this candidate started."),
    ("leader_elections_lost", "Acquisition attempts that lost a race, plus terms lost involuntarily."),
    ("lease_renewals", "Successful renewals of a held lease."),
    ("lease_renewal_failures", "Renewal attempts that failed (error, timeout or conflict)."),
    ("failovers_detected", "Times this standby found another holder's lease expired or released."),
)


class _ElectionCollector(Collector):
    def __init__(self, elector: Elector, clock: Clock, namespace: str, name: str) -> None:
        self._elector = elector
        self._clock = clock
        self._labels = [namespace, name]

    def collect(self) -> Iterator[Metric]:
        stats = self._elector.stats
        for field_name, help_text in _COUNTERS:
            family = CounterMetricFamily(f"lease_sidecar_{field_name}", help_text, labels=["namespace", "name"])
            family.add_metric(self._labels, getattr(stats, field_name))
            yield family
        now = self._clock.now()
        view = self._elector.view(now.mono)
        leading = view.role is BeatRole.LEADER

        def gauge(metric: str, help_text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(metric, help_text, labels=["namespace", "name"])
            family.add_metric(self._labels, value)
            return family

        yield gauge("lease_sidecar_is_leader", "1 if this candidate leads now, else 0.", 1 if leading else 0)
        yield gauge("lease_sidecar_fencing_token", "Fencing token of the current term; 0 when not leader.",
                    view.fencing_token or 0)
        started = view.term_started
        yield gauge("lease_sidecar_leader_since_seconds", "Seconds since this term began; 0 when not leader.",
                    now.mono - started.mono if leading and started else 0)
        yield gauge("lease_sidecar_lease_valid_seconds",
                    "Seconds left of the deadline the app was told (valid_for_seconds): the leader steps down "
                    "then unless it renews; 0 when not leader.",
                    max(0.0, view.valid_until_mono - now.mono) if leading and view.valid_until_mono else 0)
        master = GaugeMetricFamily("leader_election_master_status",
                                   "client-go compatible: 1 if this candidate is the leader.", labels=["name"])
        master.add_metric([self._labels[1]], 1 if leading else 0)
        yield master


class _AppCollector(Collector):
    """The app's liveness and, with --members, the members by state; read at scrape time."""

    def __init__(self, app: AppLiveness, members: MemberTable | None, clock: Clock, namespace: str,
                 name: str) -> None:
        self._app = app
        self._members = members
        self._clock = clock
        self._labels = [namespace, name]

    def collect(self) -> Iterator[Metric]:
        now = self._clock.now().mono
        view = self._app.view(now)
        since = GaugeMetricFamily("lease_sidecar_app_heartbeat_age_seconds",
                                  "Seconds since the app's last heartbeat (POST /heartbeat or a passing health "
                                  "probe); +Inf before the first.", labels=["namespace", "name"])
        since.add_metric(self._labels, math.inf if view.since_last_heartbeat_s is None
                         else view.since_last_heartbeat_s)
        yield since
        beats = CounterMetricFamily("lease_sidecar_app_heartbeats", "App heartbeats received.",
                                    labels=["namespace", "name"])
        beats.add_metric(self._labels, view.heartbeats)
        yield beats
        alive = GaugeMetricFamily("lease_sidecar_app_alive", "1 if the app heartbeated within "
                                  "--app-heartbeat-ttl (always 1 when the TTL is unset).", labels=["namespace", "name"])
        alive.add_metric(self._labels, 0 if view.alive is False else 1)
        yield alive
        if self._members is not None:
            members = GaugeMetricFamily("lease_sidecar_members", "Members of this election by state, as this "
                                        "sidecar observes their records: alive ones by role, and stale.",
                                        labels=["namespace", "name", "state"])
            for state, count in self._members.counts(now).items():
                members.add_metric([*self._labels, state], count)
            yield members


class GcPauseHistogram(Collector):
    """`lease_sidecar_gc_pause_seconds{generation}`, kept without locks.

    It is written from inside the garbage collector, which runs wherever this thread allocates: in
    the middle of a scrape too, while prometheus-client holds a metric's (non-reentrant) lock. A
    `Histogram` observed there would wait for that lock forever. Plain counters do not; their
    lists are made up front, so a scrape never iterates a dict that a collection grows."""

    GENERATIONS = (0, 1, 2)

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self._bounds = bounds_s
        self._counts = {generation: [0] * (len(bounds_s) + 1) for generation in self.GENERATIONS}
        self._sums = dict.fromkeys(self.GENERATIONS, 0.0)

    def observe(self, generation: int, seconds: float) -> None:
        if generation in self._counts:
            self._counts[generation][bisect.bisect_left(self._bounds, seconds)] += 1  # le: bound >= value
            self._sums[generation] += seconds

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily("lease_sidecar_gc_pause_seconds", "How long each garbage collection held "
                                       "the process, by generation (0 young, 2 full).", labels=["generation"])
        for generation in self.GENERATIONS:
            counts, cumulative, buckets = list(self._counts[generation]), 0, []
            for bound, count in zip((*self._bounds, math.inf), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            family.add_metric([str(generation)], buckets, sum_value=self._sums[generation])
        yield family


class ElectionMetrics:
    def __init__(self, registry: CollectorRegistry, elector: Elector, clock: Clock,
                 namespace: str, name: str, identity: str) -> None:
        self.registry = registry
        self._labels = {"namespace": namespace, "name": name}
        self.api_duration = Histogram(
            "lease_sidecar_api_request_duration_seconds", "Kubernetes API requests for the Lease.",
            ["namespace", "name", "verb", "result"], buckets=_API_BUCKETS_S, registry=registry)
        self.watch_restarts = Counter(
            "lease_sidecar_watch_restarts", "Times the Lease watch broke and was re-established.",
            ["namespace", "name"], registry=registry)
        self.watch_restarts.labels(**self._labels)  # exposed as 0 from the start, so rate() works
        self.loop_lag = Histogram(
            "lease_sidecar_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled every 20 ms): the stall a local API request waits out.",
            buckets=_LOOP_LAG_BUCKETS_S, registry=registry)
        self.gc_pauses = GcPauseHistogram(_LOOP_LAG_BUCKETS_S)
        registry.register(self.gc_pauses)
        Info("lease_sidecar", "Build and identity of this sidecar.", registry=registry).info(
            {"version": __version__, "identity": identity, "namespace": namespace, "lease": name})
        registry.register(_ElectionCollector(elector, clock, namespace, name))
        self._clock, self._namespace, self._name = clock, namespace, name

    def watch_app(self, app: AppLiveness, members: MemberTable | None = None) -> None:
        """Adds the app's liveness (and the members view) to the scrape."""
        self.registry.register(_AppCollector(app, members, self._clock, self._namespace, self._name))

    def expose_requests(self, verbs: Iterable[str], results: Iterable[str]) -> None:
        """Exposes each (verb, result) series of the request histogram at zero from the start.

        rate() and increase() count only what a series gains after Prometheus first scraped it, so
        a series born with its first observation hides that observation. A leader cut off from the
        apiserver times out once, steps down and only reads from then on: born then, the series of
        that one timed-out renewal would never lift LeaseSidecarRenewalLatencyHigh (nor show in the
        dashboard's rates)."""
        for verb in verbs:
            for result in results:
                self.api_duration.labels(verb=verb, result=result, **self._labels)

    def observe_request(self, verb: str, result: str, seconds: float) -> None:
        self.api_duration.labels(verb=verb, result=result, **self._labels).observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        self.gc_pauses.observe(generation, seconds)

    def count_watch_restart(self) -> None:
        self.watch_restarts.labels(**self._labels).inc()
