"""What explains a 10 s window of `GET /leader` at 1,000 req/s: read before and after the window.

One window's p99 is its ~100 slowest requests, so a few milliseconds of stall anywhere decide it.
Each window is kept with every candidate cause, measured rather than guessed:

* the sidecar's own stalls: its event-loop lag histogram (`lease_sidecar_event_loop_lag_seconds`,
  a 20 ms sample) and its garbage collections (`lease_sidecar_gc_pause_seconds`, every one);
* CPU it did not get: how long the sidecar and the load generator were runnable but waiting for a
  CPU (`/proc/<pid>/schedstat`), the CPU every other thread of the machine used meanwhile (their
  schedstat), and the time the hypervisor took the virtual CPUs away (`steal` in `/proc/stat`).

Used by `bench/run.py` (the local API scenario of `make bench`, and `make bench-api`, which runs
only this scenario for many windows). Stdlib only, like the rest of the harness.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import urllib.request
from pathlib import Path
from typing import Any

P99_GOAL_MS = 2.0
"""The local API's goal: p99 under this at 1,000 req/s, in every window."""


class ScrapeError(RuntimeError):
    pass


def scrape(metrics_url: str) -> str:
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            return resp.read().decode()
    except OSError as error:
        raise ScrapeError(f"cannot scrape {metrics_url}: {error}") from None


def histogram(text: str, name: str, labels: str = "") -> dict[float, float]:
    """A cumulative histogram from a scrape: {upper bound in s: count}. `labels` is the part of the
    label set before `le` (e.g. `generation="2",`)."""
    pattern = rf'^{name}_bucket\{{{re.escape(labels)}le="([^"]+)"\}} (\S+)$'
    return {float(le): float(count) for le, count in re.findall(pattern, text, re.MULTILINE)}


def gc_pauses(text: str) -> dict[str, dict[float, float]]:
    """The sidecar's garbage-collection pause histograms by generation."""
    generations = set(re.findall(r'^lease_sidecar_gc_pause_seconds_bucket\{generation="(\d+)"', text, re.MULTILINE))
    return {generation: histogram(text, "lease_sidecar_gc_pause_seconds", f'generation="{generation}",')
            for generation in sorted(generations)}


def gc_sums(text: str) -> dict[str, float]:
    pattern = r'^lease_sidecar_gc_pause_seconds_sum\{generation="(\d+)"\} (\S+)$'
    return {generation: float(total) for generation, total in re.findall(pattern, text, re.MULTILINE)}


def schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of a process's main thread, from the kernel."""
    cpu_ns, wait_ns, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(cpu_ns), int(wait_ns)


def steal_ms() -> float:
    """CPU time the hypervisor took from this machine's virtual CPUs so far (ms, all CPUs; `steal`
    of /proc/stat, counted in scheduler ticks, so 10 ms steps)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK")


def threads_cpu_ns(exclude_pid: int) -> dict[str, int]:
    """CPU time so far of every thread on the machine but `exclude_pid`'s: {pid/tid: ns} (schedstat)."""
    threads = {}
    for stat in Path("/proc").glob("[0-9]*/task/*/schedstat"):
        if stat.parts[2] == str(exclude_pid):
            continue
        try:
            threads[f"{stat.parts[2]}/{stat.parts[4]}"] = int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return threads


def others_cpu_ms(before: dict[str, int], after: dict[str, int]) -> float:
    """CPU the other threads used between two readings: what each thread alive at the second used
    since the first (all of it for a thread born meanwhile). A thread that ended in between is
    missed, so this is a lower bound."""
    return sum(ns - before.get(thread, 0) for thread, ns in after.items()) / 1e6


class Observation:
    """Everything read at one edge of a window; `explain(before, after)` turns two into a row."""

    def __init__(self, metrics_url: str, sidecar_pid: int) -> None:
        text = scrape(metrics_url)
        self.loop_lag = histogram(text, "lease_sidecar_event_loop_lag_seconds")
        if not self.loop_lag:
            raise ScrapeError(f"no lease_sidecar_event_loop_lag_seconds at {metrics_url}")
        self.gc = gc_pauses(text)
        self.gc_sum_s = gc_sums(text)
        self.sidecar_cpu_ns, self.sidecar_wait_ns = schedstat(sidecar_pid)
        self.others_cpu_ns = threads_cpu_ns(sidecar_pid)
        self.steal_ms = steal_ms()


