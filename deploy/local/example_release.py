"""The example chart on the local node: install it, read every pod's role, watch the Lease, and
time what users care about (a deleted leader's hand-over, a rollout's hand-overs).

Shared by `make demo-pods` (deploy/local/demo_pods.py) and the node tests (tests/node/), so the
figures the demo prints are measured the way the tests measure them. Stdlib only, like
localcluster.py: it talks to the API server directly with the admin client certificate and runs
the cached kubectl and helm for exec and the chart.

Times are taken with `time.monotonic()` on this machine: a hand-over is timed from the moment
the DELETE request is sent until the Lease watch delivers a record naming another holder, the
moment that pod's sidecar became leader (it leads only once its write of the Lease succeeded).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import localcluster

ROOT = Path(__file__).resolve().parents[2]
CHARTS_DIR = ROOT / "charts"
EXAMPLE_CHART = "lease-sidecar-example"
APP_CONTAINER = "app"
SIDECAR_CONTAINER = "lease-sidecar"  # the library chart's default containerName
REQUEST_TIMEOUT_S = 15.0
WAIT_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 0.5

# Run in the app container: what the app sees of its role, over localhost and in the role file.
APP_VIEW_SCRIPT = """
import json, os, urllib.request
role_dir, url = os.environ["LEASE_SIDECAR_ROLE_DIR"], os.environ["LEASE_SIDECAR_URL"]
with urllib.request.urlopen(url + "/leader", timeout=5) as response:
    body = json.load(response)
with open(os.path.join(role_dir, "role")) as role_file:
    role = role_file.read().strip()
print(json.dumps({"file": role, "http": body["role"], "identity": body["identity"], "holder": body["holder"],
                  "fencing_token": body["fencing_token"]}))
"""


class ReleaseError(Exception):
    """A failure worth one line (no traceback): what did not happen in time, and what was seen."""


# ---------------------------------------------------------------- the API server, directly


class Api:
    """Requests to the local API server as the admin (client certificate), with timeouts."""

    def __init__(self, paths: localcluster.Paths | None = None) -> None:
        paths = paths or localcluster.Paths()
        self.host, self.port = "127.0.0.1", localcluster.APISERVER_PORT
        self.context = ssl.create_default_context(cafile=str(paths.pki / "ca.crt"))
        self.context.load_cert_chain(str(paths.pki / "admin.crt"), str(paths.pki / "admin.key"))

    def connection(self, timeout_s: float = REQUEST_TIMEOUT_S) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout_s)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The JSON answer, or None for 404."""
        conn = self.connection()
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status == 404:
            return None
        if response.status >= 300:
            raise ReleaseError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"labelSelector": selector})
        answer = self.request("GET", f"/api/v1/namespaces/{namespace}/pods?{query}")
        return (answer or {}).get("items", [])

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")

    def delete_pod(self, namespace: str, name: str, grace_period_s: int | None = None) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_s is not None:
            body["gracePeriodSeconds"] = grace_period_s
        self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body)


# ---------------------------------------------------------------- the Lease, watched


@dataclass(frozen=True)
class HolderChange:
    at_s: float  # time.monotonic() when the watch delivered it
    holder: str  # "" when released (or no Lease yet)
    transitions: int


