"""The per-minute budget's rule (pipeline.limits.bucket), held in memory by `TokenBucket`."""

from __future__ import annotations

import pytest

from pipeline.limits.bucket import TokenBucket, bucket_capacity
from tests.fixtures.clock import FakeClock


def test_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_minute=60, clock=clock)
    assert bucket_capacity(60) == 10.0
    assert [bucket.take() for _ in range(10)] == [0.0] * 10
    assert bucket.take() == pytest.approx(1.0)  # one a second
    clock.now = 0.5
    assert bucket.take() == pytest.approx(0.5)
    clock.now = 1.0
    assert bucket.take() == 0.0
    clock.now = 100.0  # refills to the burst, no further
    assert sum(1 for _ in range(20) if bucket.take() == 0.0) == 10


def test_bucket_capacity_is_ten_seconds_and_at_least_one() -> None:
    assert bucket_capacity(600) == 100.0
    assert bucket_capacity(3) == 1.0


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(60, clock=lambda: now[0])  # one a second, burst of 10
    assert [bucket.take() for _ in range(10)] == [0.0] * 10
    assert bucket.take() == 1.0
    now[0] += 2.5
    assert bucket.take() == 0.0
    assert bucket.take() == 0.0
    assert 0.0 < bucket.take() <= 1.0
