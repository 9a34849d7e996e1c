"""The Lease record as client-go writes it, and its MicroTime format.

Interop contract: `holderIdentity`, `leaseDurationSeconds`, `acquireTime`, `renewTime` (MicroTime:
UTC, exactly six fractional digits, `Z`), `leaseTransitions`. A release is an empty holder with
`leaseDurationSeconds: 1`. The fencing token lives in an annotation that client-go preserves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

FENCING_ANNOTATION = "lease-sidecar.io/fencing-token"
SUCCESSOR_ANNOTATION = "lease-sidecar.io/successor"
"""On a released record: the identity the leader released *to* (see core/succession.py)."""
HANDOVER_ANNOTATION = "lease-sidecar.io/handover-to"
"""A request to the holder (`lease-sidecar handover`): release to this identity."""
MANAGED_ANNOTATIONS = (FENCING_ANNOTATION, SUCCESSOR_ANNOTATION, HANDOVER_ANNOTATION)
"""Annotations every write sets from the record: absent from the record means removed."""
RELEASED_DURATION_S = 1  # what client-go writes on release
MAX_FENCING_TOKEN = 2**63 - 1
"""int64's and PostgreSQL bigint's largest value: the fences take tokens as bigint (election.py L2)."""
TOKEN_ABOVE_VERSION_SLACK = 2**40
"""How far above its record's resourceVersion a token is still honoured (election.py L2): no token
the election issues exceeds it at all, but one remembered from before an etcd restore may."""

_DECIMAL = re.compile(r"[0-9]{1,19}")

_MICROTIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def format_microtime(moment: datetime) -> str:
    """RFC 3339 in UTC with exactly six fractional digits, as metav1.MicroTime marshals."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_microtime(text: object) -> datetime | None:
    """Lenient: any RFC 3339 form (0-9 fractional digits, Z or offset); None if unparseable."""
    if not isinstance(text, str):
        return None
    match = _MICROTIME.match(text)
    if not match:
        return None
    base, fraction, zone = match.groups()
    micros = (fraction or "0")[:6].ljust(6, "0")
    try:
        return datetime.fromisoformat(f"{base}.{micros}{'+00:00' if zone == 'Z' else zone}").astimezone(UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class LeaseRecord:
    """What the election reads and writes. Times are informational: expiry is never judged by them."""

    holder: str = ""
    """`holderIdentity`; empty means free (released or never held)."""
    duration_s: int | None = None
    """`leaseDurationSeconds`: how long, after a reader *observes* a change, the holder keeps it.
    None when the field is missing (or not a positive integer): unknown, never "zero seconds" (a
    hand edit may remove it; the Elector then counts its own lease TTL)."""
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0
    """`leaseTransitions`: incremented whenever the holder changes, as client-go does."""
    fencing_token: int | None = None
    """Our annotation; client-go leaves it alone, so it only ever grows."""
    successor: str = ""
    """Our annotation on a release: only this identity may take the lease for a short window."""
    handover_to: str = ""
    """Our annotation: someone asked the holder to release to this identity."""
    preferred_holder: str = ""
    """`spec.preferredHolder` (kept by the apiserver only with the CoordinatedLeaderElection gate)."""
    strategy: str = ""
    """`spec.strategy`, kept as found (client-go's coordinated mode)."""

    @property
    def is_free(self) -> bool:
        return not self.holder

    def same_observation(self, other: LeaseRecord | None) -> bool:
        """client-go's rule: any change of the spec restarts the observed-expiry clock."""
        return other is not None and self == other

    def with_token(self, token: int) -> LeaseRecord:
        return replace(self, fencing_token=token)

    # ------------------------------------------------------------ wire format

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> LeaseRecord:
        """Tolerates odd contents: missing fields, wrong types, negative numbers."""
        spec = lease.get("spec") or {}
        annotations = (lease.get("metadata") or {}).get("annotations") or {}
        return cls(
            holder=spec.get("holderIdentity") if isinstance(spec.get("holderIdentity"), str) else "",
            duration_s=_positive_int(spec.get("leaseDurationSeconds")) or None,
            acquire_time=parse_microtime(spec.get("acquireTime")),
            renew_time=parse_microtime(spec.get("renewTime")),
            transitions=_positive_int(spec.get("leaseTransitions")),
            fencing_token=parse_fencing_token(annotations.get(FENCING_ANNOTATION),
                                              (lease.get("metadata") or {}).get("resourceVersion"))[0],
            successor=_text(annotations.get(SUCCESSOR_ANNOTATION)),
            handover_to=_text(annotations.get(HANDOVER_ANNOTATION)),
            preferred_holder=_text(spec.get("preferredHolder")),
            strategy=_text(spec.get("strategy")),
        )

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"holderIdentity": self.holder}
        if self.duration_s is not None:
            spec["leaseDurationSeconds"] = self.duration_s
        spec["leaseTransitions"] = self.transitions
        if self.acquire_time is not None:
            spec["acquireTime"] = format_microtime(self.acquire_time)
        if self.renew_time is not None:
            spec["renewTime"] = format_microtime(self.renew_time)
        if self.preferred_holder:
            spec["preferredHolder"] = self.preferred_holder
        if self.strategy:
            spec["strategy"] = self.strategy
        return spec

    def annotations(self) -> dict[str, str]:
        found = {FENCING_ANNOTATION: "" if self.fencing_token is None else str(self.fencing_token),
                 SUCCESSOR_ANNOTATION: self.successor, HANDOVER_ANNOTATION: self.handover_to}
        return {key: value for key, value in found.items() if value}


def _positive_int(value: object) -> int:
    """The value if a positive integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def parse_fencing_token(value: object, resource_version: object = None) -> tuple[int | None, str]:
    """The fencing-token annotation as election.py L2 honours it: (token, "") or, for a value it
    ignores, (None, why); (None, "") when there is none. Honoured: a decimal integer from 0 to
    MAX_FENCING_TOKEN and, when the record's resourceVersion is a decimal integer V, at most
    V + TOKEN_ABOVE_VERSION_SLACK. Anything else is a hand edit (or garbage): the record then
    reads as one without a token, like client-go's."""
    if value is None or value == "":
        return None, ""
    text = str(value)
    if not _DECIMAL.fullmatch(text):
        return None, "not a decimal integer of at most 19 digits"
    token = int(text)
    if token > MAX_FENCING_TOKEN:
        return None, "above 2^63-1, the largest a bigint fence takes"
    version = str(resource_version) if resource_version is not None else ""
    if _DECIMAL.fullmatch(version) and token > int(version) + TOKEN_ABOVE_VERSION_SLACK:
        return None, f"more than 2^40 above the Lease's resourceVersion {version}, which no term writes"
    return token, ""
