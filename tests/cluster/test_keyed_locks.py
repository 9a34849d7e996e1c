"""Keyed locks (`--locks`) on the real control plane: the local API's answers, contention between
sidecars with faults among them, the PostgreSQL fence against a lost lock's late write, and
garbage collection that never lowers a token."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import sidecars
from tests.cluster.blackhole import BlackHoleProxy
from tests.cluster.kube import get_lease, kubectl, service_account_dir
from tests.cluster.test_chart import (  # noqa: F401  (charts, helm_env: the chart tests' fixtures)
    EXAMPLE,
    LEASE,
    can_i,
    charts,
    helm_env,
    install_rbac,
    one,
    render,
    sidecar_of,
)
from tests.cluster.test_schemathesis import run_schemathesis
from tests.conftest import localcluster

LOCKS = ("--locks", "--lock-max-ttl", "3", "--log-level", "debug")


def call(sidecar: sidecars.Sidecar, method: str, path: str, timeout: float = 10.0) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(sidecar.url + path, method=method, data=b"" if method in ("POST", "PUT") else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), dict(error.headers)


def lock_path(key: str, **query: str) -> str:
    return "/locks/" + urllib.parse.quote(key) + ("?" + urllib.parse.urlencode(query) if query else "")


def start(name: str, lease: str, namespace: str, tmp_path: Path, *extra: str, **kwargs: Any) -> sidecars.Sidecar:
    """A sidecar with --locks, ready within a minute: the whole suite in parallel on two cores
    can take longer than sidecars.start's own 20 s to import and list."""
    sidecar = sidecars.start(name, lease, namespace, tmp_path, *LOCKS, *extra, wait_ready=False, **kwargs)

    def ready() -> bool:
        if not sidecar.alive():
            raise AssertionError(f"{name} exited: {sidecar.logs()[-2000:]}")
        try:
            return sidecar.get("/readyz", timeout=1)[0] == 200
        except OSError:
            return False

    sidecars.wait_for(ready, timeout=60, interval=0.1)
    return sidecar


def test_acquire_conflict_renew_release_and_token_order(namespace: str, tmp_path: Path) -> None:
    a = start("a", "locks", namespace, tmp_path)
    b = start("b", "locks", namespace, tmp_path)
    try:
        status, held, _ = call(a, "POST", lock_path("reports/daily", ttl="3s", wait="5s"))
        assert status == 200, held
        assert held["lease"].startswith(f"{namespace}/locks-lock-reports-daily-")
        assert held["valid_for_seconds"] > 0 and held["fencing_token"] > 0
        status, refused, headers = call(b, "POST", lock_path("reports/daily"))
        assert status == 409 and refused["holder"] == f"a/{held['owner']}", refused
        assert int(headers["Retry-After"]) >= 1
        status, again, _ = call(a, "POST", lock_path("reports/daily"))
        assert status == 409, again  # a second owner in the same pod
        status, renewed, _ = call(a, "PUT", lock_path("reports/daily", owner=held["owner"]))
        assert status == 200 and renewed["fencing_token"] == held["fencing_token"]
        status, seen, _ = call(b, "GET", lock_path("reports/daily"))
        assert status == 200 and seen["locked"] and seen["holder"] == f"a/{held['owner']}"
        lease_name = held["lease"].split("/")[1]
        labels = json.loads(kubectl("get", "lease", lease_name, "-n", namespace, "-o", "json"))["metadata"]
        assert labels["labels"]["lease-sidecar.io/lock-election"] == "locks"
        assert labels["annotations"]["lease-sidecar.io/lock-key"] == "reports/daily"
        status, released, _ = call(a, "DELETE", lock_path("reports/daily", owner=held["owner"]))
        assert status == 200 and released["release_written"], released
        status, taken, _ = call(b, "POST", lock_path("reports/daily", wait="5s"))
        assert status == 200 and taken["fencing_token"] > held["fencing_token"], taken
        status, lost, _ = call(a, "PUT", lock_path("reports/daily", owner=held["owner"]))
        assert status == 409, lost
    finally:
        sidecars.stop_all([a, b])