class LeaseWatch:
    """Records every change of the Lease's holder, as the API server's watch delivers it.

    A background thread: list, then watch from the listed resourceVersion, resumed after each
    timeout or disconnect. `changes` only ever grows; `wait_for` blocks on it."""

    def __init__(self, api: Api, namespace: str, name: str) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.changes: list[HolderChange] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._conn: http.client.HTTPSConnection | None = None
        self._thread = threading.Thread(target=self._run, name=f"lease-watch-{name}", daemon=True)

    def __enter__(self) -> LeaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # unblocks the reading thread
            except OSError:
                pass
        self._thread.join(timeout=5)

    @property
    def holder(self) -> str | None:
        with self._cond:
            return self.changes[-1].holder if self.changes else None

    def _record(self, lease: dict[str, Any] | None) -> None:
        spec = (lease or {}).get("spec") or {}
        change = HolderChange(time.monotonic(), spec.get("holderIdentity") or "", spec.get("leaseTransitions") or 0)
        with self._cond:
            if not self.changes or self.changes[-1].holder != change.holder:
                self.changes.append(change)
                self._cond.notify_all()

    def _run(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        version = None
        while not self._stopped:
            try:
                if version is None:
                    listed = self.api.request("GET", f"{path}?fieldSelector=metadata.name%3D{self.name}") or {}
                    items = listed.get("items", [])
                    self._record(items[0] if items else None)
                    version = listed.get("metadata", {}).get("resourceVersion")
                version = self._watch(path, version)
            except (OSError, http.client.HTTPException, ValueError, ReleaseError):
                if not self._stopped:
                    time.sleep(0.2)
                version = None  # list again: nothing between the two is missed

    def _watch(self, path: str, version: str | None) -> str | None:
        query = urllib.parse.urlencode({"watch": "1", "fieldSelector": f"metadata.name={self.name}",
                                        "resourceVersion": version or "", "timeoutSeconds": "60"})
        conn = self.api.connection(timeout_s=90)
        with self._cond:
            if self._stopped:
                return version
            self._conn = conn
        try:
            conn.request("GET", f"{path}?{query}")
            response = conn.getresponse()
            if response.status != 200:
                raise ReleaseError(f"watch: {response.status}")
            while True:
                line = response.readline()
                if not line:
                    return version  # the server ended the watch: resume from the last version
                event = json.loads(line)
                if event["type"] == "ERROR":
                    return None  # e.g. 410 Gone: list again
                lease = event["object"]
                version = lease["metadata"]["resourceVersion"]
                self._record(None if event["type"] == "DELETED" else lease)
        finally:
            conn.close()

    def wait_for(self, predicate: Callable[[HolderChange], bool], timeout_s: float, since_s: float = 0.0,
                 what: str = "a Lease change") -> HolderChange:
        """The first change at or after `since_s` that satisfies `predicate`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for change in self.changes:
                    if change.at_s >= since_s and predicate(change):
                        return change
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(round(c.at_s - since_s, 3), c.holder) for c in self.changes if c.at_s >= since_s]
                    raise ReleaseError(f"no {what} within {timeout_s:.0f}s; holders seen: {seen}")
                self._cond.wait(timeout=left)

    def since(self, since_s: float) -> list[HolderChange]:
        with self._cond:
            return [c for c in self.changes if c.at_s >= since_s]


# ---------------------------------------------------------------- kubectl and helm


def tool_env() -> dict[str, str]:
    """kubectl and helm of the control plane's version on PATH, the admin kubeconfig."""
    bins = [str(localcluster.build(name).parent) for name in ("kubectl", "helm")]
    return {**os.environ, "KUBECONFIG": str(localcluster.Paths().kubeconfig),
            "PATH": os.pathsep.join([*bins, os.environ.get("PATH", "")])}


def run_tool(*argv: str, timeout_s: float = 120.0, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, env=env or tool_env())
    if check and result.returncode != 0:
        raise ReleaseError(f"{' '.join(argv[:4])} ... failed ({result.returncode}): {result.stderr.strip()[-800:]}")
    return result


def kubectl(*args: str, timeout_s: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_tool("kubectl", *args, timeout_s=timeout_s, check=check)


def packaged_example_chart(workdir: Path) -> Path:
    """A copy of charts/ with the example's dependency packaged, so the checkout's gitignored
    charts/*/charts/ is neither needed nor touched (helm's cache and config stay in workdir)."""
    copy = workdir / "charts"
    shutil.copytree(CHARTS_DIR, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock", "*.tgz"))
    helm_home = {f"HELM_{kind}_HOME": str(workdir / f"helm-{kind.lower()}") for kind in ("CACHE", "CONFIG", "DATA")}
    run_tool("helm", "dependency", "build", str(copy / EXAMPLE_CHART), env={**tool_env(), **helm_home})
    return copy / EXAMPLE_CHART


# ---------------------------------------------------------------- a release of the example chart


@dataclass(frozen=True)
class AppView:
    """What one pod's app sees: the role file and GET /leader over localhost."""

    pod: str
    file: str
    http: str
    holder: str | None


@dataclass
class Release:
    api: Api
    namespace: str
    name: str
    chart: Path
    values: list[Path] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)

    @property
    def lease(self) -> str:
        return f"{self.name}-leader"  # the chart's default lease name

    @property
    def deployment(self) -> str:
        return f"{self.name}-{EXAMPLE_CHART}"

    @property
    def service_account(self) -> str:
        return f"{self.name}-lease-sidecar"

    @property
    def selector(self) -> str:
        """The example's own pods (with beat.enabled the release also has PostgreSQL's)."""
        return f"app.kubernetes.io/name={EXAMPLE_CHART},app.kubernetes.io/instance={self.name}"

    def install(self, timeout_s: float = WAIT_TIMEOUT_S) -> None:
        argv = ["helm", "upgrade", "--install", self.name, str(self.chart), "--namespace", self.namespace,
                "--create-namespace", "--wait", "--timeout", f"{timeout_s:.0f}s"]
        for path in self.values:
            argv += ["--values", str(path)]
        for assignment in self.sets:
            argv += ["--set", assignment]
        run_tool(*argv, timeout_s=timeout_s + 30)

    def uninstall(self) -> None:
        run_tool("helm", "uninstall", self.name, "--namespace", self.namespace, "--wait", "--timeout", "60s",
                 timeout_s=90, check=False)
        kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)

    def pods(self, running_only: bool = True) -> list[dict[str, Any]]:
        pods = self.api.pods(self.namespace, self.selector)
        if running_only:
            pods = [p for p in pods
                    if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]]
        return pods

    def ready_pods(self) -> list[str]:
        names = []
        for pod in self.pods():
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conditions.get("Ready") == "True":
                names.append(pod["metadata"]["name"])
        return sorted(names)

    def app_view(self, pod: str) -> AppView | None:
        result = kubectl("exec", "-n", self.namespace, pod, "-c", APP_CONTAINER, "--", "python", "-c",
                         APP_VIEW_SCRIPT, check=False, timeout_s=30)
        if result.returncode != 0:
            return None
        seen = json.loads(result.stdout)
        return AppView(pod, seen["file"], seen["http"], seen["holder"])

    def views(self) -> list[AppView]:
        views = [self.app_view(name) for name in self.ready_pods()]
        return [view for view in views if view is not None]

    def holder(self) -> str:
        lease = self.api.lease(self.namespace, self.lease)
        return ((lease or {}).get("spec") or {}).get("holderIdentity") or ""

    def wait_for_one_leader(self, replicas: int, not_pod: str = "", timeout_s: float = WAIT_TIMEOUT_S) -> str:
        """Waits until `replicas` pods are Ready, each app sees one role in both places, exactly one
        of them is leader, and the Lease names that pod. Returns its name."""
        deadline = time.monotonic() + timeout_s
        views: list[AppView] = []
        holder: str | None = None
        while time.monotonic() < deadline:
            try:
                views = self.views()
                holder = self.holder()
            except (OSError, http.client.HTTPException, ReleaseError):
                time.sleep(POLL_INTERVAL_S)  # the API server restarting: keep waiting until the deadline
                continue
            leaders = [v.pod for v in views if v.http == "leader" and v.file == "leader"]
            settled = all(v.http == v.file and v.http in ("leader", "standby") for v in views)
            if len(views) == replicas and settled and leaders == [holder] and holder != not_pod:
                return holder
            time.sleep(POLL_INTERVAL_S)
        raise ReleaseError(f"no single leader among {replicas} ready pods within {timeout_s:.0f}s; "
                           f"seen: {views}; Lease holder: {holder!r}")


