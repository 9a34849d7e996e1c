"""The scheduler integrations' pure parts: ticks every replica agrees on, what is refused, the claim
a Celery message carries, and wrong configuration (no server needed)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from celery import Celery
from celery.schedules import crontab
from celery.schedules import schedule as every
from lease_sidecar_client.apscheduler import IntervalSchedule, TriggerSchedule, UnanchoredSchedule
from lease_sidecar_client.celery import Claim, CrontabSchedule, LeaderScheduler, claim_of, schedule_of
from lease_sidecar_client.ticks import Interval, due_ticks

ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)


def test_an_interval_trigger_with_a_start_date_gives_the_same_ticks_however_reached() -> None:
    schedule = IntervalSchedule(IntervalTrigger(seconds=0.7, start_date=ANCHOR))
    now = datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=UTC)
    walked = list(due_ticks(schedule, now, now + timedelta(seconds=30)))
    # APScheduler's own way: previous fire time plus float seconds, each then normalised.
    fire = schedule.trigger.get_next_fire_time(None, now)
    own = []
    while fire <= now + timedelta(seconds=30):
        own.append(schedule.normalize(fire))
        fire = schedule.trigger.get_next_fire_time(fire, now)
    assert walked == own
    assert all((tick - ANCHOR) % timedelta(microseconds=700_000) == timedelta(0) for tick in walked)
    assert schedule.latest_at_or_before(walked[3]) == walked[3]


def test_cron_trigger_ticks_are_whole_seconds_after_the_moment() -> None:
    schedule = TriggerSchedule(CronTrigger(minute="*/5", timezone="Europe/Berlin"))
    moment = datetime(2026, 3, 29, 0, 58, 30, tzinfo=UTC)  # across the DST change in Berlin
    ticks = list(itertools.islice(due_ticks(schedule, moment, moment + timedelta(hours=2)), 30))
    assert ticks[0] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert all(b - a == timedelta(minutes=5) for a, b in itertools.pairwise(ticks))


def test_jitter_and_unknown_triggers_are_refused() -> None:
    with pytest.raises(UnanchoredSchedule, match="jitter"):
        TriggerSchedule(IntervalTrigger(seconds=5, start_date=ANCHOR, jitter=2))
    with pytest.raises(UnanchoredSchedule, match="only"):
        TriggerSchedule(SimpleNamespace(jitter=None))


@pytest.mark.parametrize("spec", [dict(minute="*/15"), dict(minute=0, hour="*/3"), dict(minute=30, hour=2,
                                  day_of_week="mon-fri"), dict(minute=0, hour=0, day_of_month="1,15")])
def test_celery_crontab_ticks_match_celerys_own_reckoning(spec: dict[str, object]) -> None:
    app = Celery(set_as_current=False)
    app.conf.timezone = "Europe/Berlin"
    clock = [datetime(2026, 11, 30, 21, 7, 13, tzinfo=UTC)]
    cron = crontab(app=app, nowfun=lambda: clock[0], **spec)
    schedule = CrontabSchedule(cron)
    previous = clock[0]
    for _ in range(20):
        tick = schedule.next_after(previous)
        assert tick is not None and tick > previous
        local = tick.astimezone(ZoneInfo("Europe/Berlin"))
        assert local.minute in cron.minute and local.hour in cron.hour
        assert local.day in cron.day_of_month and local.isoweekday() % 7 in cron.day_of_week
        # Celery's own reckoning, last run at the previous tick: not due a second before, due at it.
        clock[0] = tick - timedelta(seconds=1)
        assert not cron.is_due(previous)[0]
        clock[0] = tick
        assert cron.is_due(previous)[0]
        previous = tick


def test_a_celery_interval_counts_from_the_anchor() -> None:
    schedule = schedule_of(every(30.0), ANCHOR)
    assert schedule == Interval(every_s=30.0, anchor=ANCHOR)
    with pytest.raises(ValueError, match="only crontab and schedule"):
        schedule_of(object(), ANCHOR)


def test_the_claim_travels_in_headers_and_back() -> None:
    claim = Claim("ns/lease", "report", datetime(2026, 12, 3, 10, 0, tzinfo=UTC), 98765432101)
    request = SimpleNamespace(headers=None, **claim.headers())  # how Celery 5 hands custom headers to a task
    assert claim_of(request) == claim
    assert claim_of(SimpleNamespace(headers=claim.headers())) == claim
    assert claim_of(SimpleNamespace(headers={"lease_job": "report"})) is None


def test_beat_without_a_ledger_stops_with_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEASE_SIDECAR_DSN", raising=False)
    app = Celery(set_as_current=False)
    with pytest.raises(SystemExit) as stopped:
        LeaderScheduler(app, lazy=True)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == ("lease-sidecar: lease_sidecar_dsn: required (set "
                                               "app.conf.lease_sidecar_dsn or LEASE_SIDECAR_DSN)")
    app.conf.lease_sidecar_dsn = "postgresql://x"
    app.conf.lease_sidecar_misfire_grace_s = "soon"
    with pytest.raises(SystemExit):
        LeaderScheduler(app, lazy=True)
    assert "lease_sidecar_misfire_grace_s: must be a number" in capsys.readouterr().err