def test_bad_keys_ttls_handles_and_methods_get_clear_4xx(namespace: str, tmp_path: Path) -> None:
    a = start("a", "locks", namespace, tmp_path)
    try:
        for key in ("-starts-with-dash", "a//b", "trailing/", "x" * 201, "sp ace", "semi;colon"):
            status, body, _ = call(a, "POST", lock_path(key))
            assert status == 400 and body["error"].startswith("key:"), (key, body)
        for ttl in ("0", "abc", "4s", "0.5s", "-1"):  # max ttl is 3s here, min 1s
            status, body, _ = call(a, "POST", lock_path("job", ttl=ttl))
            assert status == 400 and body["error"].startswith("ttl:"), (ttl, body)
        status, body, _ = call(a, "POST", lock_path("job", wait="301s"))
        assert status == 400 and body["error"].startswith("wait:"), body
        for owner in ("", "zz", "0123456789abcdeg", "0123456789ABCDEF"):
            for method in ("PUT", "DELETE"):
                status, body, _ = call(a, method, lock_path("job", owner=owner))
                assert status == 400 and body["error"].startswith("owner:"), (method, owner, body)
        status, body, _ = call(a, "PUT", lock_path("job"))
        assert status == 400 and body["error"].startswith("owner:"), body
        status, body, _ = call(a, "PUT", lock_path("job", owner="0123456789abcdef"))
        assert status == 409 and "not held" in body["error"], body
        status, body, headers = call(a, "PATCH", lock_path("job"))
        assert status == 405 and set(headers["Allow"].split(", ")) >= {"POST", "PUT", "DELETE", "GET"}, body
    finally:
        sidecars.stop_all([a])


