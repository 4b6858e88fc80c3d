"""The due-time rule of schedules, over generated cron expressions and times, and the one-line
refusals of names and cron expressions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import InputError
from pipeline.schedules import check_cron, check_name, due_to_handle, latest_due, next_due

START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=120)


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    """One cron field over [low, high]: any, a step, a value, a range or a list."""
    value = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        st.integers(1, max(1, (high - low) // 2)).map(lambda k: f"*/{k}"),
        value.map(str),
        st.tuples(value, value).map(lambda ab: f"{min(ab)}-{max(ab)}"),
        st.lists(value, min_size=2, max_size=4, unique=True).map(
            lambda vs: ",".join(map(str, sorted(vs)))
        ),
    )


# Days of the month up to 28: every month has them, so every expression is due some time.
crons = st.builds(
    lambda fields, seconds: " ".join(fields + ([seconds] if seconds else [])),
    st.tuples(_field(0, 59), _field(0, 23), _field(1, 28), _field(1, 12), _field(0, 6)).map(list),
    st.one_of(st.none(), _field(0, 59)),
)
moments = st.datetimes(
    min_value=START.replace(tzinfo=None),
    max_value=(START + SPAN).replace(tzinfo=None),
    timezones=st.just(UTC),
)


def is_due_time(cron: str, moment: datetime) -> bool:
    """Whether `moment` is one of the cron's due times (croniter matches 5 fields by minute)."""
    whole = moment.microsecond == 0 and (len(cron.split()) == 6 or moment.second == 0)
    return whole and bool(croniter.match(cron, moment))


@settings(max_examples=300, deadline=None)
@given(cron=crons, since=moments, now=moments)
def test_the_due_time_handled_is_the_newest_after_the_last_one(
    cron: str, since: datetime, now: datetime
) -> None:
    chosen = due_to_handle(cron, since, now)
    if chosen is None:
        # Nothing due in (since, now].
        assert now <= since or next_due(cron, since) > now
        return
    assert since < chosen <= now
    assert is_due_time(cron, chosen)
    # No other due time between it and now: missed slots collapse into this one.
    assert next_due(cron, chosen) > now


@settings(max_examples=200, deadline=None)
@given(cron=crons, since=moments, data=st.data())
def test_a_tick_exactly_at_a_due_time_handles_that_time(
    cron: str, since: datetime, data: st.DataObject
) -> None:
    due = next_due(cron, since)
    later = data.draw(st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=1)))
    assert due_to_handle(cron, since, due) == due
    assert latest_due(cron, due) == due
    # And a tick after it, before the next one, still handles it (once).
    if due + later < next_due(cron, due):
        assert due_to_handle(cron, since, due + later) == due
    assert due_to_handle(cron, due, due + later) in (None, latest_due(cron, due + later))


def test_missed_slots_collapse_into_the_newest() -> None:
    nightly = "0 2 * * *"
    last = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    # Beat was down for three nights: one run, for the last of them.
    now = datetime(2026, 3, 4, 9, 30, tzinfo=UTC)
    assert due_to_handle(nightly, last, now) == datetime(2026, 3, 4, 2, 0, tzinfo=UTC)
    assert due_to_handle(nightly, datetime(2026, 3, 4, 2, 0, tzinfo=UTC), now) is None


def test_seconds_are_the_sixth_field() -> None:
    every_five = check_cron("*  * * * *   */5")
    assert every_five == "* * * * * */5"
    t = datetime(2026, 1, 1, 0, 0, 7, 500_000, tzinfo=UTC)
    assert latest_due(every_five, t) == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert next_due(every_five, t) == datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("61 * * * *", "is not a cron expression (is not acceptable, out of range)"),
        ("*/0 * * * *", "is not a cron expression"),
        ("every night", "give 5 fields"),
        ("0 2 * * * * 2030", "give 5 fields"),
        ("0 0 30 2 *", "it is never due"),
    ],
)
def test_a_bad_cron_is_one_line_naming_it(expression: str, says: str) -> None:
    with pytest.raises(InputError) as caught:
        check_cron(expression)
    message = str(caught.value)
    assert message.startswith(f"--cron {expression!r}"), message
    assert says in message
    assert "\n" not in message


def test_aliases_are_cron_expressions() -> None:
    assert check_cron("@daily") == "@daily"
    assert next_due("@daily", START) == START + timedelta(days=1)


@pytest.mark.parametrize("name", ["nightly", "ivr.prompts-2", "A_1"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "two words", "-dash", "a/b", "ünï", "x" * 101])
def test_bad_names_are_refused_in_one_line(name: str) -> None:
    with pytest.raises(InputError) as caught:
        check_name(name)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("schedule name")


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        due_to_handle("0 2 * * *", START, datetime(2026, 1, 2))
