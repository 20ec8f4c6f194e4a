"""The mission's schedule: cron in a time zone, one fire per scheduled time, catch-up, DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

import cronqueue.mission.schedule as schedule_module
from cronqueue.mission.schedule import Decision, Schedule, decide, describe, minute_floor

MINUTE = timedelta(minutes=1)
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local_day(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[local midnight, next local midnight) as UTC instants (23 or 25 hours on DST days)."""
    start = datetime.combine(day, time(), tz)
    end = datetime.combine(day + timedelta(days=1), time(), tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def croniter_times(expr: str, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """croniter's own scheduled times in [start, end) (UTC), computed on tz-aware datetimes."""
    it = croniter(expr, start.astimezone(tz) - timedelta(seconds=1))
    out: list[datetime] = []
    while True:
        moment = it.get_next(datetime)
        assert moment.tzinfo is not None
        moment = moment.astimezone(UTC)
        if moment >= end:
            return out
        out.append(moment)


def walk(schedule: Schedule, start: datetime, end: datetime, *, second: int = 0,
         again_second: int | None = None) -> list[datetime | str]:
    """Tick every minute in [start, end) at ``second``, feeding back ``last = fire``.
    With ``again_second``, each minute that fired is ticked a second time (same minute).
    Returns the fired times; anything odd on the way (a fire of another minute, a second
    fire in one minute, a missed or skipped time while ticking every minute) is appended
    as a string after them, so that one list comparison shows everything."""
    fired: list[datetime] = []
    odd: list[str] = []
    last: datetime | None = None
    moment = start
    while moment < end:
        decision = decide(schedule, last, moment.replace(second=second), catch_up="latest",
                          window=3600)
        if decision.missed or decision.skipped is not None:
            odd.append(f"{moment:%H:%M}Z: {decision}")
        if decision.fire is not None:
            if decision.fire != moment:
                odd.append(f"{moment:%H:%M}Z fired another minute: {decision}")
            fired.append(decision.fire)
            last = decision.fire
            if again_second is not None:
                again = decide(schedule, last, moment.replace(second=again_second),
                               catch_up="latest", window=3600)
                if again.due or again.missed:
                    odd.append(f"{moment:%H:%M}Z again at :{again_second}: {again}")
        moment += MINUTE
    return [*fired, *odd]


# -- minute_floor ------------------------------------------------------------------------------


def test_minute_floor_is_utc_and_drops_seconds() -> None:
    moment = datetime(2026, 11, 23, 10, 23, 59, 999_999, tzinfo=BERLIN)
    floor = minute_floor(moment)
    assert floor == utc(2026, 11, 23, 9, 23)
    assert floor.utcoffset() == timedelta(0)
    assert (floor.second, floor.microsecond) == (0, 0)


def test_minute_floor_of_a_whole_minute_is_itself() -> None:
    assert minute_floor(utc(2026, 11, 23, 10, 23)) == utc(2026, 11, 23, 10, 23)


# -- a simulated day: the fired times are exactly croniter's --------------------------------

DAY = date(2026, 11, 23)  # a Monday, no DST change anywhere near
EXPRESSIONS = ("*/7 * * * *", "0 3 * * *", "15 */4 * * *", "30 9-17 * * 1-5")


@pytest.mark.parametrize("expr", EXPRESSIONS)
@pytest.mark.parametrize("tzname", ["UTC", "Europe/Berlin"])
@pytest.mark.parametrize(("second", "again_second"), [(0, 59), (59, 30)])
def test_a_day_of_ticks_fires_exactly_the_croniter_times(expr: str, tzname: str, second: int,
                                                          again_second: int) -> None:
    tz = ZoneInfo(tzname)
    start, end = local_day(DAY, tz)
    expected = croniter_times(expr, tz, start, end)
    assert expected, "the expression has times on that day"
    fired = walk(Schedule(expr, tz), start, end, second=second, again_second=again_second)
    assert fired == expected


def test_the_expected_times_really_are_in_local_time() -> None:
    """Guards the test above: 03:00 Berlin is 02:00Z in November."""
    start, end = local_day(DAY, BERLIN)
    assert croniter_times("0 3 * * *", BERLIN, start, end) == [utc(2026, 11, 23, 2, 0)]
    assert len(croniter_times("*/7 * * * *", BERLIN, start, end)) == 9 * 24


def test_weekday_entry_does_not_fire_on_a_sunday() -> None:
    schedule = Schedule("30 9-17 * * 1-5", BERLIN)
    sunday = date(2026, 11, 22)
    for hour in (9, 12, 17):
        moment = datetime.combine(sunday, time(hour, 30), BERLIN).astimezone(UTC)
        assert not decide(schedule, None, moment, catch_up="latest", window=3600).due
        monday = moment + timedelta(days=1)
        assert decide(schedule, None, monday, catch_up="latest", window=3600).fire == monday


def test_second_call_in_the_same_minute_does_not_fire_again() -> None:
    schedule = Schedule("*/5 * * * *", ZoneInfo("UTC"))
    first = decide(schedule, utc(2026, 11, 23, 10, 0), utc(2026, 11, 23, 10, 5, 0),
                   catch_up="latest", window=3600)
    assert first == Decision(utc(2026, 11, 23, 10, 5), 0)
    for second in (0, 1, 30, 59):
        again = decide(schedule, first.fire, utc(2026, 11, 23, 10, 5, second),
                       catch_up="latest", window=3600)
        assert not again.due
        assert again.missed == 0
        assert again.skipped is None


def test_tick_with_microseconds_and_other_offset_is_the_same_minute() -> None:
    schedule = Schedule("*/5 * * * *", ZoneInfo("UTC"))
    now = datetime(2026, 11, 23, 11, 5, 59, 999_999, tzinfo=BERLIN)  # 10:05:59.999999Z
    decision = decide(schedule, utc(2026, 11, 23, 10, 0), now, catch_up="skip", window=0)
    assert decision.fire == utc(2026, 11, 23, 10, 5)
    assert decision.fire.utcoffset() == timedelta(0)


# -- a brand-new entry -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["latest", "skip"])
def test_new_entry_fires_when_this_minute_is_scheduled(policy: str) -> None:
    schedule = Schedule("*/5 * * * *", ZoneInfo("UTC"))
    decision = decide(schedule, None, utc(2026, 11, 23, 10, 25, 42), catch_up=policy,
                      window=3600)
    assert decision == Decision(utc(2026, 11, 23, 10, 25), 0)


@pytest.mark.parametrize("policy", ["latest", "skip"])
def test_new_entry_never_fires_a_past_time(policy: str) -> None:
    schedule = Schedule("*/5 * * * *", ZoneInfo("UTC"))
    for minute in (21, 23, 24):  # 10:20 is past, and within any window
        decision = decide(schedule, None, utc(2026, 11, 23, 10, minute, 30), catch_up=policy,
                          window=86400)
        assert not decision.due
        assert decision.skipped is None
        assert decision.missed == 0


def test_new_daily_entry_waits_for_its_time() -> None:
    schedule = Schedule("0 3 * * *", BERLIN)
    assert not decide(schedule, None, utc(2026, 11, 23, 10, 0), catch_up="latest",
                      window=86400).due
    assert decide(schedule, None, utc(2026, 11, 24, 2, 0, 30), catch_up="latest",
                  window=86400).fire == utc(2026, 11, 24, 2, 0)


# -- catch-up ----------------------------------------------------------------------------------

LAST = utc(2026, 11, 23, 10, 0)
NOW = utc(2026, 11, 23, 10, 23, 17)
EVERY5 = Schedule("*/5 * * * *", ZoneInfo("UTC"))


def test_catch_up_latest_fires_the_most_recent_missed_time_once() -> None:
    decision = decide(EVERY5, LAST, NOW, catch_up="latest", window=3600)
    assert decision.fire == utc(2026, 11, 23, 10, 20)
    assert decision.missed == 3  # 10:05, 10:10, 10:15
    assert decision.skipped is None


def test_catch_up_never_replays_the_older_times() -> None:
    """After the catch-up fire, the following ticks do not fire 10:05/10:10/10:15."""
    first = decide(EVERY5, LAST, NOW, catch_up="latest", window=3600)
    assert first.fire is not None
    for moment in (NOW, NOW + timedelta(seconds=30), utc(2026, 11, 23, 10, 24, 59)):
        again = decide(EVERY5, first.fire, moment, catch_up="latest", window=3600)
        assert again == Decision(None, 0)
    assert decide(EVERY5, first.fire, utc(2026, 11, 23, 10, 25), catch_up="latest",
                  window=3600) == Decision(utc(2026, 11, 23, 10, 25), 0)


def test_catch_up_skip_does_not_fire_and_reports_the_skipped_time() -> None:
    decision = decide(EVERY5, LAST, NOW, catch_up="skip", window=3600)
    assert not decision.due
    assert decision.skipped == utc(2026, 11, 23, 10, 20)
    assert decision.missed == 4  # 10:05, 10:10, 10:15 and the skipped 10:20
    # The mission records the skipped time as the last one: nothing more until 10:25.
    assert decide(EVERY5, decision.skipped, utc(2026, 11, 23, 10, 24), catch_up="skip",
                  window=3600) == Decision(None, 0)
    assert decide(EVERY5, decision.skipped, utc(2026, 11, 23, 10, 25), catch_up="skip",
                  window=3600).fire == utc(2026, 11, 23, 10, 25)


def test_catch_up_latest_outside_the_window_is_skipped() -> None:
    decision = decide(EVERY5, LAST, NOW, catch_up="latest", window=60)  # 10:20 is 3 min old
    assert not decision.due
    assert decision.skipped == utc(2026, 11, 23, 10, 20)
    assert decision.missed == 4


def test_catch_up_window_is_measured_from_the_tick_minute() -> None:
    """10:20 is 180 s before the 10:23 tick: a window of 180 s still covers it, 179 not."""
    assert decide(EVERY5, LAST, NOW, catch_up="latest",
                  window=180).fire == utc(2026, 11, 23, 10, 20)
    assert decide(EVERY5, LAST, NOW, catch_up="latest",
                  window=179).skipped == utc(2026, 11, 23, 10, 20)


def test_current_minute_fires_under_any_policy_and_counts_the_missed() -> None:
    now = utc(2026, 11, 23, 10, 25, 5)
    for policy, window in (("latest", 3600), ("skip", 3600), ("latest", 0)):
        decision = decide(EVERY5, LAST, now, catch_up=policy, window=window)
        assert decision.fire == utc(2026, 11, 23, 10, 25)
        assert decision.missed == 4  # 10:05 .. 10:20
        assert decision.skipped is None


def test_a_tick_before_last_does_not_fire() -> None:
    """A clock stepping back (or a second mission behind) never fires an older time."""
    decision = decide(EVERY5, utc(2026, 11, 23, 10, 20), utc(2026, 11, 23, 10, 15, 30),
                      catch_up="latest", window=3600)
    assert decision == Decision(None, 0)


def test_year_old_last_with_a_daily_entry() -> None:
    schedule = Schedule("0 3 * * *", ZoneInfo("UTC"))
    now = utc(2026, 11, 23, 3, 0, 20)
    decision = decide(schedule, now - timedelta(days=365), now, catch_up="latest", window=3600)
    assert decision.fire == utc(2026, 11, 23, 3, 0)
    assert decision.missed == 364


def test_year_old_last_every_minute_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A year of ``* * * * *`` is 525 600 missed times: the count stops at MAX_SCAN, and the
    decision is still one fire of the current minute."""
    assert schedule_module.MAX_SCAN < 525_600
    monkeypatch.setattr(schedule_module, "MAX_SCAN", 500)
    schedule = Schedule("* * * * *", ZoneInfo("UTC"))
    now = utc(2026, 11, 23, 10, 23, 17)
    decision = decide(schedule, now - timedelta(days=365), now, catch_up="latest", window=3600)
    assert decision.fire == utc(2026, 11, 23, 10, 23)
    assert decision.missed == 500
    missed_tick = decide(schedule, now - timedelta(days=365), now, catch_up="skip", window=0)
    assert missed_tick.fire == utc(2026, 11, 23, 10, 23)


# -- daylight saving time ----------------------------------------------------------------------

BERLIN_SPRING = date(2026, 3, 29)  # 02:00 CET -> 03:00 CEST
BERLIN_FALL = date(2026, 10, 25)  # 03:00 CEST -> 02:00 CET
NY_SPRING = date(2026, 3, 8)  # 02:00 EST -> 03:00 EDT
NY_FALL = date(2026, 11, 1)  # 02:00 EDT -> 01:00 EST


def test_dst_days_are_what_the_tests_assume() -> None:
    start, end = local_day(BERLIN_SPRING, BERLIN)
    assert end - start == timedelta(hours=23)
    start, end = local_day(BERLIN_FALL, BERLIN)
    assert end - start == timedelta(hours=25)
    start, end = local_day(NY_SPRING, NEW_YORK)
    assert end - start == timedelta(hours=23)
    start, end = local_day(NY_FALL, NEW_YORK)
    assert end - start == timedelta(hours=25)


@pytest.mark.parametrize(
    ("day", "expr", "expected"),
    [
        # 02:30 does not exist: it runs at the first instant after the gap, 03:00 CEST.
        (BERLIN_SPRING, "30 2 * * *", utc(2026, 3, 29, 1, 0)),
        # 02:30 happens twice: it runs once, at the first (CEST) one.
        (BERLIN_FALL, "30 2 * * *", utc(2026, 10, 25, 0, 30)),
        (BERLIN_SPRING, "0 4 * * *", utc(2026, 3, 29, 2, 0)),
        (BERLIN_FALL, "0 4 * * *", utc(2026, 10, 25, 3, 0)),
        (BERLIN_FALL, "0 2 * * *", utc(2026, 10, 25, 0, 0)),
    ],
)
def test_berlin_daily_entry_fires_once_on_a_dst_day(day: date, expr: str,
                                                     expected: datetime) -> None:
    start, end = local_day(day, BERLIN)
    assert walk(Schedule(expr, BERLIN), start, end, again_second=59) == [expected]


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (NY_SPRING, utc(2026, 3, 8, 6, 30)),  # 01:30 EST, before the gap
        (NY_FALL, utc(2026, 11, 1, 5, 30)),  # the first 01:30 (EDT) of the two
    ],
)
def test_new_york_daily_entry_fires_once_on_a_dst_day(day: date, expected: datetime) -> None:
    start, end = local_day(day, NEW_YORK)
    assert walk(Schedule("30 1 * * *", NEW_YORK), start, end, again_second=59) == [expected]


@pytest.mark.parametrize("day", [BERLIN_FALL, BERLIN_SPRING])
def test_wildcard_hour_keeps_interval_semantics_across_a_dst_change(day: date) -> None:
    """``*/30 * * * *`` is an interval: every UTC half hour, through both 02:xx hours."""
    start = datetime.combine(day, time(), UTC)
    end = start + timedelta(hours=24)
    fired = walk(Schedule("*/30 * * * *", BERLIN), start, end, again_second=59)
    assert fired == [start + timedelta(minutes=30 * k) for k in range(48)]


def test_latest_inside_the_repeated_hour_is_the_current_half_hour() -> None:
    """01:00Z is the second 02:00 in Berlin (fold=1): it is itself a scheduled time."""
    schedule = Schedule("*/30 * * * *", BERLIN)
    assert schedule.latest(utc(2026, 10, 25, 1, 0)) == utc(2026, 10, 25, 1, 0)
    assert schedule.latest(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 25, 1, 0)
    assert schedule.latest(utc(2026, 10, 25, 1, 30)) == utc(2026, 10, 25, 1, 30)


def test_next_runs_across_the_repeated_hour_are_every_half_hour() -> None:
    schedule = Schedule("*/30 * * * *", BERLIN)
    start = utc(2026, 10, 24, 23, 45)
    assert schedule.next_runs(start, 8) == [utc(2026, 10, 25, 0, 0) + timedelta(minutes=30 * k)
                                            for k in range(8)]


# -- next_runs and describe --------------------------------------------------------------------


def test_next_runs_are_the_next_three_after_now_in_utc() -> None:
    now = utc(2026, 11, 23, 10, 23, 17)
    runs = EVERY5.next_runs(now, 3)
    assert runs == [utc(2026, 11, 23, 10, 25), utc(2026, 11, 23, 10, 30),
                    utc(2026, 11, 23, 10, 35)]
    assert all(r.utcoffset() == timedelta(0) for r in runs)


def test_next_runs_are_strictly_after_a_scheduled_now() -> None:
    runs = EVERY5.next_runs(utc(2026, 11, 23, 10, 25), 3)
    assert runs[0] == utc(2026, 11, 23, 10, 30)


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_next_runs_in_berlin_match_croniter(expr: str) -> None:
    now = datetime(2026, 11, 23, 10, 23, 17, tzinfo=BERLIN)
    runs = Schedule(expr, BERLIN).next_runs(now, 3)
    assert len(runs) == 3
    assert runs == sorted(set(runs))
    assert all(r > now and r.utcoffset() == timedelta(0) for r in runs)
    it = croniter(expr, now)
    assert runs == [it.get_next(datetime).astimezone(UTC) for _ in range(3)]


def test_next_runs_of_a_daily_berlin_entry() -> None:
    runs = Schedule("0 3 * * *", BERLIN).next_runs(utc(2026, 11, 23, 10, 0), 3)
    assert runs == [utc(2026, 11, 24, 2, 0), utc(2026, 11, 25, 2, 0), utc(2026, 11, 26, 2, 0)]


def test_describe_is_human_readable() -> None:
    text = describe("0 3 * * *")
    assert "03:00" in text
    assert text != "0 3 * * *"


@pytest.mark.parametrize("expr", ["garbage", "", "99 99 99 99 99", "* * *"])
def test_describe_returns_the_input_instead_of_raising(expr: str) -> None:
    assert describe(expr) == expr
