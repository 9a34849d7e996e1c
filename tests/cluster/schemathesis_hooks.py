"""Schemathesis hooks of the local API's runs (test_schemathesis.py, and the keyed locks' in
test_keyed_locks.py), loaded through SCHEMATHESIS_HOOKS.

`GET /leader?wait=W&since=V` blocks for up to W seconds (clamped to 300) when V is the current
version, and `?wait=` on a held lock key waits for it, as designed. Valid waits are shortened so
the run stays quick; invalid ones (negative, not a number) are left alone, so negative testing
still sees them refused.
"""

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
