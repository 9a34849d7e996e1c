"""Wires the parts together and supervises them: named tasks, one failing stops all.

Shutdown order matters: publish standby, release the lease, write `standby` to the role file
last, all under `asyncio.shield` so a second signal cannot cut the release short.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import incluster_config, kube_config
from prometheus_client import CollectorRegistry

from sidecar.core.clock import SystemClock
from sidecar.core.config import split_address
from sidecar.core.election import Elector
from sidecar.core.liveness import AppLiveness
from sidecar.engine.app_link import AppLink
from sidecar.engine.heartbeat import BeatHeartbeat
from sidecar.engine.loop_lag import GcPauseTimer, LoopLagMonitor
from sidecar.engine.members import MemberPresence
from sidecar.engine.status import StatusBoard
from sidecar.kube import lease_lock, member_leases
from sidecar.kube.lease_lock import LeaseLockBackend
from sidecar.kube.member_leases import MemberLeaseStore
from sidecar.publish import handover_api, http_api, metrics_http
from sidecar.publish.app_api import AppControls
from sidecar.publish.metrics import ElectionMetrics
from sidecar.publish.role_files import RoleFiles
from sidecar.wiring import logs, scheduling
from sidecar.wiring.leader_parts import (
    LeaderParts,
    ReleaseFirst,
    SuccessorView,
    build_leader_parts,
    handover_requester,
    own_revision,
)
from sidecar.wiring.lock_parts import LockParts, build_lock_parts
from sidecar.wiring.settings import IN_CLUSTER_DIR, RunSettings
from sidecar.wiring.stop_signals import StopSignals

log = logging.getLogger("lease_sidecar.wiring.app")

SHUTDOWN_GRACE_S = 5.0
"""How long the release may take after SIGTERM before the process exits anyway."""


class CredentialsError(Exception):
    """No usable Kubernetes credentials: a configuration problem, reported in one line."""


async def make_api_client(settings: RunSettings) -> ApiClient:
    try:
        return await _make_api_client(settings)
    except CredentialsError:
        raise
    except Exception as error:  # kubernetes-asyncio raises ConfigException, OSError, KeyError...
        one_line = " ".join(str(error).split())
        raise CredentialsError(f"cannot load Kubernetes credentials: {one_line}") from error


async def _make_api_client(settings: RunSettings) -> ApiClient:
    configuration = Configuration()
    if not settings.kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        incluster_config.load_incluster_config(
            client_configuration=configuration,
            token_filename=str(IN_CLUSTER_DIR / "token"), cert_filename=str(IN_CLUSTER_DIR / "ca.crt"))
    else:
        path = settings.kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(
            Path.home() / ".kube" / "config")
        if not os.path.isfile(path):  # noqa: ASYNC240  (start-up, before any loop work)
            raise CredentialsError(f"no kubeconfig at {path} (and not in a cluster: KUBERNETES_SERVICE_HOST unset)")
        await kube_config.load_kube_config(config_file=path, client_configuration=configuration)
    return ApiClient(configuration=configuration)


@dataclass
class AppSide:
    """The app's parts: heartbeats and resigns (AppLink), the health probe, the members view."""

    link: AppLink
    members: MemberPresence | None
    controls: AppControls
    health_url: str
    interval_s: float

    @classmethod
    def build(cls, settings: RunSettings, config: Any, liveness: AppLiveness, board: StatusBoard, clock: SystemClock,
              heartbeat: BeatHeartbeat, api_client: ApiClient, identity: str, namespace: str,
              metrics: ElectionMetrics) -> AppSide:
        link = AppLink(liveness, board, clock, heartbeat.wake, default_sit_out_s=config.heartbeat_interval_s)
        members = None
        if settings.members:
            store = MemberLeaseStore(api_client, namespace, settings.lease_name, metrics.observe_request)
            metrics.expose_requests(member_leases.REQUEST_VERBS, member_leases.REQUEST_RESULTS)
            members = MemberPresence(store, board, clock, identity, settings.lease_name, config)
        metrics.watch_app(liveness, members.table if members else None)

        def no_members() -> dict[str, Any]:
            return {"enabled": False, "members": [], "counts": {}}

        controls = AppControls(link.heartbeat, link.resign, members.members_json if members else no_members)
        return cls(link, members, controls, settings.app_health_url, config.heartbeat_interval_s)

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        loops: dict[str, Coroutine[Any, Any, None]] = {}
        if self.health_url:
            loops["app_probe"] = self.link.probe_forever(self.health_url, self.interval_s)
        if self.members is not None:
            loops["member_watch"] = self.members.watch_forever()
            loops["member_renew"] = self.members.renew_forever()
        return loops


@dataclass
class Parts:
    """Everything one sidecar is made of, built in `assemble` and torn down in `_shut_down`."""

    elector: Elector
    liveness: AppLiveness
    clock: SystemClock
    metrics: ElectionMetrics
    registry: CollectorRegistry
    board: StatusBoard
    role_files: RoleFiles | None
    api_client: ApiClient
    leader_parts: LeaderParts
    heartbeat: BeatHeartbeat
    app_side: AppSide
    lock_parts: LockParts | None = None