def lag_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    samples = delta[math.inf]
    p99 = next((le for le, count in delta.items() if count >= 0.99 * samples), math.inf) if samples else None
    # Up to 1 ms of lag is the loop's own rounding (epoll waits in whole milliseconds, rounded up).
    return {"samples": samples, "over_1ms": samples - delta.get(0.001, 0.0),
            "over_2ms": samples - delta.get(0.002, 0.0), "over_5ms": samples - delta.get(0.005, 0.0),
            "p99_le_ms": None if p99 is None else p99 * 1000}


def explain(before: Observation, after: Observation, load: dict[str, Any]) -> dict[str, Any]:
    """The window's causes, beside the load generator's result `load` (its own runqueue wait and CPU
    are in it: `runqueue_wait_ms`, `cpu_ms`; it runs only between the two observations, so its
    CPU is in neither reading of the other threads)."""
    wall_ms = load["wall_s"] * 1000
    sidecar_cpu_ms = (after.sidecar_cpu_ns - before.sidecar_cpu_ns) / 1e6
    gc = {}
    for generation, buckets in after.gc.items():
        previous = before.gc.get(generation, {})
        count = buckets[math.inf] - previous.get(math.inf, 0.0)
        over_1ms = count - (buckets.get(0.001, 0.0) - previous.get(0.001, 0.0))
        total_ms = (after.gc_sum_s.get(generation, 0.0) - before.gc_sum_s.get(generation, 0.0)) * 1000
        gc[generation] = {"count": count, "over_1ms": over_1ms, "total_ms": round(total_ms, 2)}
    return {
        "loop_lag": lag_summary(before.loop_lag, after.loop_lag),
        "gc": gc,
        "sidecar_cpu_ms": round(sidecar_cpu_ms, 1),
        "sidecar_runqueue_wait_ms": round((after.sidecar_wait_ns - before.sidecar_wait_ns) / 1e6, 1),
        "loadgen_runqueue_wait_ms": load.get("runqueue_wait_ms"),
        # The CPU everything else used: the apiserver and etcd of this run, other users' work.
        "others_cpu_ms": round(others_cpu_ms(before.others_cpu_ns, after.others_cpu_ns), 0),
        "steal_ms": round(after.steal_ms - before.steal_ms, 0),
        "wall_ms": round(wall_ms, 0),
        "load1": os.getloadavg()[0],
    }


def line(index: int, window: dict[str, Any]) -> str:
    """One window as a line of the bench's output."""
    lag, gc = window["loop_lag"], window["gc"]
    full = gc.get("2", {"count": 0, "total_ms": 0.0})
    return (f"window {index + 1}: p50 {window['p50_ms']:.2f} p99 {window['p99_ms']:.2f} max {window['max_ms']:.1f} ms"
            f" (read: p99 {window.get('read_p99_ms') or 0:.2f}, max {window.get('read_max_ms') or 0:.1f})"
            f" | sidecar: loop lag >2 ms {lag['over_2ms']:.0f}/{lag['samples']:.0f}, "
            f"gc {sum(g['count'] for g in gc.values()):.0f} ({sum(g['total_ms'] for g in gc.values()):.1f} ms; "
            f"full {full['count']:.0f}, {full['total_ms']:.1f} ms), cpu {window['sidecar_cpu_ms']:.0f} ms, "
            f"runqueue {window['sidecar_runqueue_wait_ms']:.0f} ms | loadgen runqueue "
            f"{window['loadgen_runqueue_wait_ms']} ms | others' cpu {window['others_cpu_ms']:.0f} ms, "
            f"steal {window['steal_ms']:.0f} ms, load {window['load1']:.2f}")


def summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    p99s = sorted(window["p99_ms"] for window in windows)
    return {"windows": len(p99s), "p99_median_ms": statistics.median(p99s), "p99_min_ms": p99s[0],
            "p99_max_ms": p99s[-1], "under_goal": sum(p99 < P99_GOAL_MS for p99 in p99s),
            "goal_ms": P99_GOAL_MS}
