"""Schemathesis hooks for the keyed locks' run: a valid `?wait=` is shortened to 0.05 s so a held
key does not hold the run for minutes; invalid ones are left alone for negative testing."""

from __future__ import annotations

from typing import Any

import schemathesis

LONGEST_WAIT_S = 0.05


@schemathesis.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if not query or "wait" not in query:
        return query
    wait = query["wait"]
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > LONGEST_WAIT_S:
        return {**query, "wait": LONGEST_WAIT_S}
    return query
