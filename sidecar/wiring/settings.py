"""`lease-sidecar run` settings: flags, each also `LEASE_SIDECAR_<FLAG>` (pydantic-settings).

Precedence: flag, then environment, then default. Errors are one line naming the flag.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import NoReturn

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sidecar import __version__
from sidecar.core.config import ConfigError, ElectionConfig, parse_duration_s, split_address
from sidecar.core.liveness import check_app_ttl
from sidecar.wiring import scheduling

IN_CLUSTER_DIR = Path(os.environ.get("LEASE_SIDECAR_IN_CLUSTER_DIR", "/var/run/secrets/kubernetes.io/serviceaccount"))
"""Where a pod finds its ServiceAccount token, CA and namespace (overridable for tests)."""

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ZERO = re.compile(r"(0+(\.0*)?|\.0+)(ms|s|m|h)?")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DURATIONS = ("leader_lease_ttl", "leader_renewal_interval", "leader_renew_deadline", "heartbeat_interval",
              "heartbeat_ttl", "failover_timeout", "api_timeout", "app_heartbeat_ttl", "lock_max_ttl",
              "lock_gc_after")


class RunSettings(BaseSettings):
    """Every field is a flag `--field-name` and an env var `LEASE_SIDECAR_FIELD_NAME`."""

    model_config = SettingsConfigDict(env_prefix="LEASE_SIDECAR_", extra="ignore", frozen=True)

    lease_name: str = Field(default="", description="Name of the coordination.k8s.io/v1 Lease (required).")
    namespace: str = Field(default="", description="Namespace of the Lease. Default: POD_NAMESPACE, then the "
                                                   "in-cluster namespace file.")
    identity: str = Field(default="", description="holderIdentity of this candidate; unique per replica. "
                                                  "Default: POD_NAME, then the hostname.")
    kubeconfig: str = Field(default="", description="Kubeconfig path. Default: in-cluster when "
                                                    "KUBERNETES_SERVICE_HOST is set, then KUBECONFIG or "
                                                    "~/.kube/config.")
    http_address: str = Field(default="127.0.0.1:4040", description="Local API address (keep it on loopback).")
    metrics_address: str = Field(default="0.0.0.0:9464", description="Prometheus /metrics address; empty "
                                                                     "disables it.")
    role_dir: str = Field(default="/var/run/lease-sidecar", description="Directory for `role` and "
                                                                         "`status.json`; empty disables them.")
    leader_lease_ttl: float = Field(default=30.0, description="Lease duration (whole seconds).")
    leader_renewal_interval: float = Field(default=10.0, description="Renew this often while leading.")
    leader_renew_deadline: float | None = Field(default=None, description="Step down this long after the "
                                                "start of the last successful renewal. Default: midway "
                                                "between renewal interval and TTL.")
    heartbeat_interval: float = Field(default=5.0, description="Refresh role files and status this often.")
    heartbeat_ttl: float = Field(default=15.0, description="Consumers distrust role files older than this.")
    failover_timeout: float = Field(default=45.0, description="Each watch request lasts this long before it "
                                                              "is resumed; must exceed the TTL.")
    api_timeout: float | None = Field(default=None, description="Timeout of each API call. Default: "
                                      "min(5s, renew deadline - renewal interval).")
    app_heartbeat_ttl: float | None = Field(default=None, description="Lead only while the app heartbeats "
                                            "(POST /heartbeat, or --app-health-url passes) at least this often: "
                                            "campaign after the first, step down (standby, then release) when "
                                            "one is missed. Unset: the app is not consulted.")
    app_health_url: str = Field(default="", description="http://127.0.0.1:PORT/path probed every heartbeat "
                                "interval; a 2xx answer counts as an app heartbeat. Needs --app-heartbeat-ttl.")
    members: bool = Field(default=False, description="Keep a member Lease <lease>-member-<identity> (role, app "
                                                     "info), renewed every heartbeat interval; GET /members "
                                                     "lists every candidate.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    cpu_slice: float = Field(default=scheduling.SLICE_S, description="CPU slice asked of the kernel for "
                                    "the event loop (Linux 6.12+ EEVDF: a woken sidecar preempts sooner; no "
                                    "more CPU). 0 keeps the kernel's; else 0.1ms to 100ms.")
    leader_service: str = Field(default="", description="Name of a selector-less Service in the Lease's "
                                "namespace: the leader writes its EndpointSlice (same name) holding only its "
                                "own pod IP (--pod-ip). Empty disables it.")
    pod_ip: str = Field(default="", description="This pod's IP for --leader-service. Default: POD_IP "
                                                "(Downward API status.podIP).")
    label_pod: bool = Field(default=False, description="Label this pod (POD_NAME) lease-sidecar.io/role="
                                                       "leader|standby: a hint, stale after a crash.")
    handover_drain_timeout: float = Field(default=0.0, description="On a graceful release (SIGTERM, a "
                                          "hand-over) keep leading, with `draining: true` in /leader, until the app "
                                          "resigns (POST /leader/resign) or this long has passed, then release. 0: "
                                          "off. It plus the renew deadline must fit the pod's "
                                          "terminationGracePeriodSeconds (not checked here).")
    events: bool = Field(default=False, description="Record events.k8s.io/v1 Events on the Lease (became "
                                                    "leader, lost, released, hand-over requested), rate-limited.")
    locks: bool = Field(default=False, description="Keyed locks for the app on the local API: POST/PUT/DELETE/GET "
                        "/locks/{key} (docs/locks.md), each key a Lease named from --lock-prefix.")
    lock_prefix: str = Field(default="", description="Start of every lock Lease's name. Default: <lease-name>-lock-.")
    lock_max_ttl: float = Field(default=30.0, description="Longest lock ttl (whole seconds): written as every lock "
                                "Lease's duration; others wait this long for a lock whose pod died.")
    lock_max_keys: int = Field(default=100, description="Keys this pod may hold or be acquiring at once (429 beyond).")
    lock_rate: float = Field(default=50.0, description="Lock requests per second per pod, on average (429 with "
                             "Retry-After beyond; bursts of twice as many).")
    lock_gc_after: float = Field(default=600.0, description="Delete a lock Lease that has shown a release this long "
                                 "(its tokens never go back: docs/locks.md).")

    @field_validator(*_DURATIONS, mode="before")
    @classmethod
    def _duration(cls, value: object, info: object) -> float | None:
        if value is None or value == "":
            return None
        name = getattr(info, "field_name", "duration")
        return parse_duration_s(value, "--" + name.replace("_", "-"))

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"must be debug, info, warning or error; got {value!r}")
        return value.lower()

    @field_validator("cpu_slice", mode="before")
    @classmethod
    def _slice(cls, value: object) -> float:
        if value is None or value == "":
            return scheduling.SLICE_S
        if _ZERO.fullmatch(str(value).strip()):
            return 0.0
        seconds = parse_duration_s(value, "--cpu-slice")
        if not scheduling.MIN_SLICE_S <= seconds <= scheduling.MAX_SLICE_S:
            raise ValueError("must be 0 (the kernel's own) or from 0.1ms to 100ms")
        return seconds

    @field_validator("handover_drain_timeout", mode="before")
    @classmethod
    def _drain(cls, value: object) -> float:
        if value is None or value == "":
            return 0.0
        text = str(value).strip()
        if _ZERO.fullmatch(text):
            return 0.0
        if text.startswith("-"):
            raise ValueError(f"must be 0 (off) or a positive duration, not negative; got {text[:40]!r}")
        return parse_duration_s(value, "--handover-drain-timeout")

    def election_config(self) -> ElectionConfig:
        return ElectionConfig(
            lease_ttl_s=self.leader_lease_ttl, renewal_interval_s=self.leader_renewal_interval,
            renew_deadline_s=self.leader_renew_deadline, heartbeat_interval_s=self.heartbeat_interval,
            heartbeat_ttl_s=self.heartbeat_ttl, failover_timeout_s=self.failover_timeout,
            request_timeout_s=self.api_timeout, handover_drain_timeout_s=self.handover_drain_timeout)

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        if os.environ.get("POD_NAMESPACE"):
            return os.environ["POD_NAMESPACE"]
        try:
            return (IN_CLUSTER_DIR / "namespace").read_text().strip()
        except OSError:
            raise ConfigError("--namespace", "not set, and neither POD_NAMESPACE nor the in-cluster "
                                             "namespace file is available") from None

    def resolved_identity(self) -> str:
        return self.identity or os.environ.get("POD_NAME") or socket.gethostname()

    def resolved_pod_ip(self) -> str:
        return self.pod_ip or os.environ.get("POD_IP", "")


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes get one line and exit 2, like every other configuration error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="lease-sidecar", description="Leader election for any pod, over a "
                                     "coordination.k8s.io/v1 Lease. The app asks GET http://127.0.0.1:4040/leader.")
    parser.add_argument("--version", action="version", version=f"lease-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    run = commands.add_parser("run", help="take part in the election and publish the role",
                              description="Durations take seconds (4, 0.5) or 500ms / 5s / 1m. Each flag is "
                                          "also an environment variable LEASE_SIDECAR_<FLAG>.")
    for name, field in RunSettings.model_fields.items():
        default = field.default if field.default not in (None, "") else "unset"
        # A switch works bare (`--events`) or with a value (`--events=false`).
        switch = {"nargs": "?", "const": "true", "metavar": "BOOL"} if field.annotation is bool else {}
        run.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **switch,
                         help=f"{field.description} (default: {default}; env LEASE_SIDECAR_{name.upper()})")
    handover = commands.add_parser(
        "handover", help="ask a lease's leader to hand over to a named successor",
        description="Writes the request into the Lease (annotation lease-sidecar.io/handover-to, and "
                    "spec.preferredHolder only if the Lease has a spec.strategy); the leader releases to that "
                    "successor, and only it may take the lease for a short window. Waits until it holds "
                    "the lease. Also a kubectl plugin: kubectl lease-handover --lease NAME --to IDENTITY.")
    handover.add_argument("--lease", required=True, help="name of the Lease")
    handover.add_argument("--to", required=True, dest="successor", metavar="IDENTITY",
                          help="holderIdentity of the successor (with the chart: its pod name)")
    handover.add_argument("--namespace", "-n", default="", help="namespace of the Lease (default: the "
                          "kubeconfig context's, then POD_NAMESPACE)")
    handover.add_argument("--kubeconfig", default="", help="kubeconfig path (default: KUBECONFIG, ~/.kube/config, "
                          "or in-cluster)")
    handover.add_argument("--timeout", default="10s", help="how long to wait for the successor to hold the "
                          "lease (default 10s; 0 does not wait)")
    return parser


def load_settings(args: argparse.Namespace) -> tuple[RunSettings, ElectionConfig]:
    """Raises ConfigError with a one-line message naming the flag."""
    given = {name: value for name, value in vars(args).items()
             if name in RunSettings.model_fields and value is not None}
    try:
        settings = RunSettings(**given)
    except ValidationError as error:
        first = error.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        if message.startswith(flag + ": "):
            message = message[len(flag) + 2:]
        raise ConfigError(flag, message) from None
    if not settings.lease_name:
        raise ConfigError("--lease-name", "required (or LEASE_SIDECAR_LEASE_NAME)")
    if len(settings.lease_name) > 253 or not _DNS_SUBDOMAIN.match(settings.lease_name):
        raise ConfigError("--lease-name", "must be a DNS subdomain (lowercase letters, digits, '-' and '.', "
                                          f"starting and ending alphanumeric, at most 253 characters); "
                                          f"got {settings.lease_name[:60]!r}")
    split_address(settings.http_address, "--http-address")
    check_app_ttl(settings.app_heartbeat_ttl, settings.heartbeat_interval, settings.app_health_url)
    from sidecar.engine.app_link import check_probe_ttl  # here: aiohttp only for `run`, not for --help

    check_probe_ttl(settings.app_heartbeat_ttl, settings.heartbeat_interval, settings.app_health_url)
    check_routing(settings)
    from sidecar.wiring.lock_parts import check_lock_settings  # here: aiohttp only for `run`

    check_lock_settings(settings)
    if settings.metrics_address:
        split_address(settings.metrics_address, "--metrics-address")
    return settings, settings.election_config()


def check_routing(settings: RunSettings) -> None:
    """--leader-service and --label-pod: what they need, checked before anything starts."""
    if settings.leader_service:
        if len(settings.leader_service) > 63 or not _DNS_LABEL.match(settings.leader_service):
            raise ConfigError("--leader-service", "must be a Service name (lowercase letters, digits and '-', "
                                                  "starting with a letter, at most 63 characters); "
                                                  f"got {settings.leader_service[:70]!r}")
        pod_ip = settings.resolved_pod_ip()
        if not pod_ip:
            raise ConfigError("--pod-ip", "required with --leader-service (or POD_IP from the Downward API "
                                          "status.podIP)")
        try:
            address = ipaddress.ip_address(pod_ip)
        except ValueError:
            raise ConfigError("--pod-ip", f"must be an IP address; got {pod_ip[:60]!r}") from None
        if address.is_loopback or address.is_unspecified or address.is_link_local or address.is_multicast:
            # The apiserver refuses such an endpoint (422) at every write: say so once, at start.
            raise ConfigError("--pod-ip", f"must be the pod's own routable address, not loopback, unspecified, "
                                          f"link-local or multicast; got {pod_ip[:60]!r}")
    elif settings.pod_ip:
        raise ConfigError("--pod-ip", "only used with --leader-service")
    if settings.label_pod and not os.environ.get("POD_NAME"):
        raise ConfigError("--label-pod", "needs POD_NAME (Downward API metadata.name): the pod to label")
