"""bench/results.py: every bench merges its rows into bench/results.json, replacing only the
(system, scenario) pairs it measured (make bench must not drop make bench-beat's rows)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402  (bench/results.py)


def row(system: str, scenario: str, median: float) -> dict[str, object]:
    return {"system": system, "scenario": scenario, "unit": "s", "median": median, "min": median, "max": median,
            "runs": 1}


def test_measured_pairs_replace_theirs_in_place_and_every_other_row_stays() -> None:
    existing = [row("lease-sidecar", "graceful_handover_s", 1.0), row("client-go", "graceful_handover_s", 2.0),
                row("naive-poll", "beat_gap_s_sigkill", 9.0), row("lease-sidecar-client", "pg_write_ms", 0.3)]
    measured = [row("client-go", "graceful_handover_s", 2.5), row("lease-sidecar", "graceful_handover_s", 1.5),
                row("lease-sidecar", "startup_to_leader_s", 0.7)]
    assert results.merged(existing, measured) == [
        row("lease-sidecar", "graceful_handover_s", 1.5), row("client-go", "graceful_handover_s", 2.5),
        row("naive-poll", "beat_gap_s_sigkill", 9.0), row("lease-sidecar-client", "pg_write_ms", 0.3),
        row("lease-sidecar", "startup_to_leader_s", 0.7)]


def test_a_pair_is_matched_by_system_and_scenario_together() -> None:
    existing = [row("a", "x", 1.0), row("b", "x", 2.0), row("a", "y", 3.0)]
    assert results.merged(existing, [row("a", "x", 10.0)]) == [row("a", "x", 10.0), row("b", "x", 2.0),
                                                               row("a", "y", 3.0)]


def test_an_old_duplicate_of_a_measured_pair_goes_and_a_measured_duplicate_is_refused() -> None:
    assert results.merged([row("a", "x", 1.0), row("a", "x", 2.0)], [row("a", "x", 3.0)]) == [row("a", "x", 3.0)]
    with pytest.raises(ValueError, match="two measured rows"):
        results.merged([], [row("a", "x", 1.0), row("a", "x", 2.0)])


def test_merge_into_creates_the_file_then_keeps_what_another_bench_wrote(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    beat_rows = [row("single-beat", "beat_gap_s_sigstop", 4.0)]
    assert results.merge_into(beat_rows, path) == beat_rows
    election_rows = [row("lease-sidecar", "graceful_handover_s", 0.1)]
    assert results.merge_into(election_rows, path) == beat_rows + election_rows
    assert json.loads(path.read_text()) == beat_rows + election_rows
    assert path.read_text().endswith("]\n")
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"], "no partial file left behind"


def test_the_committed_results_have_one_row_per_pair() -> None:
    rows = json.loads((ROOT / "bench" / "results.json").read_text())
    keys = [results.row_key(r) for r in rows]
    assert len(keys) == len(set(keys))
    assert results.merged(rows, []) == rows


def test_summary_row_gives_median_min_max_and_runs_rounded() -> None:
    assert results.summary_row("a", "x", "ms", [0.12345, 0.5, 0.3], 3) == {
        "system": "a", "scenario": "x", "unit": "ms", "median": 0.3, "min": 0.123, "max": 0.5, "runs": 3}


def test_print_table_aligns_names_left_and_figures_right(capsys: pytest.CaptureFixture[str]) -> None:
    results.print_table([row("lease-sidecar", "graceful_handover_s", 0.25), row("go", "x", 12.5)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["scenario", "system", "unit", "median", "min", "max", "runs"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["graceful_handover_s", "lease-sidecar", "s", "0.25", "0.25", "0.25", "1"]
    assert lines[3].startswith("x   ") and lines[3].endswith(" 1")
    assert len({len(line) for line in lines}) == 1, "every line as wide as the header's"