@dataclass(frozen=True)
class Failover:
    deleted: str
    successor: str
    released_s: float | None  # DELETE sent -> the Lease seen released (None: never released)
    new_leader_s: float  # DELETE sent -> the Lease seen held by another pod


def delete_leader(release: Release, watch: LeaseWatch, leader: str, grace_period_s: int | None = None,
                  timeout_s: float = 120.0) -> Failover:
    """Deletes the leader pod (gracefully unless grace_period_s is given) and times the hand-over."""
    sent = time.monotonic()
    release.api.delete_pod(release.namespace, leader, grace_period_s)
    taken = watch.wait_for(lambda c: c.holder not in ("", leader), timeout_s, since_s=sent,
                           what=f"new holder after deleting {leader}")
    released = [c.at_s - sent for c in watch.since(sent) if c.holder == "" and c.at_s <= taken.at_s]
    return Failover(leader, taken.holder, released[0] if released else None, taken.at_s - sent)


@dataclass(frozen=True)
class Rollout:
    duration_s: float  # `rollout restart` sent -> the rollout complete and a new pod leading
    handovers: int  # changes of holder from one pod to another (through a release or not)
    leaderless_s: float  # total time the Lease was seen without a holder
    holders: list[str]


def rollout_restart(release: Release, watch: LeaseWatch, replicas: int,
                    timeout_s: float = WAIT_TIMEOUT_S) -> Rollout:
    """`kubectl rollout restart` of the example; counts hand-overs and leaderless time until the
    rollout is complete and one of the new pods leads."""
    old_pods = {p["metadata"]["name"] for p in release.pods(running_only=False)}
    sent = time.monotonic()
    previous = watch.holder or ""
    kubectl("rollout", "restart", "-n", release.namespace, f"deployment/{release.deployment}")
    kubectl("rollout", "status", "-n", release.namespace, f"deployment/{release.deployment}",
            f"--timeout={timeout_s:.0f}s", timeout_s=timeout_s + 30)
    leader = release.wait_for_one_leader(replicas, timeout_s=timeout_s)
    if leader in old_pods:
        raise ReleaseError(f"after the rollout the leader {leader} is an old pod")
    done = watch.wait_for(lambda c: c.holder == leader, timeout_s, since_s=0.0)
    end = max(time.monotonic(), done.at_s)
    changes = watch.since(sent)
    handovers, leaderless_s, released_at = 0, 0.0, (sent if previous == "" else None)
    last_holder = previous
    for change in changes:
        if change.holder == "":
            released_at = change.at_s if released_at is None else released_at
            continue
        if released_at is not None:
            leaderless_s += change.at_s - released_at
            released_at = None
        if change.holder != last_holder:
            handovers += 1 if last_holder else 0
            last_holder = change.holder
    if released_at is not None:
        leaderless_s += end - released_at
    return Rollout(end - sent, handovers, leaderless_s, [c.holder for c in changes])


