"""Issue 17 item 6: --app-health-url probes at a fixed rate, and a TTL they could miss is refused.
Fake clock: a probe "takes" time by moving it, and the sleeps move it too; nothing waits."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from sidecar.core.config import ConfigError, ElectionConfig
from sidecar.core.election import Elector
from sidecar.core.liveness import AppLiveness
from sidecar.engine.app_link import AppLink
from sidecar.engine.status import StatusBoard
from sidecar.wiring.settings import build_parser, load_settings
from tests.unit.test_heartbeat import FakeClock

CONFIG = ElectionConfig(lease_ttl_s=10, renewal_interval_s=2, renew_deadline_s=6, heartbeat_interval_s=5,
                        heartbeat_ttl_s=15, failover_timeout_s=20)


class Stop(Exception):
    pass


async def run_probes(probe_s: list[float], interval_s: float, ttl_s: float) -> tuple[list[float], list[bool]]:
    """Probes taking `probe_s[i]` seconds each (all passing): when each pass landed, and whether
    the app was alive at every moment just before a pass."""
    clock = FakeClock()
    liveness = AppLiveness(ttl_s)
    link = AppLink(liveness, StatusBoard(Elector("a", CONFIG), clock, "ns/l", 3, liveness), clock, lambda: None, 5)
    passes: list[float] = []
    alive_before: list[bool] = []
    durations = iter(probe_s)

    async def probe() -> tuple[bool, str | None]:
        try:
            clock.advance(next(durations) - 1e-9)
        except StopIteration:
            raise Stop from None
        if passes:
            alive_before.append(liveness.allows_leading(clock.mono))
        clock.advance(1e-9)
        passes.append(clock.mono)
        return True, None

    async def sleep(seconds: float) -> None:
        assert seconds >= 0
        clock.advance(seconds)

    with pytest.raises(Stop):
        await link.probe_at_fixed_rate(probe, interval_s, sleep)
    return passes, alive_before


async def test_probes_start_at_a_fixed_rate_whatever_they_take() -> None:
    # The settings: interval 5 s, TTL 6 s, an app that answers in 1.1 s. Sleeping a whole
    # interval after each probe spaced the passes 6.1 s apart: the app flapped forever.
    passes, alive_before = await run_probes([1.1] * 10, interval_s=5, ttl_s=6)
    gaps = [round(later - earlier, 6) for earlier, later in itertools.pairwise(passes)]
    assert gaps == [5.0] * 9
    assert all(alive_before)


async def test_varying_probe_times_stay_within_interval_plus_timeout() -> None:
    passes, alive_before = await run_probes([0.0, 2.0, 0.0, 2.0, 1.0], interval_s=5, ttl_s=7.5)
    gaps = [round(later - earlier, 6) for earlier, later in itertools.pairwise(passes)]
    assert max(gaps) <= 5 + 2
    assert all(alive_before)


def load(*args: str) -> object:
    return load_settings(build_parser().parse_args(["run", "--lease-name", "work", "--namespace", "ns", *args]))


@pytest.mark.parametrize(("interval", "ttl"), [("5", "6"), ("5", "7"), ("1", "2"), ("0.5", "1")])
def test_a_ttl_probes_could_miss_is_refused_in_one_line(interval: str, ttl: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load("--heartbeat-interval", interval, "--app-heartbeat-ttl", ttl,
             "--app-health-url", "http://127.0.0.1:8080/healthz")
    assert caught.value.field == "--app-heartbeat-ttl"
    assert "probe timeout" in str(caught.value) and "\n" not in str(caught.value)


def test_a_ttl_above_interval_plus_probe_timeout_passes() -> None:
    load("--heartbeat-interval", "5", "--app-heartbeat-ttl", "7.5", "--app-health-url", "http://127.0.0.1:8080/")
    load("--heartbeat-interval", "1", "--app-heartbeat-ttl", "2.5", "--app-health-url", "http://127.0.0.1:8080/")
    load("--heartbeat-interval", "5", "--app-heartbeat-ttl", "6")  # heartbeats by POST: no probe time


def test_the_process_exits_2_with_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "sidecar", "run", "--lease-name", "w", "--namespace", "n",
                             "--heartbeat-interval", "5s", "--app-heartbeat-ttl", "6s",
                             "--app-health-url", "http://127.0.0.1:8080/healthz"],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--app-heartbeat-ttl" in lines[0] and "Traceback" not in result.stderr