async def run(settings: RunSettings, namespace: str, identity: str, config: Any,
              signals: StopSignals | None = None) -> int:
    """The sidecar's life: stop signals first, then the parts, the servers, the named loops."""
    # SIGTERM at any moment of start-up: finish start-up (standby is written first), start no loop,
    # shut down, exit 0.
    stop = asyncio.Event()
    (signals or StopSignals.install()).attach(asyncio.get_running_loop(), stop.set)
    context: dict[str, Any] = {"lease": f"{namespace}/{settings.lease_name}", "identity": identity,
                               "correlation_id": uuid.uuid4().hex[:12], "term": None}
    logs.configure(settings.log_level, context)
    parts = await assemble(settings, namespace, identity, config, context)
    cpu_slice = _ask_for_cpu_slice(settings.cpu_slice)
    tasks: dict[str, asyncio.Task[None]] = {}
    runners = await start_servers(settings, parts, alive=lambda: bool(tasks) and not any(
        task.done() for task in tasks.values()))
    _freeze_long_lived_objects()
    gc_pauses = GcPauseTimer(parts.metrics.observe_gc_pause)
    exit_code = 0
    try:
        gc_pauses.install()
        log.info("starting", extra={"event": "start", "config": dict(vars(config)),
                                    "http_address": settings.http_address,
                                    "metrics_address": settings.metrics_address, "cpu_slice": cpu_slice})
        # Stopped during start-up: no loop starts, and the shut-down below has nothing to release.
        if not stop.is_set():
            tasks.update({name: asyncio.create_task(loop, name=name) for name, loop in named_loops(parts).items()})
        exit_code = await _supervise(tasks, stop)
    finally:
        await asyncio.shield(_shut_down(parts, tasks, runners))
        gc_pauses.remove()
    log.info("stopped", extra={"event": "stop", "exit_code": exit_code})
    return exit_code


async def assemble(settings: RunSettings, namespace: str, identity: str, config: Any,
                   context: dict[str, Any]) -> Parts:
    """Build the parts; nothing runs yet. The role file says standby before anything else."""
    role_files = RoleFiles(Path(settings.role_dir)) if settings.role_dir else None
    if role_files:
        role_files.prepare()
    clock = SystemClock()
    liveness = AppLiveness(settings.app_heartbeat_ttl)
    elector = Elector(identity, config, gate=liveness)
    elector.own_revision = own_revision(identity)
    registry = CollectorRegistry(auto_describe=True)
    metrics = ElectionMetrics(registry, elector, clock, namespace, settings.lease_name, identity)
    # At zero from the start, so that the first timeout or error of each verb shows in rate().
    metrics.expose_requests(lease_lock.REQUEST_VERBS, lease_lock.REQUEST_RESULTS)
    backend: LeaseLockBackend | None = None
    board = StatusBoard(elector, clock, context["lease"], config.heartbeat_ttl_s, app=liveness,
                        lease_uid=lambda: backend.uid if backend is not None else None,
                        draining=lambda: elector.draining(clock.now().mono))

    def track_term(snapshot: dict[str, Any]) -> None:
        context["term"] = snapshot["fencing_token"]

    board.subscribe(track_term)
    if role_files:
        board.subscribe(role_files.publish, renewals=True)  # status.json holds the newest deadline

    api_client = await make_api_client(settings)
    backend = LeaseLockBackend(api_client, namespace, settings.lease_name, metrics.observe_request)
    leader_parts = build_leader_parts(settings, api_client, namespace, identity, board, clock,
                                      lambda: elector.view(clock.now().mono).term_end, config.request_timeout)
    heartbeat = BeatHeartbeat(elector, ReleaseFirst(backend, leader_parts.before_release), board, clock,
                              metrics.count_watch_restart)
    app_side = AppSide.build(settings, config, liveness, board, clock, heartbeat, api_client, identity, namespace,
                             metrics)
    if app_side.members is not None:
        board.subscribe(SuccessorView(elector, clock, app_side.members.table.rows,
                                      app_gated=settings.app_heartbeat_ttl is not None).on_snapshot)
    lock_parts = build_lock_parts(settings, api_client, namespace, identity, clock, liveness, registry,
                                  metrics.observe_request)
    if lock_parts is not None:
        lock_parts.follow_app(app_side.link)
    return Parts(elector, liveness, clock, metrics, registry, board, role_files, api_client, leader_parts,
                 heartbeat, app_side, lock_parts)