def summary(values: list[float]) -> str:
    """median [min, max] in seconds."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return f"{median:.3f}s [{ordered[0]:.3f}, {ordered[-1]:.3f}] over {len(ordered)}"


def temporary_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="lease-sidecar-pods-"))


def iter_audit_events(path: Path) -> Iterator[dict[str, Any]]:
    """The API server's audit log (Lease requests only, see localcluster.AUDIT_POLICY)."""
    if not path.exists():
        return
    with open(path) as log:
        for line in log:
            try:
                yield json.loads(line)
            except ValueError:
                continue


# ---------------------------------------------------------------- the example beat (beat.enabled)

POSTGRES_CONTAINER = "postgres"
# A tick first run more than this after its scheduled time counts as late: a run's own work
# (BEAT_WORK_SECONDS), the scheduler's wake-up and the write take up to about a second on a busy
# 2-core machine; a hand-over or a fault takes longer.
LATE_AFTER_S = 2.0


def beat_sets(mode: str, scheduler: str = "apscheduler", jobs: int = 4, work_s: float = 0.3) -> list[str]:
    """`--set` assignments turning the example into the beat (its images: example_images.py)."""
    return ["beat.enabled=true", f"beat.mode={mode}", f"beat.scheduler={scheduler}", f"beat.jobs={jobs}",
            f"beat.workSeconds={work_s:g}"]


def beat_database_pod(release: Release) -> str:
    selector = f"app.kubernetes.io/name=postgres,app.kubernetes.io/instance={release.name}"
    pods = [p for p in release.api.pods(release.namespace, selector)
            if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]]
    if not pods:
        raise ReleaseError(f"no running PostgreSQL pod in {release.namespace}")
    return pods[0]["metadata"]["name"]


def beat_query(release: Release, sql: str, timeout_s: float = 60.0) -> Any:
    """The JSON value of one SQL query, run by psql inside the release's PostgreSQL pod (over its
    local socket: nothing leaves the pod, no address of the node is dialled from here)."""
    pod = beat_database_pod(release)
    result = kubectl("exec", "-n", release.namespace, pod, "-c", POSTGRES_CONTAINER, "--", "psql", "--host=/tmp",
                     "--username=postgres", "--no-psqlrc", "--tuples-only", "--no-align", "--quiet",
                     "--set=ON_ERROR_STOP=1", "--command", sql, check=False, timeout_s=timeout_s)
    if result.returncode != 0:
        raise ReleaseError(f"psql in {release.namespace}/{pod}: {result.stderr.strip()[-300:]}")
    return json.loads(result.stdout.strip() or "null")


@dataclass(frozen=True)
class Execution:
    job: str
    scheduled_s: float  # the tick, epoch seconds
    executed_s: float  # when its row was written (PostgreSQL's clock_timestamp(), same machine clock)
    token: int | None
    pod: str
    caught_up: bool = False  # run by a new leader's catch-up from the ledger


