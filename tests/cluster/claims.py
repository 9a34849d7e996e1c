"""Each sidecar process's own account of its leadership, read back from its log.

A claim runs from the start of the write that began the term (`term_started_mono` of the
`role_changed` line: the earliest moment it could count) to the earlier of its last reported
deadline (`valid_until_mono`, raised by each `lease_written` line, which needs --log-level debug)
and its logged step-down. A process that was paused, cut off or killed claims exactly until its
deadline: that is what its app was told. All times are CLOCK_MONOTONIC, shared by the processes
of one machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations


@dataclass
class Claim:
    process: str
    token: int
    start_mono: float
    valid_until_mono: float
    stepped_down_mono: float = float("inf")
    reason: str | None = None

    @property
    def end_mono(self) -> float:
        return min(self.valid_until_mono, self.stepped_down_mono)


def claims_from_log(process: str, log_text: str) -> list[Claim]:
    claims: list[Claim] = []
    current: Claim | None = None
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        event = entry.get("event")
        if event == "role_changed" and entry.get("to_role") == "leader":
            current = Claim(process, entry["term"], entry["term_started_mono"], entry["valid_until_mono"])
            claims.append(current)
        elif event == "lease_written" and current is not None:
            current.valid_until_mono = max(current.valid_until_mono, entry["valid_until_mono"])
        elif event == "role_changed" and entry.get("from_role") == "leader" and current is not None:
            current.stepped_down_mono = entry["mono"]
            current.reason = entry.get("reason")
            current = None
    return claims


def overlapping(claims: list[Claim]) -> list[tuple[Claim, Claim]]:
    """Pairs of claims by different processes that share any moment."""
    return [(a, b) for a, b in combinations(claims, 2)
            if a.process != b.process and a.start_mono < b.end_mono and b.start_mono < a.end_mono]
