"""bench/results.json: the rows {system, scenario, unit, median, min, max, runs} of every bench.

Several benches share the file: `make bench` (bench/run.py, with bench/fence.py's and
bench/locks.py's rows), `make bench-beat` (bench/beat.py, the beat_* rows), `bench/run.py --fence`
and `bench/locks.py` alone. Each measures some (system, scenario) pairs, so each writes by
merging: its rows replace the rows of the same pairs, in place, and every other row stays as it
was. A pair a run did not measure (a scenario whose every run failed, too) keeps its earlier row.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"

Row = dict[str, Any]


def summary_row(system: str, scenario: str, unit: str, values: list[float], digits: int) -> Row:
    """One row: median, min and max of a scenario's values over its runs, rounded to `digits`."""
    return {"system": system, "scenario": scenario, "unit": unit, "median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits), "runs": len(values)}


def print_table(rows: list[Row]) -> None:
    """The rows as an aligned text table: names left, figures right."""
    header = ("scenario", "system", "unit", "median", "min", "max", "runs")
    table = [header] + [tuple(str(row[key]) for key in header) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for index, line in enumerate(table):
        print("  ".join(cell.ljust(width) if i < 3 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths, strict=True))))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def row_key(row: Row) -> tuple[str, str]:
    return row["system"], row["scenario"]


def merged(existing: list[Row], measured: list[Row]) -> list[Row]:
    """`existing` with each measured (system, scenario) row in place of the old one (where the old
    one stood); pairs new to the file come last, in the measured order."""
    measured_by_key: dict[tuple[str, str], Row] = {}
    for row in measured:
        if row_key(row) in measured_by_key:
            raise ValueError(f"two measured rows for {row_key(row)}: one bench run gives one row per pair")
        measured_by_key[row_key(row)] = row
    result: list[Row] = []
    placed: set[tuple[str, str]] = set()
    for row in existing:
        key = row_key(row)
        if key not in measured_by_key:
            result.append(row)
        elif key not in placed:
            result.append(measured_by_key[key])
            placed.add(key)
    result.extend(row for row in measured if row_key(row) not in placed)
    return result


def merge_into(measured: list[Row], path: Path = RESULTS_PATH) -> list[Row]:
    """Merges `measured` into the results file at `path` (created if missing) and returns every
    row now in it. Written through a temporary file and a rename, so an interrupted write leaves
    the previous file whole."""
    existing = json.loads(path.read_text()) if path.exists() else []
    rows = merged(existing, measured)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(partial, path)
    return rows