def beat_executions(release: Release, since_s: float = 0.0) -> list[Execution]:
    rows = beat_query(release, "SELECT coalesce(json_agg(json_build_array(job, extract(epoch FROM scheduled_at), "
                               "extract(epoch FROM executed_at), token, pod, caught_up) ORDER BY executed_at), '[]') "
                               f"FROM beat_effects WHERE scheduled_at >= to_timestamp({since_s:.6f})")
    return [Execution(job, float(scheduled), float(executed), token, pod, bool(caught_up))
            for job, scheduled, executed, token, pod, caught_up in rows]


def beat_refusals(release: Release, since_s: float = 0.0) -> dict[str, int]:
    """Refused writes by reason (stale_token: the fence; session_ended: the server ended it)."""
    rows = beat_query(release, "SELECT coalesce(json_object_agg(reason, n), '{}') FROM (SELECT reason, count(*) AS n "
                               f"FROM beat_refusals WHERE refused_at >= to_timestamp({since_s:.6f}) GROUP BY reason) r")
    return {reason: int(count) for reason, count in (rows or {}).items()}


@dataclass(frozen=True)
class BeatFigures:
    """What the beat did over [start_s, end_s): ticks are every `interval_s` from the anchor."""

    ticks: int  # (job, tick) pairs due in the window
    executions: int  # rows of the effect table for those ticks
    duplicated_ticks: list[tuple[str, float, int]]  # (job, tick, executions) with executions > 1
    never_run: list[tuple[str, float]]
    late: list[tuple[str, float, float]]  # (job, tick, lateness_s) first run more than LATE_AFTER_S late
    caught_up: list[tuple[str, float, float, str]]  # (job, tick, lateness_s, pod) run by a catch-up
    longest_gap_s: float  # the longest time with no execution of any job
    out_of_order_writes: int  # rows written after a row of a higher token: a stale term's write
    leaders: list[str]  # the pods that wrote, in order of their first write

    @property
    def max_executions_per_tick(self) -> int:
        return max([count for _, _, count in self.duplicated_ticks], default=1 if self.executions else 0)


def beat_figures(executions: list[Execution], jobs: list[str], start_s: float, end_s: float,
                 interval_s: float = 1.0, anchor_s: float = 0.0) -> BeatFigures:
    first = anchor_s + -(-(start_s - anchor_s) // interval_s) * interval_s
    due = [round(first + k * interval_s, 6) for k in range(int((end_s - first) // interval_s) + 1)
           if first + k * interval_s < end_s]
    by_tick: dict[tuple[str, float], list[Execution]] = {}
    for execution in executions:
        by_tick.setdefault((execution.job, round(execution.scheduled_s, 6)), []).append(execution)
    duplicated, never_run, late, caught_up = [], [], [], []
    for job in jobs:
        for tick in due:
            runs = by_tick.get((job, tick), [])
            if not runs:
                never_run.append((job, tick))
                continue
            if len(runs) > 1:
                duplicated.append((job, tick, len(runs)))
            first = min(runs, key=lambda r: r.executed_s)
            if first.executed_s - tick > LATE_AFTER_S:
                late.append((job, tick, round(first.executed_s - tick, 3)))
            caught_up += [(job, tick, round(r.executed_s - tick, 3), r.pod) for r in runs if r.caught_up]
    window = sorted(e.executed_s for e in executions if start_s <= e.scheduled_s < end_s)
    edges = [start_s, *window, max(end_s, window[-1] if window else end_s)]
    longest_gap_s = max(b - a for a, b in itertools.pairwise(edges)) if len(edges) > 1 else 0.0
    highest, out_of_order, leaders = None, 0, []
    for execution in sorted(executions, key=lambda e: e.executed_s):
        if execution.pod not in leaders:
            leaders.append(execution.pod)
        if execution.token is None:
            continue
        if highest is not None and execution.token < highest:
            out_of_order += 1
        highest = execution.token if highest is None else max(highest, execution.token)
    in_window = sum(len(runs) for (job, tick), runs in by_tick.items() if start_s <= tick < end_s and job in jobs)
    return BeatFigures(len(due) * len(jobs), in_window, duplicated, never_run, late, caught_up,
                       round(longest_gap_s, 3), out_of_order, leaders)
