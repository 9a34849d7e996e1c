"""Chaos on a real lease: crashes, graceful stops, restarts under the same identity and API
server outages, in a seeded random order. Afterwards, every process's own log of its role changes
(one clock: they all run on this machine) must show leadership terms that never overlap, with
fencing tokens that grow in the order the terms began."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

from tests.cluster import sidecars
from tests.conftest import localcluster

CANDIDATES = 4
DURATION_S = 35.0


@dataclass
class Term:
    identity: str
    token: int
    start: float
    end: float


def log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def terms_from(sidecar: sidecars.Sidecar, killed_at: float | None) -> list[Term]:
    terms: list[Term] = []
    current: Term | None = None
    for line in sidecar.logs().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") != "role_changed":
            continue
        if entry["to_role"] == "leader":
            current = Term(sidecar.identity, entry["term"], log_time(entry["ts"]), float("inf"))
        elif entry["from_role"] == "leader" and current is not None:
            current.end = log_time(entry["ts"])
            terms.append(current)
            current = None
    if current is not None:
        assert killed_at is not None, f"{sidecar.identity} exited as leader without saying so"
        current.end = killed_at
        terms.append(current)
    return terms


def test_terms_never_overlap_under_chaos(namespace: str, tmp_path: Path, cluster: localcluster.Paths) -> None:
    rng = random.Random(20261123)
    everyone: list[tuple[sidecars.Sidecar, float | None]] = []  # (process, wall time of its SIGKILL)
    live: dict[str, sidecars.Sidecar] = {}
    generation = 0

    def spawn(identity: str) -> None:
        nonlocal generation
        generation += 1
        live[identity] = sidecars.start(identity, "chaos", namespace, tmp_path / f"g{generation}")

    for index in range(CANDIDATES):
        spawn(f"chaos-{index}")
    actions = {"kill": 0, "term": 0, "outage": 0, "restart": 0}
    try:
        deadline = time.monotonic() + DURATION_S
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 2.5))
            leaders = sidecars.leaders(list(live.values()))
            assert len(leaders) <= 1, leaders
            choice = rng.choice(["kill", "term", "outage", "restart", "restart"])
            if choice in ("kill", "term") and leaders and len(live) > 1:
                victim = live.pop(leaders[0])
                if choice == "kill":
                    killed_at = time.time()
                    victim.kill()
                    everyone.append((victim, killed_at))
                else:
                    assert victim.terminate() == 0
                    everyone.append((victim, None))
            elif choice == "outage":
                pid = localcluster.pause_apiserver(cluster)
                try:
                    time.sleep(rng.uniform(1.0, 4.0))
                finally:
                    localcluster.resume_apiserver(pid)
            elif choice == "restart":
                missing = [f"chaos-{i}" for i in range(CANDIDATES) if f"chaos-{i}" not in live]
                if not missing:
                    continue
                spawn(rng.choice(missing))
            else:
                continue
            actions[choice] += 1
        sidecars.wait_for(lambda: len(sidecars.leaders(list(live.values()))) == 1, 15)
    finally:
        for sidecar in live.values():
            sidecar.terminate()
            everyone.append((sidecar, None))
        sidecars.stop_all([s for s, _ in everyone])

    terms = sorted((t for s, killed in everyone for t in terms_from(s, killed)), key=lambda t: t.start)
    assert len(terms) >= 4, (actions, terms)
    for earlier, later in pairwise(terms):
        assert earlier.end <= later.start, f"overlap: {earlier} and {later}"
        assert later.token > earlier.token, f"token did not grow: {earlier} then {later}"
    print(f"{len(terms)} terms, actions {actions}")
