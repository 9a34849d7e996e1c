"""Fencing tokens read from a Lease are honoured only within what election.py L2 can produce
(review item C2): a hand-edited annotation above 2^63-1 (a bigint fence's maximum), far above the
Lease's own resourceVersion, or unparsable is ignored with a warning, never a crash, and the next
term's token still exceeds every honest earlier one."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from sidecar.core.election import Elector, Wait, Write
from sidecar.core.lock import Versioned
from sidecar.core.record import (
    FENCING_ANNOTATION,
    MAX_FENCING_TOKEN,
    TOKEN_ABOVE_VERSION_SLACK,
    LeaseRecord,
    parse_fencing_token,
)
from sidecar.kube.lease_lock import LeaseLockBackend
from tests.unit.test_election import CONFIG, at


def lease(token: object, version: str | None = "1000", holder: str = "a") -> dict[str, Any]:
    metadata: dict[str, Any] = {"annotations": {FENCING_ANNOTATION: token}}
    if version is not None:
        metadata["resourceVersion"] = version
    return {"metadata": metadata, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10}}


@pytest.mark.parametrize("token", [str(2**63), str(10**19), "9" * 25, "9" * 5000])
def test_a_token_above_int64_is_ignored(token: str) -> None:
    found, why = parse_fencing_token(token)
    assert found is None and why
    assert LeaseRecord.from_lease(lease(token, version=None)).fencing_token is None


@pytest.mark.parametrize("token", ["-3", "12abc", "1_000", " 12", "+12", "1.0", "0x10", "١٢", "true", "12\n"])
def test_an_unparsable_token_is_ignored(token: str) -> None:
    found, why = parse_fencing_token(token, "1000")
    assert found is None and why
    assert LeaseRecord.from_lease(lease(token)).fencing_token is None


def test_tokens_within_l2_are_honoured_even_above_the_version() -> None:
    assert parse_fencing_token(None) == (None, "") and parse_fencing_token("") == (None, "")
    assert parse_fencing_token("999", "1000") == (999, "")
    assert parse_fencing_token(str(MAX_FENCING_TOKEN)) == (MAX_FENCING_TOKEN, "")  # no version to judge by
    # Above the version it only raises tokens (and may be remembered from before an etcd restore).
    assert parse_fencing_token(str(1000 + TOKEN_ABOVE_VERSION_SLACK), "1000")[0] == 1000 + TOKEN_ABOVE_VERSION_SLACK
    found, why = parse_fencing_token(str(1001 + TOKEN_ABOVE_VERSION_SLACK), "1000")
    assert found is None and "resourceVersion 1000" in why
    assert parse_fencing_token(str(MAX_FENCING_TOKEN), "1000")[0] is None


def test_the_next_term_goes_past_the_version_not_past_an_ignored_token() -> None:
    elector = Elector("b", CONFIG)
    edited = LeaseRecord.from_lease(lease(str(2**64)))  # a hand edit of a dead holder's record
    assert edited.fencing_token is None
    elector.observe(at(0), Versioned(edited, "1000"))
    take = elector.next_action(at(10))
    assert isinstance(take, Write) and take.kind == "acquire"
    assert take.record.fencing_token == 1001  # 1 + the version replaced: above every honest token


def test_a_token_read_near_the_maximum_is_honoured_and_the_next_one_stays_a_bigint() -> None:
    elector = Elector("b", CONFIG)
    near = LeaseRecord.from_lease(lease(str(MAX_FENCING_TOKEN - 1), version=None))
    elector.observe(at(0), Versioned(near, "opaque-1"))
    take = elector.next_action(at(10))
    assert isinstance(take, Write) and take.record.fencing_token == MAX_FENCING_TOKEN


def test_no_term_when_no_bigint_token_is_left() -> None:
    # Only reachable in a store whose versions are not integers, with the annotation edited to the maximum.
    elector = Elector("b", CONFIG)
    edited = LeaseRecord.from_lease(lease(str(MAX_FENCING_TOKEN), version=None))
    assert edited.fencing_token == MAX_FENCING_TOKEN
    elector.observe(at(0), Versioned(edited, "opaque-1"))
    held = elector.next_action(at(10))
    assert isinstance(held, Wait) and "no fencing token left" in held.reason
    assert held.until_mono > 10


def test_a_resource_version_beyond_int64_raises_nothing() -> None:
    elector = Elector("b", CONFIG)
    elector.observe(at(0), Versioned(LeaseRecord.from_lease(lease("7", version=None)), "9" * 30))
    take = elector.next_action(at(10))
    assert isinstance(take, Write) and take.record.fencing_token == 8


async def test_the_backend_warns_once_per_ignored_value(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lease_sidecar")
    async with ApiClient() as client:
        backend = LeaseLockBackend(client, "ns", "work")
        for version in ("1000", "1001", "1002"):  # the holder renews; the edit stays
            stored = backend._remember(lease(str(2**63), version))
            assert stored.record.fencing_token is None and stored.record.holder == "a"
        backend._remember(lease("1002", "1003"))  # its own token written back: honoured again
        backend._remember(lease("junk", "1004"))
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "fencing_token_ignored"]
    assert [(r.annotation, r.resource_version) for r in warnings] == [(str(2**63), "1000"), ("junk", "1004")]
    assert all(r.lease == "ns/work" and r.why for r in warnings)
