"""What an error may show of a URL: never a password, whatever it is and wherever it sits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import Unreachable, first_line, without_credentials

secrets = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ23456789%-_~", min_size=8, max_size=40)


@given(password=secrets)
def test_no_password_survives_in_any_kind_of_url(password: str) -> None:
    for url in (
        f"redis://:{password}@queue-host:6379/0",
        f"amqp://rime:{password}@rabbit:5672//",
        f"postgresql+psycopg://rime:{password}@db-host/rime_batch?sslmode=require",
        f"postgresql://rime@db-host/rime_batch?password={password}",
        f"https://user:{password}@[::1]:8443/v1/rime-tts",
    ):
        shown = without_credentials(url)
        assert password not in shown, (url, shown)
        assert "@" not in shown
        assert Unreachable.because("it", url, OSError(f"refused for {password}")).url == shown
        assert password not in str(Unreachable.because("it", url, OSError(f"no {password}")))


def test_the_host_port_and_path_are_kept() -> None:
    assert without_credentials("redis://:pw@queue-host:6379/1") == "redis://queue-host:6379/1"
    assert (
        without_credentials("https://[::1]:8443/v1/rime-tts?k=v")
        == "https://[::1]:8443/v1/rime-tts"
    )
    assert without_credentials("sqlite:///jobs.db") == "sqlite:///jobs.db"


def test_first_line_takes_the_drivers_own_message_and_folds_it() -> None:
    class Wrapped(Exception):
        orig = ConnectionRefusedError("connection refused\n\tIs the server running?")

    assert first_line(Wrapped("(psycopg.OperationalError) long\nstory")) == "connection refused"
    assert first_line(ValueError("")) == "ValueError"
