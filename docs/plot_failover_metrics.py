#!/usr/bin/env python3
"""Draws docs/failover-metrics.png: the sidecars' metrics while their leader dies and is replaced.

The picture in the repository is drawn from a real Prometheus: the range queries that
tests/node/test_monitoring.py saves (the operator's server on the local node scraping the example
chart in real pods every 5 s while its leader pod is deleted, the release is rolled out, and the
next leader resigns):

    .venv/bin/python -m pytest tests/node/test_monitoring.py      # writes /tmp/lease-sidecar-failover-metrics.json
    .venv/bin/python docs/plot_failover_metrics.py --from-prometheus /tmp/lease-sidecar-failover-metrics.json

Without --from-prometheus it runs its own scenario without Prometheus: three real
`lease-sidecar run` processes elect over one Lease on the local control plane (run
`deploy/local/cluster up` first). Their /metrics are scraped every 0.2 s and parsed with
prometheus_client's text parser while the leader is SIGKILLed (the others must wait for its lease
to expire) and, later, the next leader is sent SIGTERM (it releases the lease on the way out, so the
hand-over is immediate). Timing is the fast one of the cluster tests: lease TTL 4 s, renewal every 1 s.

    .venv/bin/python docs/plot_failover_metrics.py [--out docs/failover-metrics.png]

Bounded: the whole run gives up after --timeout seconds; every sidecar it started is killed on exit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from math import nan
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import sidecars  # noqa: E402
from tests.cluster.kube import kubectl  # noqa: E402
from tests.conftest import localcluster  # noqa: E402

SCRAPE_EVERY_S = 0.2
SETTLE_S = 4.0  # steady state shown before and after each event
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass
class Sample:
    t: float  # seconds since the first candidate started
    identity: str
    is_leader: float
    valid_s: float
    fencing_token: float


class Scraper(threading.Thread):
    """Scrapes every candidate's /metrics every SCRAPE_EVERY_S; a failed scrape records nothing."""

    def __init__(self, fleet: list[sidecars.Sidecar], t0: float) -> None:
        super().__init__(daemon=True)
        self.fleet = fleet
        self.t0 = t0
        self.samples: list[Sample] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopping.is_set():
            for sidecar in list(self.fleet):
                sample = self.scrape(sidecar)
                if sample is not None:
                    self.samples.append(sample)
            next_at += SCRAPE_EVERY_S
            self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def scrape(self, sidecar: sidecars.Sidecar) -> Sample | None:
        url = f"http://127.0.0.1:{sidecar.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                text = response.read().decode()
        except OSError:
            return None
        at = time.monotonic() - self.t0
        values = {sample.name: sample.value for family in text_string_to_metric_families(text)
                  for sample in family.samples}
        return Sample(at, sidecar.identity, values["lease_sidecar_is_leader"],
                      values["lease_sidecar_lease_valid_seconds"], values["lease_sidecar_fencing_token"])


def only_leader(fleet: list[sidecars.Sidecar], deadline: float) -> sidecars.Sidecar:
    while time.monotonic() < deadline:
        names = sidecars.leaders(fleet)
        if len(names) == 1:
            return next(s for s in fleet if s.identity == names[0])
        time.sleep(0.05)
    raise TimeoutError("no single leader in time")


def new_leader(fleet: list[sidecars.Sidecar], old: sidecars.Sidecar, deadline: float) -> sidecars.Sidecar:
    while time.monotonic() < deadline:
        leader = only_leader(fleet, deadline)
        if leader is not old:
            return leader
        time.sleep(0.05)
    raise TimeoutError("no new leader in time")


def run_scenario(workdir: Path, namespace: str, timeout_s: float) -> tuple[list[Sample], dict[str, float], list[str]]:
    deadline = time.monotonic() + timeout_s
    fleet: list[sidecars.Sidecar] = []
    t0 = time.monotonic()
    scraper = Scraper(fleet, t0)
    events: dict[str, float] = {}
    try:
        scraper.start()
        for index in range(3):
            fleet.append(sidecars.start(f"candidate-{index}", "failover-demo", namespace, workdir,
                                        kubeconfig=localcluster.Paths().kubeconfig))
        first = only_leader(fleet, deadline)
        time.sleep(SETTLE_S)

        events["SIGKILL"] = time.monotonic() - t0
        first.kill()
        second = new_leader(fleet, first, deadline)
        events["killed: new leader"] = time.monotonic() - t0
        time.sleep(SETTLE_S)

        events["SIGTERM"] = time.monotonic() - t0
        second.process.send_signal(signal.SIGTERM)
        third = new_leader(fleet, second, deadline)
        events["terminated: new leader"] = time.monotonic() - t0
        second.process.wait(max(1.0, deadline - time.monotonic()))
        time.sleep(SETTLE_S)
        print(f"leaders: {first.identity} -> {second.identity} -> {third.identity}; events {events}",
              file=sys.stderr)
    finally:
        scraper.stopping.set()
        sidecars.stop_all(fleet)
        scraper.join(5)
    return scraper.samples, events, [s.identity for s in fleet]


