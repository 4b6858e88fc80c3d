"""The adaptive cap's rule (pipeline.limits.aimd), held in memory by `Aimd`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.limits.aimd import MAX_PROBE_FACTOR, PROBE_BACKOFF, Aimd, start_cap
from tests.fixtures.clock import FakeClock


def test_aimd_starts_at_half_the_ceiling_rounded_up() -> None:
    assert [Aimd(ceiling, 3).cap for ceiling in (1, 2, 3, 10, 11)] == [1, 1, 2, 5, 6]
    assert [start_cap(ceiling) for ceiling in (1, 2, 3, 10, 11)] == [1, 1, 2, 5, 6]


def test_aimd_halves_on_429_down_to_one() -> None:
    aimd = Aimd(ceiling=20, probe_after=3)
    assert [aimd.rate_limited() for _ in range(5)] == [5, 2, 1, 1, 1]


def test_aimd_halves_on_429_and_probes_back_up() -> None:
    aimd = Aimd(ceiling=16, probe_after=3)
    assert aimd.cap == 8  # half the ceiling
    assert aimd.rate_limited() == 4
    assert aimd.rate_limited() == 2
    assert [aimd.success() for _ in range(6)] == [2, 2, 3, 3, 3, 4]
    for _ in range(100):
        aimd.success()
    assert aimd.cap == 16
    for _ in range(10):
        aimd.rate_limited()
    assert aimd.cap == 1


def test_aimd_grows_by_one_after_a_streak_and_stops_at_the_ceiling() -> None:
    aimd = Aimd(ceiling=4, probe_after=3)  # starts at 2
    caps = [aimd.success() for _ in range(9)]
    assert caps == [2, 2, 3, 3, 3, 4, 4, 4, 4]
    assert aimd.fallback is None  # the last raise held for a full streak


def test_a_failed_probe_goes_back_and_the_wait_grows_up_to_sixteen_times() -> None:
    aimd = Aimd(ceiling=10, probe_after=2)  # 5
    assert [aimd.success() for _ in range(2)] == [5, 6]
    assert aimd.fallback == 5
    assert aimd.rate_limited() == 5  # back to the last cap that worked, not halved to 3
    assert (aimd.fallback, aimd.need) == (None, 2 * PROBE_BACKOFF)
    waits = []
    for _ in range(4):
        streak = 0
        while aimd.success() == 5:
            streak += 1
        waits.append(streak + 1)
        assert aimd.rate_limited() == 5
    assert waits == [8, 32, 32, 32]  # PROBE_BACKOFF is 4; at most MAX_PROBE_FACTOR x 2
    assert aimd.need == 32


def test_a_429_after_a_probe_held_halves() -> None:
    aimd = Aimd(ceiling=10, probe_after=2)  # 5
    for _ in range(3):
        aimd.success()  # 6, then one success at 6
    assert aimd.fallback == 5
    aimd.success()  # a full streak at 6: the probe held, and the next one starts at once
    assert (aimd.cap, aimd.fallback) == (7, 6)
    aimd.rate_limited()
    assert (aimd.cap, aimd.need) == (6, 8)
    for _ in range(8):
        aimd.success()
    assert (aimd.cap, aimd.fallback) == (7, 6)
    aimd.success()
    aimd.success()  # 7 held: the probe pace is back to probe_after
    assert (aimd.cap, aimd.fallback, aimd.need) == (8, 7, 2)
    aimd.success()
    aimd.success()
    assert (aimd.cap, aimd.fallback) == (9, 8)
    aimd.success()
    aimd.success()
    assert (aimd.cap, aimd.fallback) == (10, 9)
    aimd.success()
    aimd.success()
    assert (aimd.cap, aimd.fallback) == (10, None)
    assert aimd.rate_limited() == 5  # no probe pending: real contention halves


def test_halving_waits_out_the_cool_down_but_a_raise_ends_it() -> None:
    clock = FakeClock()
    aimd = Aimd(ceiling=32, probe_after=2, cooldown_seconds=2.0, clock=clock)  # 16
    assert aimd.rate_limited() == 8
    clock.now = 1.9
    assert aimd.rate_limited() == 8  # 429s of requests sent before the halving
    assert aimd.success() == 8  # a 429 broke the streak
    assert aimd.success() == 9
    assert aimd.rate_limited() == 8  # the probe failed, inside the window: still counts
    clock.now = 3.0
    assert aimd.rate_limited() == 8  # a failed probe starts a window of its own
    clock.now = 4.0
    assert aimd.rate_limited() == 4
    assert aimd.need == 2  # fresh contention: probe at the usual pace again


def test_a_429_breaks_the_streak() -> None:
    aimd = Aimd(ceiling=16, probe_after=3)  # 8
    aimd.rate_limited()  # 4
    aimd.success()
    aimd.success()
    aimd.rate_limited()  # 2, streak gone
    assert [aimd.success() for _ in range(3)] == [2, 2, 3]


@given(st.integers(1, 64), st.integers(1, 10), st.lists(st.booleans(), max_size=300))
def test_aimd_cap_stays_between_one_and_the_ceiling(
    ceiling: int, probe_after: int, outcomes: list[bool]
) -> None:
    aimd = Aimd(ceiling, probe_after)
    for ok in outcomes:
        before, pending = aimd.cap, aimd.fallback
        cap = aimd.success() if ok else aimd.rate_limited()
        assert 1 <= cap <= ceiling
        assert probe_after <= aimd.need <= MAX_PROBE_FACTOR * probe_after
        if ok:
            assert cap in {before, before + 1}
            assert aimd.fallback == (before if cap > before else aimd.fallback)
        elif pending is not None:
            assert cap == pending == before - 1
        else:
            assert cap == max(1, before // 2)
