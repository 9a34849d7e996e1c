from __future__ import annotations

import pytest

from sidecar.core.config import ConfigError, ElectionConfig, parse_duration_s


@pytest.mark.parametrize(("text", "seconds"), [("4", 4), ("0.5", 0.5), ("500ms", 0.5), ("5s", 5), ("1m", 60),
                                               (2, 2)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "5x", "nan", True, "1e400"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration_s(text, "--x")


def test_defaults_are_the_seeds() -> None:
    config = ElectionConfig()
    assert (config.heartbeat_interval_s, config.heartbeat_ttl_s, config.lease_ttl_s,
            config.renewal_interval_s, config.failover_timeout_s) == (5, 15, 30, 10, 45)
    assert config.renewal_interval_s < config.renew_deadline < config.lease_ttl_s


def test_derived_deadline_makes_ttl_and_interval_alone_valid() -> None:
    config = ElectionConfig(lease_ttl_s=4, renewal_interval_s=1, failover_timeout_s=45)
    assert 1 < config.renew_deadline < 4 and config.request_timeout > 0


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"heartbeat_ttl_s": 5}, "--heartbeat-ttl"),
    ({"lease_ttl_s": 10}, "--leader-lease-ttl"),
    ({"failover_timeout_s": 30}, "--failover-timeout"),
    ({"renew_deadline_s": 30}, "--leader-renew-deadline"),
    ({"renew_deadline_s": 5}, "--leader-renew-deadline"),
    ({"lease_ttl_s": 12.5}, "--leader-lease-ttl"),
])
def test_rules_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ElectionConfig(**kwargs)
    assert caught.value.field == field and "\n" not in str(caught.value)