def bar_spans(own: list[Sample], state: float, step_s: float = SCRAPE_EVERY_S) -> list[tuple[float, float]]:
    """(start, width) of runs of scrapes in `state`; a scrape counts until the next one, blank past a gap."""
    spans: list[tuple[float, float]] = []
    for sample, following in itertools.pairwise([*own, None]):
        if sample.is_leader != state:
            continue
        width = min(following.t - sample.t if following is not None else step_s, 3 * step_s)
        if spans and abs(spans[-1][0] + spans[-1][1] - sample.t) < 1e-9:
            spans[-1] = (spans[-1][0], spans[-1][1] + width)  # one bar per run: no seams between scrapes
        else:
            spans.append((sample.t, width))
    return spans


def plot(samples: list[Sample], events: dict[str, float], identities: list[str], out: Path,
         title: str = "lease-sidecar metrics while the leader is killed, then stopped "
                      "(3 candidates; lease TTL 4 s, renewal every 1 s; scraped every 0.2 s)",
         step_s: float = SCRAPE_EVERY_S, labels: dict[str, str] | None = None,
         xlabel: str = "seconds since the first candidate started") -> None:
    end = max(s.t for s in samples)
    fig, (timeline, valid, tokens) = plt.subplots(
        3, 1, sharex=True, figsize=(10, 6.6), height_ratios=(1.1 + 0.15 * max(0, len(identities) - 3), 1.3, 0.8),
        layout="constrained")
    fig.suptitle(title, fontsize=10)
    by_identity = {identity: [s for s in samples if s.identity == identity] for identity in identities}

    # Who leads: one row per candidate (coloured: leader, grey: standby, blank: not running or not scraped).
    for row, identity in enumerate(identities):
        for state, colour in ((1.0, COLOURS[row]), (0.0, "#d0d0d0")):
            timeline.broken_barh(bar_spans(by_identity[identity], state, step_s), (row - 0.35, 0.7), facecolors=colour,
                                 linewidth=0)
    timeline.set_yticks(range(len(identities)), identities, fontsize=8)
    timeline.set_ylim(len(identities) - 0.5, -0.5)
    timeline.set_title("lease_sidecar_is_leader per candidate (coloured: leader, grey: standby, "
                       "blank: not running)", fontsize=9, loc="left")

    # Time with no leader in any scrape: from just after the last 1 to the next 1.
    leader_times = sorted(s.t for s in samples if s.is_leader == 1.0)
    gaps = [(a + step_s, b) for a, b in itertools.pairwise(leader_times) if b - a > 2.5 * step_s]
    for axis in (timeline, valid, tokens):
        for a, b in gaps:
            axis.axvspan(a, b, color="#e45756", alpha=0.13, linewidth=0)
    for a, b in gaps:
        # In the row of the leader that was lost: it is blank there.
        lost = max((s for s in samples if s.is_leader == 1.0 and s.t < a), key=lambda s: s.t)
        timeline.text((a + b) / 2, identities.index(lost.identity), f"no leader for {b - a:.1f} s:\nthe dead "
                      "leader's lease\nmust expire first", ha="center", va="center", fontsize=7.5, color="#a0302c")

    # Lease valid and fencing token: drawn only while the candidate leads (both are 0 on standbys).
    for row, identity in enumerate(identities):
        own = by_identity[identity]
        leading = [(s.t, s.valid_s, s.fencing_token) if s.is_leader else (s.t, nan, nan) for s in own]
        times = [t for t, _, _ in leading]
        valid.plot(times, [v for _, v, _ in leading], color=COLOURS[row], linewidth=1.3, drawstyle="steps-post")
        tokens.plot(times, [f for _, _, f in leading], color=COLOURS[row], linewidth=2.5, drawstyle="steps-post")
    valid.set_ylabel("seconds", fontsize=8)
    valid.set_ylim(0, max((s.valid_s for s in samples if s.is_leader and s.valid_s == s.valid_s), default=3.0)
                   * 1.1)
    valid.set_title("lease_sidecar_lease_valid_seconds of the leader: time it may still act without renewing "
                    "(each renewal resets it)", fontsize=9, loc="left")
    tokens.set_ylabel("token", fontsize=8)
    leader_tokens = [s.fencing_token for s in samples if s.is_leader and s.fencing_token == s.fencing_token]
    low, high = min(leader_tokens, default=0.0), max(leader_tokens, default=1.0)
    tokens.set_ylim(low - 1 if low > 10 else 0, high + 1)
    tokens.set_title("lease_sidecar_fencing_token of the leader: it grows with every term", fontsize=9, loc="left")
    tokens.ticklabel_format(axis="y", useOffset=False, style="plain")
    tokens.yaxis.get_major_locator().set_params(integer=True)
    tokens.set_xlabel(xlabel, fontsize=8)
    tokens.set_xlim(0, end + step_s)

    if labels is None:
        labels = {"SIGKILL": "SIGKILL leader", "SIGTERM": "SIGTERM leader:\nreleases, hand-over at once"}
    for name, at in events.items():
        if name in labels:
            for axis in (timeline, valid, tokens):
                axis.axvline(at, color="black", linestyle="--", linewidth=0.9)
            valid.text(at + 0.1, 0.25, labels[name], fontsize=7.5, va="bottom", ha="left",
                       bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
    for axis in (timeline, valid, tokens):
        axis.tick_params(labelsize=8)
        axis.set_axisbelow(True)
        axis.grid(axis="x", color="#eeeeee")

    handles = [Patch(color=COLOURS[i], label=identity) for i, identity in enumerate(identities)]
    handles += [Patch(color="#d0d0d0", label="standby"),
                Patch(color="#e45756", alpha=0.25, label="no candidate reports leader"),
                Line2D([], [], color="black", linestyle="--", linewidth=0.9, label="event")]
    fig.legend(handles=handles, fontsize=7.5, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def plot_from_prometheus(data: dict, out: Path) -> int:
    """Samples from Prometheus range queries (step 1 s over a 5 s scrape: each sample is the latest
    scrape), one row per pod in order of appearance."""
    start = data["start"]
    values: dict[str, dict[str, dict[float, float]]] = {}
    for metric, series in data["series"].items():
        for one in series:
            by_time = values.setdefault(one["pod"], {}).setdefault(metric, {})
            for at, value in one["values"]:
                by_time[float(at)] = float(value)
    samples = []
    for pod, metrics in values.items():
        for at, is_leader in sorted(metrics.get("lease_sidecar_is_leader", {}).items()):
            samples.append(Sample(at - start, pod, is_leader, metrics.get("lease_sidecar_lease_valid_seconds", {})
                                  .get(at, nan), metrics.get("lease_sidecar_fencing_token", {}).get(at, nan)))
    identities = sorted(values, key=lambda pod: min(s.t for s in samples if s.identity == pod))
    short = {pod: pod.rsplit("-", 1)[-1] for pod in identities}  # the pod's own suffix
    for sample in samples:
        sample.identity = short[sample.identity]
    events = {name: at - start for name, at in data["events"].items()}
    interval = data.get("scrape_interval_s", 5.0)
    plot(samples, events, [short[pod] for pod in identities], out,
         title=f"lease-sidecar metrics as Prometheus stored them (example chart, 2 pods; lease TTL 10 s, "
               f"renewal every 2 s; scraped every {interval:g} s)",
         step_s=1.0, labels={name: name for name in events},
         xlabel="seconds (range queries, step 1 s, of the operator's Prometheus on the local node)")
    print(f"wrote {out} ({len(samples)} samples of {len(identities)} pods)", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "failover-metrics.png")
    parser.add_argument("--timeout", type=float, default=90.0, help="give up after this many seconds")
    parser.add_argument("--save-data", type=Path, help="also write the scraped samples and events as JSON")
    parser.add_argument("--from-data", type=Path, help="re-draw from such a JSON instead of running sidecars")
    parser.add_argument("--from-prometheus", type=Path,
                        help="draw from the range queries tests/node/test_monitoring.py saves")
    args = parser.parse_args()
    if args.from_prometheus:
        return plot_from_prometheus(json.loads(args.from_prometheus.read_text()), args.out)
    if args.from_data:
        data = json.loads(args.from_data.read_text())
        plot([Sample(**s) for s in data["samples"]], data["events"], data["identities"], args.out)
        return 0
    paths = localcluster.Paths()
    if not localcluster.is_ready(paths):
        print("the local control plane is not running: run `deploy/local/cluster up` first", file=sys.stderr)
        return 2
    os.environ["KUBECONFIG"] = str(paths.kubeconfig)
    namespace = f"failover-plot-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    try:
        with tempfile.TemporaryDirectory(prefix="failover-plot-") as workdir:
            samples, events, identities = run_scenario(Path(workdir), namespace, args.timeout)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    if args.save_data:
        args.save_data.write_text(json.dumps({"samples": [asdict(s) for s in samples], "events": events,
                                              "identities": identities}))
    plot(samples, events, identities, args.out)
    print(f"wrote {args.out} ({len(samples)} samples)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