class Worker(threading.Thread):
    """An app process's owner loop against its own sidecar: acquire (waiting), renew once, release;
    its own record of each hold: from the acquisition's answer to the earlier of the release and
    the last deadline the sidecar gave it."""

    def __init__(self, sidecar: sidecars.Sidecar, keys: list[str], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.sidecar, self.keys, self.stop = sidecar, keys, stop
        self.holds: list[tuple[str, float, float, int]] = []

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            key = self.keys[turn % len(self.keys)]
            turn += 1
            try:
                status, held, _ = call(self.sidecar, "POST", lock_path(key, ttl="3s", wait="2s"), timeout=6)
            except OSError:
                time.sleep(0.2)
                continue
            got = time.monotonic()
            if status != 200:
                time.sleep(0.05)
                continue
            end = held["valid_until_monotonic"]
            time.sleep(0.1)
            try:
                status, renewed, _ = call(self.sidecar, "PUT", lock_path(key, owner=held["owner"]), timeout=6)
                if status == 200:
                    end = renewed["valid_until_monotonic"]
                time.sleep(0.1)
                # The work stops here, before the release is asked: even if the answer never comes
                # (the sidecar killed after writing the release), the hold ended at this moment.
                end = min(end, time.monotonic())
                call(self.sidecar, "DELETE", lock_path(key, owner=held["owner"]), timeout=6)
            except OSError:
                pass
            self.holds.append((key, got, end, held["fencing_token"]))


def assert_no_overlap(workers: list[Worker]) -> int:
    holds = sorted(hold for worker in workers for hold in worker.holds)
    for (key, _, end_a, token_a), (key_b, start_b, _, token_b) in itertools.pairwise(holds):
        if key == key_b:
            assert start_b >= end_a, f"{key}: a hold from {start_b} began before {end_a} ended"
            assert token_b > token_a, f"{key}: token {token_b} after {token_a}"
    return len(holds)


@pytest.mark.parametrize(("count", "keys"), [(2, 1), (10, 1), (10, 5)])
def test_contending_sidecars_never_hold_a_key_twice_through_kills_stops_and_an_outage(
        namespace: str, tmp_path: Path, api_path: BlackHoleProxy, count: int, keys: int,
        record_property: Any) -> None:
    key_names = [f"tenant-{n}/migrate" for n in range(keys)]
    group = [start(f"s{n}", "locks", namespace, tmp_path,
                   kubeconfig=api_path.kubeconfig_path if n == 2 else None) for n in range(count)]
    stop = threading.Event()
    workers = [Worker(sidecar, key_names[n % keys:] + key_names[:n % keys], stop) for n, sidecar in enumerate(group)]
    try:
        for worker in workers:
            worker.start()
        time.sleep(3)
        group[0].kill()  # SIGKILL: its locks expire by observation (--lock-max-ttl)
        group[1].process.send_signal(signal.SIGSTOP)  # frozen past the TTL, then back
        time.sleep(7)
        group[1].process.send_signal(signal.SIGCONT)
        if count > 2:
            with api_path.outage():  # s2 alone loses the API for twice the TTL
                time.sleep(6)
        time.sleep(3)
    finally:
        stop.set()
        for worker in workers:
            worker.join(15)
        sidecars.stop_all(group)
    total = assert_no_overlap(workers)
    record_property("figure", f"keyed locks, {count} sidecars, {keys} keys: {total} holds, none overlapping")
    assert total >= 4


def test_released_keys_are_collected_and_tokens_never_go_back(namespace: str, tmp_path: Path) -> None:
    a = start("a", "locks", namespace, tmp_path, "--lock-gc-after", "3s")
    b = start("b", "locks", namespace, tmp_path, "--lock-gc-after", "3s")
    try:
        tokens = []
        for turn in range(3):
            sidecar = (a, b)[turn % 2]
            status, held, _ = call(sidecar, "POST", lock_path("nightly", wait="10s"))
            assert status == 200, held
            tokens.append(held["fencing_token"])
            status, _, _ = call(sidecar, "DELETE", lock_path("nightly", owner=held["owner"]))
            assert status == 200
            name = held["lease"].split("/")[1]
            sidecars.wait_for(lambda name=name: "NotFound" in kubectl(
                "get", "lease", name, "-n", namespace, check=False), timeout=30, interval=0.3)
        assert tokens == sorted(tokens) and len(set(tokens)) == 3, tokens
    finally:
        sidecars.stop_all([a, b])


def test_a_lost_locks_late_write_is_refused_by_the_postgresql_fence(
        namespace: str, tmp_path: Path, postgres_dsn: str) -> None:
    import psycopg
    from lease_sidecar_client.psycopg import StaleToken, fence, install

    a = start("a", "locks", namespace, tmp_path)
    b = start("b", "locks", namespace, tmp_path)
    try:
        status, first, _ = call(a, "POST", lock_path("ledger", ttl="3s", wait="5s"))  # K3: a young watch waits
        assert status == 200, first
        a.process.send_signal(signal.SIGSTOP)  # the holder hangs past its deadline
        status, second, _ = call(b, "POST", lock_path("ledger", wait="15s"), timeout=20)
        assert status == 200 and second["fencing_token"] > first["fencing_token"], second
        assert second["lease"] == first["lease"]
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            install(conn)
            with conn.transaction():
                fence(conn, second["fencing_token"], scope=second["lease"])
            with pytest.raises(StaleToken), conn.transaction():
                fence(conn, first["fencing_token"], scope=first["lease"])  # the late write
        a.process.send_signal(signal.SIGCONT)
        status, lost, _ = call(a, "PUT", lock_path("ledger", owner=first["owner"]))
        assert status == 409, lost
    finally:
        sidecars.stop_all([a, b])


def test_the_charts_role_with_locks_is_enough_for_acquire_renew_release_and_collection(
        charts: Path, helm_env: dict[str, str], namespace: str, tmp_path: Path) -> None:  # noqa: F811
    """--locks on the rendered Role's ServiceAccount token alone: list, watch, create, update and
    delete of lock Leases all pass, and the Role grants nothing beyond list/watch/update/delete."""
    docs = render(helm_env, charts / EXAMPLE, "--set", "lease-sidecar.locks.enabled=true",
                  "--set", "lease-sidecar.locks.maxTTL=3", namespace=namespace)
    token = install_rbac(docs, namespace)
    granted = [("list", "leases"), ("watch", "leases"), ("update", "leases/other"), ("delete", "leases/other"),
               ("create", "leases")]
    denied = [("get", "leases/other"), ("patch", "leases/other"), ("deletecollection", "leases")]
    assert [g for g in granted if not can_i(token, namespace, *g)] == []
    assert [d for d in denied if can_i(token, namespace, *d)] == []
    container, _ = sidecar_of(one(docs, "Deployment")["spec"]["template"]["spec"])
    chart_env = {item["name"]: item["value"] for item in container["env"]
                 if item["name"].startswith("LEASE_SIDECAR_") and "value" in item}
    assert chart_env["LEASE_SIDECAR_LOCKS"] == "true" and chart_env["LEASE_SIDECAR_LOCK_MAX_TTL"] == "3"
    env = {**chart_env, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(localcluster.APISERVER_PORT),
           "LEASE_SIDECAR_IN_CLUSTER_DIR": str(service_account_dir(tmp_path, token, namespace)),
           "POD_NAMESPACE": namespace, "LEASE_SIDECAR_LOCK_GC_AFTER": "3s"}
    sidecar = sidecars.start("demo-pod-0", LEASE, namespace, tmp_path, kubeconfig=None, env=env,
                             drop_env=("KUBECONFIG",), timing=())
    app = sidecars.start_app(sidecar)  # the example turns app liveness on: locks need a live app
    try:
        sidecars.wait_for(lambda: call(sidecar, "POST", lock_path("probe"))[0] == 200, timeout=20, interval=0.5)
        status, held, _ = call(sidecar, "GET", lock_path("probe"))
        assert status == 200 and held["locked"], held
        status, held, _ = call(sidecar, "POST", lock_path("rbac/check", wait="5s"))
        assert status == 200, held
        assert call(sidecar, "PUT", lock_path("rbac/check", owner=held["owner"]))[0] == 200
        assert call(sidecar, "DELETE", lock_path("rbac/check", owner=held["owner"]))[1]["release_written"]
        name = held["lease"].split("/")[1]
        sidecars.wait_for(lambda: get_lease(namespace, name) is None, timeout=30, interval=0.3)  # collected
    finally:
        app.kill()
        sidecars.stop_all([sidecar])
    logs = sidecar.logs()
    assert "Forbidden" not in logs and " 403" not in logs, logs[-3000:]


def test_the_locks_api_passes_schemathesis(namespace: str, tmp_path: Path) -> None:
    sidecar = start("schema", "locks", namespace, tmp_path, "--lock-rate", "1000")
    try:
        run_schemathesis(sidecar, tmp_path, "schemathesis_locks.toml", "--include-path-regex", "^/locks/",
                         default_seed="20261203")
    finally:
        sidecars.stop_all([sidecar])


def test_the_client_library_holds_renews_signals_loss_and_releases(namespace: str, tmp_path: Path) -> None:
    import asyncio

    from lease_sidecar_client import current_term
    from lease_sidecar_client.locks import AsyncLocks, LockBusy, LockLost, Locks

    # A TTL of 6 s: on two loaded cores a new key's first acquire (its create) can take two
    # seconds, and a shorter TTL would be spent before the answer arrives.
    a = start("a", "locks", namespace, tmp_path, "--lock-max-ttl", "10")
    b = start("b", "locks", namespace, tmp_path, "--lock-max-ttl", "10")
    try:
        locks_a, locks_b = Locks(a.url), Locks(b.url)
        with locks_a.holding("client/job", ttl_s=6, wait_s=15) as held:
            assert current_term() == held.lock.term and held.lock.term.lease == held.lock.lease
            assert locks_b.try_acquire("client/job") is None
            time.sleep(7)  # past the owner's ttl: the renewer keeps it
            assert held.check().fencing_token == held.lock.fencing_token
            assert locks_b.is_locked("client/job")
        first = held.lock
        second = locks_b.acquire("client/job", wait_s=15)  # released on leaving the block
        assert second.fencing_token > first.fencing_token
        with pytest.raises(LockBusy):
            locks_a.acquire("client/job")
        assert locks_b.release(second)

        @locks_a.holding("client/decorated", ttl_s=2)
        def decorated() -> int:
            term = current_term()
            assert term is not None
            return term.fencing_token

        assert decorated() > 0 and not locks_b.is_locked("client/decorated")

        async def work_until_cancelled() -> None:
            async with AsyncLocks(a.url).holding("client/async", ttl_s=2) as async_held:
                assert async_held.lock.is_valid()
                a.process.send_signal(signal.SIGSTOP)  # renewals stop answering: the deadline ends it
                await asyncio.sleep(60)

        started = time.monotonic()
        with pytest.raises(LockLost):
            asyncio.run(asyncio.wait_for(work_until_cancelled(), 30))
        assert time.monotonic() - started < 30  # cancelled by the loss, not by the outer timeout
    finally:
        a.process.send_signal(signal.SIGCONT)
        sidecars.stop_all([a, b])


def test_sigterm_and_a_silent_app_release_every_lock_at_once(namespace: str, tmp_path: Path) -> None:
    a = start("a", "locks", namespace, tmp_path, "--app-heartbeat-ttl", "2")
    b = start("b", "locks", namespace, tmp_path)
    c = start("c", "locks", namespace, tmp_path)
    app = sidecars.start_app(a)
    try:
        sidecars.wait_for(lambda: call(a, "POST", lock_path("app/bound"))[0] == 200, timeout=20, interval=0.3)
        owner = call(a, "GET", lock_path("app/bound"))[1]["holder"].split("/")[1]
        app.kill()  # the app falls silent: its sidecar releases (no wait of --lock-max-ttl for others)
        sidecars.wait_for(lambda: call(b, "POST", lock_path("app/bound"))[0] == 200, timeout=10, interval=0.2)
        status, lost, _ = call(a, "PUT", lock_path("app/bound", owner=owner))
        assert status == 409 and "app heartbeat missed" in lost["error"], lost
        keys = [f"shutdown/{n}" for n in range(3)]
        for key in keys:
            assert call(c, "POST", lock_path(key, wait="10s"))[0] == 200
        assert c.terminate() == 0
        for key in keys:  # released on SIGTERM: taken at once, no wait
            status, body, _ = call(b, "POST", lock_path(key))
            assert status == 200, body
    finally:
        app.kill()
        sidecars.stop_all([a, b, c])


def test_hand_edits_and_deletion_of_a_held_locks_lease_are_fenced(namespace: str, tmp_path: Path) -> None:
    a = start("a", "locks", namespace, tmp_path)
    b = start("b", "locks", namespace, tmp_path)
    try:
        status, held, _ = call(a, "POST", lock_path("edited", wait="5s"))
        assert status == 200, held
        name = held["lease"].split("/")[1]
        kubectl("patch", "lease", name, "-n", namespace, "--type=merge", "-p",
                '{"spec": {"leaseDurationSeconds": 1}}')  # shortened by hand: never believed (rule C)
        time.sleep(1.5)
        status, refused, _ = call(b, "POST", lock_path("edited"))
        assert status == 409 and refused["holder"] == f"a/{held['owner']}", refused
        before_delete = time.monotonic()  # b sees the deletion after this, so its fence ends >= this + 3 s
        kubectl("delete", "lease", name, "-n", namespace)
        sidecars.wait_for(lambda: call(a, "PUT", lock_path("edited", owner=held["owner"]))[0] == 409, timeout=5)
        status, taken, _ = call(b, "POST", lock_path("edited", wait="10s"), timeout=15)
        # The holder may not have seen the deletion (paused, cut off): others wait --lock-max-ttl.
        assert status == 200 and time.monotonic() - before_delete >= 3, taken
        assert taken["fencing_token"] > held["fencing_token"]
        metrics = b.metrics_text()
        labels = f'election="locks",namespace="{namespace}",prefix="locks-lock-"'
        assert f"lease_sidecar_lock_acquisitions_total{{{labels}}} 1.0" in metrics, metrics[-2000:]
        assert f"lease_sidecar_lock_conflicts_total{{{labels}}} 1.0" in metrics
        assert f"lease_sidecar_locks_held{{{labels}}} 1.0" in metrics
        assert f"lease_sidecar_lock_losses_total{{{labels}}} 1.0" in a.metrics_text()
    finally:
        sidecars.stop_all([a, b])


def test_the_pods_request_rate_and_key_limit_answer_429_with_retry_after(namespace: str, tmp_path: Path) -> None:
    a = start("a", "locks", namespace, tmp_path, "--lock-rate", "0.5", "--lock-max-keys", "1")
    try:
        assert call(a, "POST", lock_path("first", wait="10s"))[0] == 200  # bursts of 1 (twice 0.5)
        errors = []
        for _ in range(6):  # the rate (one per 2 s) and the key limit (one key) both refuse "second"
            status, body, headers = call(a, "POST", lock_path("second"))
            assert status == 429 and int(headers["Retry-After"]) >= 1, body
            errors.append(body["error"])
            if len(set(errors)) == 2:
                break
            time.sleep(float(headers["Retry-After"]))
        assert set(errors) == {"too many lock requests from this pod",
                               "this pod holds or is acquiring 1 keys (--lock-max-keys)"}, errors
    finally:
        sidecars.stop_all([a])