async def start_servers(settings: RunSettings, parts: Parts, alive: Callable[[], bool]) -> list[Any]:
    """The local API (loopback by default) and, if asked, the metrics port; returns their runners."""
    host, _ = split_address(settings.http_address, "--http-address")
    if not http_api.is_loopback(host):
        log.warning("local API bound beyond loopback: any pod or node that reaches it can read the role",
                    extra={"event": "http_not_loopback", "address": settings.http_address})
    liveness = parts.liveness

    members = parts.app_side.members

    def ready() -> bool:
        # The kubelet's readiness (metrics port). With --app-heartbeat-ttl a candidate whose app
        # never heartbeated cannot lead, so it is not Ready yet; with --members, not before its
        # member record says its app is alive. A rollout waits for Ready before it stops the next
        # old pod, so a leader being replaced already sees this pod as a live successor of the new
        # revision (else it names an old pod, and the rollout hands over twice).
        observed = parts.board.snapshot()["observed_at"] is not None
        if not observed or liveness.ttl_s is None:
            return observed
        return liveness.heartbeats > 0 and (members is None or members.shown_alive)

    local_app = http_api.build_app(parts.board, alive, parts.app_side.controls)
    handover_api.install(local_app, handover_requester(parts.elector, parts.clock, parts.board,
                                                       parts.heartbeat.wake, parts.leader_parts))
    if parts.lock_parts is not None:
        parts.lock_parts.install_routes(local_app)
    runners = [await http_api.start_site(local_app, settings.http_address, "--http-address")]
    if settings.metrics_address:
        metrics_app = metrics_http.build_app(parts.registry, alive, ready)
        runners.append(await http_api.start_site(metrics_app, settings.metrics_address, "--metrics-address"))
    return runners


def named_loops(parts: Parts) -> dict[str, Coroutine[Any, Any, None]]:
    """Every long-running coroutine, by the name its failure is logged under."""
    return {
        "elect": parts.heartbeat.elect(),
        "watch_lease": parts.heartbeat.watch_lease(),
        "beat": parts.heartbeat.beat(),
        "loop_lag": LoopLagMonitor(parts.metrics.observe_loop_lag).run(),
        **parts.app_side.loops(),
        **{name: loop() for name, loop in parts.leader_parts.loops.items()},
        **(parts.lock_parts.loops() if parts.lock_parts is not None else {}),
    }


def _freeze_long_lived_objects() -> None:
    # Everything imported and built so far lives as long as the process (the Kubernetes client
    # alone is ~100k objects). Freezing it keeps full GC passes, which would otherwise walk it all
    # and show up as multi-millisecond stalls in /leader latency, short.
    gc.collect()
    gc.freeze()


def _ask_for_cpu_slice(slice_s: float) -> str:
    """What became of --cpu-slice, for the start line: the slice, or why the kernel's stays."""
    if not slice_s:
        return "kernel default"
    try:
        refused = scheduling.request_short_slice(slice_s)
    except OSError as error:  # the process's own scheduling could not even be read
        refused = str(error)
    return f"{slice_s * 1000:g}ms" if refused is None else f"kernel default ({refused})"


async def _supervise(tasks: dict[str, asyncio.Task[None]], stop: asyncio.Event) -> int:
    """Until a stop signal or the first task to end: one failing stops all (exit code 1)."""
    exit_code = 0
    stopper = asyncio.create_task(stop.wait(), name="stop")
    done, _ = await asyncio.wait([stopper, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
    for name, task in tasks.items():
        if task in done and not task.cancelled() and task.exception() is not None:
            log.error("task failed; stopping", extra={"event": "task_failed", "task": name},
                      exc_info=task.exception())
            exit_code = 1
    stopper.cancel()
    return exit_code


async def _shut_down(parts: Parts, tasks: dict[str, asyncio.Task[None]], runners: list[Any]) -> None:
    """Release first (standby is already published), then the extras, then the servers; standby in
    the role file last."""
    heartbeat, app_side, role_files = parts.heartbeat, parts.app_side, parts.role_files
    if app_side.members is not None:
        app_side.members.begin_terminating()  # written beside the release: no leader names this pod now
    config = parts.elector.config
    try:
        # Keyed locks and the election are released side by side, within the same grace. The
        # release waits for the drain, or for the deadline the app was told (election.py D1, P2):
        # at most the longer of the drain timeout and the renew deadline.
        await asyncio.wait_for(asyncio.gather(_release(heartbeat, tasks.get("elect")), *(
            [parts.lock_parts.shut_down(SHUTDOWN_GRACE_S)] if parts.lock_parts is not None else [])),
            SHUTDOWN_GRACE_S + max(config.handover_drain_timeout_s, config.renew_deadline))
    except TimeoutError:
        log.error("release did not finish in time; the lease will expire by itself",
                  extra={"event": "release_timeout"})
    except Exception:
        log.exception("release failed", extra={"event": "release_failed"})
    if app_side.members is not None:
        await app_side.members.withdraw()  # bounded by the API timeout
    await parts.leader_parts.shut_down()
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    for runner in runners:
        await runner.cleanup()
    try:
        await asyncio.wait_for(parts.api_client.close(), 2.0)
    except (TimeoutError, OSError):
        pass  # the process is exiting; sockets close with it
    if role_files:
        try:
            role_files.stand_down(parts.board.snapshot())
        except OSError as error:
            log.error("cannot write standby to the role files", extra={"event": "role_file_failed",
                                                                        "error": str(error)})


async def _release(heartbeat: BeatHeartbeat, elect: asyncio.Task[None] | None) -> None:
    await heartbeat.shutdown()
    if elect is not None and not elect.done():
        await elect
