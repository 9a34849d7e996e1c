"""lease_sidecar_client's terms against real sidecars on the control plane: the term matches
/leader, renewals move its deadline (long-poll refresh for the blocking client, `event: renewal`
for asyncio), and the work is told when the term ends (resign, a frozen sidecar)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from lease_sidecar_client import Sidecar, TermEnded, current_term
from lease_sidecar_client._leading import DEADLINE, STANDBY
from lease_sidecar_client.aio import AsyncSidecar

from tests.cluster import sidecars

PATIENCE_S = 60.0


@pytest.fixture()
def leader(namespace: str, tmp_path: Path) -> Iterator[sidecars.Sidecar]:
    sidecar = sidecars.start("only", "terms", namespace, tmp_path)
    sidecars.wait_for(lambda: sidecars.leaders([sidecar]) == ["only"], PATIENCE_S)
    yield sidecar
    if sidecar.alive():
        sidecar.process.send_signal(signal.SIGCONT)
    sidecars.stop_all([sidecar])


def test_blocking_term_follows_renewals_and_ends_on_resign(leader: sidecars.Sidecar, namespace: str) -> None:
    client = Sidecar(leader.url)
    with client.leading(refresh_s=0.2) as lead:
        status = leader.leader()
        assert status is not None
        assert (lead.term.lease, lead.term.fencing_token) == (f"{namespace}/terms", status["fencing_token"])
        assert lead.term.lease_uid == status["lease_uid"] and current_term() == lead.term
        first = lead.term.valid_until_monotonic
        sidecars.wait_for(lambda: lead.term.valid_until_monotonic > first, PATIENCE_S, 0.05)  # a renewal
        leader.post("/leader/resign?sit_out=60")
        assert lead.ended.wait(PATIENCE_S)
        assert lead.reason == STANDBY and not lead.term.is_valid()
        with pytest.raises(TermEnded):
            lead.check()


def test_a_frozen_sidecar_cannot_keep_the_term_alive(leader: sidecars.Sidecar) -> None:
    with Sidecar(leader.url, request_timeout_s=0.5).leading(refresh_s=0.2) as lead:
        leader.process.send_signal(signal.SIGSTOP)  # no renewal, no answer: the deadline ends it
        assert lead.ended.wait(PATIENCE_S)
        assert lead.reason == DEADLINE
    leader.process.send_signal(signal.SIGCONT)


async def test_asyncio_term_follows_renewal_events_and_cancels_the_work_on_resign(leader: sidecars.Sidecar) -> None:
    client = AsyncSidecar(leader.url)
    moved = asyncio.Event()
    with pytest.raises(TermEnded):
        async with client.leading(refresh_s=600) as lead:  # no polling: only the event stream
            first = lead.term.valid_until_monotonic
            while lead.term.valid_until_monotonic == first:  # noqa: ASYNC110  (a Term has no event)
                await asyncio.sleep(0.05)
            moved.set()
            await client.resign(sit_out_s=60)
            await asyncio.sleep(PATIENCE_S)  # cancelled here when the stream says standby
    assert moved.is_set() and lead.reason == STANDBY
