"""The limits' defaults have one home, `LimitConfig`; the settings only override them."""

from __future__ import annotations

from pipeline.limits import LimitConfig
from pipeline.settings import Settings


def test_the_defaults_are_rimes_pay_as_you_go_plan_adaptive_with_a_two_second_cool_down() -> None:
    assert LimitConfig() == LimitConfig(
        concurrency=5,
        requests_per_minute=None,
        adaptive=True,
        probe_after=10,
        cooldown_seconds=2.0,
    )


def test_unset_settings_keep_the_defaults_and_set_ones_override_them() -> None:
    assert Settings.from_environment({}).limits == LimitConfig()
    environ = {
        "RIME_BATCH_CONCURRENCY": "8",
        "RIME_BATCH_REQUESTS_PER_MINUTE": "120",
        "RIME_BATCH_ADAPTIVE": "true",
        "RIME_BATCH_PROBE_AFTER": "3",
        "RIME_BATCH_COOLDOWN_SECONDS": "0.5",
    }
    assert Settings.from_environment(environ).limits == LimitConfig(
        concurrency=8,
        requests_per_minute=120,
        adaptive=True,
        probe_after=3,
        cooldown_seconds=0.5,
    )


def test_adaptation_is_on_for_every_executor_unless_turned_off() -> None:
    assert Settings.from_environment({}).limits.adaptive is True
    assert Settings.from_environment({"RIME_BATCH_ADAPTIVE": "0"}).limits.adaptive is False
