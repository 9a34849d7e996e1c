"""Ticks from a shared anchor, the cron parser, and catching up as APScheduler/Celery users expect."""

from __future__ import annotations

import unittest
from datetime import UTC, datetime, timedelta

from lease_sidecar_client.ticks import Cron, CronError, Interval, due_ticks, missed_ticks, plan_catch_up

ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return ANCHOR + timedelta(seconds=seconds)


class IntervalTicks(unittest.TestCase):
    def test_ticks_come_from_the_anchor_not_from_when_one_asks(self) -> None:
        every_10 = Interval(10, ANCHOR)
        self.assertEqual(every_10.next_after(at(-100)), ANCHOR)
        self.assertEqual(every_10.next_after(at(0)), at(10))
        self.assertEqual(every_10.next_after(at(13.7)), at(20))
        self.assertEqual(list(due_ticks(every_10, at(5), at(30))), [at(10), at(20), at(30)])
        # Two leaders starting at different moments compute the same ticks.
        self.assertEqual(list(due_ticks(every_10, at(3), at(41)))[1:], list(due_ticks(every_10, at(11), at(41))))

    def test_fractional_intervals_land_on_whole_microseconds(self) -> None:
        third = Interval(1 / 3, ANCHOR)
        ticks = list(due_ticks(third, at(0), at(1)))
        self.assertEqual(len(ticks), 3)
        self.assertEqual(ticks[-1], at(1))

    def test_bad_intervals_are_refused(self) -> None:
        for every in (0, -1, float("inf"), float("nan")):
            with self.assertRaises(ValueError):
                Interval(every, ANCHOR)
        with self.assertRaises(ValueError):
            Interval(1, datetime(2026, 1, 1))  # naive: a different instant in each zone


class CronTicks(unittest.TestCase):
    def test_fields_ranges_steps_names(self) -> None:
        self.assertEqual(Cron("*/15 * * * *").next_after(at(60)), at(15 * 60))
        self.assertEqual(Cron("5/20 * * * *").next_after(at(0)), at(5 * 60))
        self.assertEqual(Cron("0 9-17/4 * * *").next_after(at(0)), at(9 * 3600))
        self.assertEqual(Cron("0 0 * feb *").next_after(at(0)), datetime(2026, 2, 1, tzinfo=UTC))
        # 2026-01-01 is a Thursday; 7 and 0 are both Sunday.
        self.assertEqual(Cron("0 0 * * sun").next_after(at(0)), datetime(2026, 1, 4, tzinfo=UTC))
        self.assertEqual(Cron("0 0 * * 7").next_after(at(0)), datetime(2026, 1, 4, tzinfo=UTC))
        self.assertEqual(Cron("@hourly").next_after(at(1)), at(3600))

    def test_both_day_fields_restricted_means_either(self) -> None:
        # Vixie cron: the 15th, or any Monday. The first Monday of 2026 is the 5th.
        self.assertEqual(Cron("0 0 15 * mon").next_after(at(0)), datetime(2026, 1, 5, tzinfo=UTC))

    def test_time_zones_and_a_skipped_wall_time(self) -> None:
        berlin = Cron("30 2 * * *", tz="Europe/Berlin")
        self.assertEqual(berlin.next_after(at(0)), datetime(2026, 1, 1, 1, 30, tzinfo=UTC))
        # 2026-03-29 02:30 does not exist in Berlin (clocks jump 02:00 -> 03:00): skipped.
        self.assertEqual(berlin.next_after(datetime(2026, 3, 28, 12, tzinfo=UTC)),
                         datetime(2026, 3, 30, 0, 30, tzinfo=UTC))

    def test_a_date_that_never_comes_ends_the_ticks(self) -> None:
        self.assertIsNone(Cron("0 0 30 2 *").next_after(at(0)))

    def test_malformed_expressions_name_the_field(self) -> None:
        for expression, field in (("* * * *", "5 fields"), ("61 * * * *", "minute"), ("* 24 * * *", "hour"),
                                  ("* * 0 * *", "day of month"), ("* * * 13 *", "month"),
                                  ("* * * * 8", "day of week"), ("*/0 * * * *", "step"), ("5-1 * * * *", "backwards"),
                                  ("x * * * *", "minute")):
            with self.assertRaises(CronError) as raised:
                Cron(expression)
            self.assertIn(field, str(raised.exception))


class CatchingUp(unittest.TestCase):
    every_10 = Interval(10, ANCHOR)

    def test_everything_missed_runs_without_grace_or_coalescing(self) -> None:
        self.assertEqual(missed_ticks(self.every_10, at(20), at(65), coalesce=False), [at(30), at(40), at(50), at(60)])

    def test_coalescing_runs_the_latest_once(self) -> None:
        plan = plan_catch_up(self.every_10, at(20), at(65))
        self.assertEqual((plan.run, plan.coalesced), ([at(60)], [at(30), at(40), at(50)]))

    def test_misfire_grace_drops_ticks_too_late(self) -> None:
        plan = plan_catch_up(self.every_10, at(20), at(65), misfire_grace_s=16, coalesce=False)
        self.assertEqual(plan.run, [at(50), at(60)])
        self.assertTrue(plan.too_late and max(plan.too_late) == at(40))

    def test_a_long_outage_is_not_enumerated_tick_by_tick(self) -> None:
        every_ms = Interval(0.001, ANCHOR)
        plan = plan_catch_up(every_ms, at(0), at(86_400 * 30), misfire_grace_s=0.0035, coalesce=False)
        self.assertEqual(plan.run, [at(86_400 * 30 - 0.003), at(86_400 * 30 - 0.002), at(86_400 * 30 - 0.001),
                                    at(86_400 * 30)])

    def test_a_job_never_claimed_does_not_replay_its_past(self) -> None:
        self.assertEqual(missed_ticks(self.every_10, None, at(65)), [])
        self.assertEqual(missed_ticks(self.every_10, None, at(60)), [at(60)])
        self.assertEqual(missed_ticks(self.every_10, None, at(65), misfire_grace_s=10, coalesce=False), [at(60)])

    def test_nothing_due_before_the_next_tick(self) -> None:
        self.assertEqual(missed_ticks(self.every_10, at(60), at(69.9)), [])


if __name__ == "__main__":
    unittest.main()
