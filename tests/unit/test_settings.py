"""The one settings object: names, defaults from the parts they configure, clear refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.limits import LimitConfig
from pipeline.retry import DEFAULT_POLICY
from pipeline.settings import Settings, SettingsError
from pipeline.webhook import DEFAULT_DELIVERY, DeliveryPolicy


def test_unset_settings_take_the_defaults_of_the_parts_they_configure() -> None:
    settings = Settings.from_environment({})
    assert settings.limits == LimitConfig()
    assert settings.policy == DEFAULT_POLICY
    assert settings.threads == 2 * LimitConfig().concurrency
    assert settings.visibility == DEFAULT_POLICY.longest_seconds + settings.stitch_seconds
    assert settings.stall == settings.visibility
    assert settings.rime_api_key is None


def test_variables_reach_every_part() -> None:
    settings = Settings.from_environment(
        {
            "RIME_API_KEY": "rk_secret_value",
            "DATABASE_URL": "postgresql://db/jobs",
            "RIME_BATCH_CONCURRENCY": "7",
            "RIME_BATCH_ADAPTIVE": "1",
            "RIME_BATCH_COOLDOWN_SECONDS": "0.5",
            "RIME_BATCH_RETRY_MAX_ATTEMPTS": "3",
            "RIME_BATCH_STITCH_PARALLELISM": "4",
            "concurrency": "99",  # lower-case names are not this project's variables
        }
    )
    assert settings.database_url == "postgresql://db/jobs"
    assert settings.limits == LimitConfig(concurrency=7, adaptive=True, cooldown_seconds=0.5)
    assert settings.policy.max_attempts == 3
    assert settings.stitch_parallelism == 4
    assert settings.threads == 14
    assert "rk_secret_value" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RIME_BATCH_STITCH_PARALLELISM", "0"),
        ("RIME_BATCH_CONCURRENCY", "-1"),
        ("RIME_BATCH_CONCURRENCY", "five"),
        ("RIME_BATCH_LEASE_SECONDS", "0"),
        ("RIME_BATCH_RETRY_MAX_WAIT", "inf"),
        ("RIME_BATCH_ADAPTIVE", "maybe"),
    ],
)
def test_a_value_that_cannot_be_used_is_one_error_naming_its_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_environment({variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable}: ") and "\n" not in message
    assert repr(value) in message


@given(st.from_regex(r"rk_[A-Za-z0-9]{24}", fullmatch=True), st.sampled_from(["x", "-3", ""]))
def test_the_key_never_appears_in_a_settings_error(key: str, bad: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_environment({"RIME_API_KEY": key, "RIME_BATCH_CONCURRENCY": bad})
    assert key not in str(info.value)


def test_webhook_settings_reach_the_delivery_policy_and_keep_the_secret_out_of_repr() -> None:
    assert Settings.from_environment({}).delivery == DEFAULT_DELIVERY
    settings = Settings.from_environment(
        {
            "RIME_BATCH_WEBHOOK_SECRET": "whsec_value_0f9e8d",
            "RIME_BATCH_WEBHOOK_TIMEOUT_SECONDS": "2.5",
            "RIME_BATCH_WEBHOOK_INITIAL_WAIT": "0.1",
            "RIME_BATCH_WEBHOOK_MAX_WAIT": "9",
            "RIME_BATCH_WEBHOOK_JITTER": "0",
            "RIME_BATCH_WEBHOOK_GIVE_UP_SECONDS": "60",
            "RIME_BATCH_WEBHOOK_WAIT_SECONDS": "1",
        }
    )
    assert settings.delivery == DeliveryPolicy(
        timeout_seconds=2.5, initial_wait=0.1, max_wait=9.0, jitter=0.0, give_up_seconds=60.0
    )
    assert settings.webhook_wait_seconds == 1.0
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == "whsec_value_0f9e8d"
    assert "whsec_value_0f9e8d" not in repr(settings)


@pytest.mark.parametrize("secret", ["", "   ", "\t"])
def test_an_empty_webhook_secret_is_refused_without_echoing_it(secret: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_environment({"RIME_BATCH_WEBHOOK_SECRET": secret})
    message = str(info.value)
    assert message.startswith("RIME_BATCH_WEBHOOK_SECRET: ")
    assert "got" not in message
