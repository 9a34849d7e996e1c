"""The chaos run's and the demo's arithmetic over the effect table (deploy/local/example_release.py
beat_figures): executions per tick, ticks never run, ticks caught up late, the longest gap, and
writes that landed after a newer term's."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import example_release  # noqa: E402

Execution = example_release.Execution


def run(job: str, tick: float, late_s: float = 0.3, token: int = 10, pod: str = "a",
        caught_up: bool = False) -> Execution:
    return Execution(job, tick, tick + late_s, token, pod, caught_up)


def test_every_tick_once_on_time() -> None:
    executions = [run(job, tick) for tick in range(100, 110) for job in ("job-1", "job-2")]
    figures = example_release.beat_figures(executions, ["job-1", "job-2"], 100.0, 110.0)
    assert (figures.ticks, figures.executions) == (20, 20)
    assert figures.duplicated_ticks == [] and figures.never_run == [] and figures.late == []
    assert figures.caught_up == []
    assert figures.max_executions_per_tick == 1
    assert figures.out_of_order_writes == 0 and figures.leaders == ["a"]
    assert 0.9 < figures.longest_gap_s < 1.1


def test_duplicates_gaps_catch_up_and_stale_writes_are_counted() -> None:
    executions = [run("job-1", tick) for tick in range(100, 104)]  # leader a, token 10
    executions += [run("job-1", tick, late_s=108.5 - tick, token=20, pod="b", caught_up=True)
                   for tick in (104, 105, 106)]  # b caught these up
    executions += [run("job-1", 107, token=20, pod="b"), run("job-1", 108, token=20, pod="b")]
    executions += [Execution("job-1", 107, 109.0, 10, "a")]  # a's late write of 107, after b's token 20
    figures = example_release.beat_figures(executions, ["job-1"], 100.0, 110.0)
    assert figures.duplicated_ticks == [("job-1", 107.0, 2)]
    assert figures.max_executions_per_tick == 2
    assert figures.never_run == [("job-1", 109.0)]
    assert [(tick, late) for _, tick, late in figures.late] == [(104.0, 4.5), (105.0, 3.5), (106.0, 2.5)]
    assert [(tick, pod) for _, tick, _, pod in figures.caught_up] == [(104.0, "b"), (105.0, "b"), (106.0, "b")]
    assert figures.out_of_order_writes == 1
    assert figures.leaders == ["a", "b"]
    assert abs(figures.longest_gap_s - (107.3 - 103.3)) < 1e-6  # b ran 107 on time before catching up


def test_ticks_follow_the_anchor_not_the_window() -> None:
    figures = example_release.beat_figures([], ["job-1"], 100.25, 103.0, interval_s=1.0, anchor_s=0.5)
    assert [tick for _, tick in figures.never_run] == [100.5, 101.5, 102.5]
