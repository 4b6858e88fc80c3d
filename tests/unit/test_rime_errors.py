"""Rime error classes: status mapping, Retry-After, message hygiene."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import RimeBatchError
from pipeline.rime import errors
from pipeline.rime.errors import (
    MAX_MESSAGE_CHARS,
    AuthError,
    BadRequest,
    PermanentError,
    RateLimited,
    RimeError,
    ServerError,
    Timeout,
    TransientError,
    clean_message,
    error_for_status,
    parse_retry_after,
)
from pipeline.rime.events import ErrorEvent, parse_event
from tests.fixtures.leaks import leaked

KEY = "rk_live_ZZTOPSECRET0123456789"


@pytest.mark.parametrize(
    ("status", "cls", "transient"),
    [
        (400, BadRequest, False),
        (401, AuthError, False),
        (403, AuthError, False),
        (404, PermanentError, False),
        (422, PermanentError, False),
        (408, Timeout, True),
        (429, RateLimited, True),
        (500, ServerError, True),
        (502, ServerError, True),
        (503, ServerError, True),
    ],
)
def test_status_maps_to_a_class_that_says_retry_or_not(
    status: int, cls: type[RimeError], transient: bool
) -> None:
    err = error_for_status(status, "the server's words")
    assert type(err) is cls
    assert err.status == status
    assert err.message == "the server's words"
    assert isinstance(err, TransientError) is transient
    assert isinstance(err, PermanentError) is not transient
    assert isinstance(err, RimeBatchError)
    assert str(err) == f"Rime HTTP {status}: the server's words"


def test_an_empty_body_still_gives_a_message() -> None:
    assert error_for_status(503, "  \n").message == "HTTP status 503"


def test_rate_limited_carries_retry_after() -> None:
    err = error_for_status(429, "Too many requests", retry_after="7")
    assert isinstance(err, RateLimited)
    assert err.retry_after == 7.0
    assert str(err) == "Rime HTTP 429: Too many requests (retry after 7s)"
    assert error_for_status(429, "busy").retry_after is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("3", 3.0), ("0.25", 0.25), (" 12 ", 12.0), ("-4", 0.0), ("", None), (None, None)],
)
def test_retry_after_in_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2025, 3, 1, 12, 0, 42, tzinfo=UTC), usegmt=True)
    assert later == "Sat, 01 Mar 2025 12:00:42 GMT"
    assert parse_retry_after(later, now=now) == 42.0
    earlier = format_datetime(datetime(2025, 3, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0


@pytest.mark.parametrize("value", ["soon", "nan", "inf", "Sat, 99 Foo 2025"])
def test_unreadable_retry_after_is_none(value: str) -> None:
    assert parse_retry_after(value) is None


def test_long_messages_are_truncated_and_whitespace_folded() -> None:
    message = clean_message("<html>\n  <body>" + "x" * 5000 + "</body></html>")
    assert len(message) == MAX_MESSAGE_CHARS
    assert message.startswith("<html> <body>xxx")
    assert message.endswith("…")


def test_the_key_never_shows_in_str_repr_or_pickle() -> None:
    err = error_for_status(401, f"invalid api key {KEY} for this account", secret=KEY)
    assert isinstance(err, AuthError)
    assert err.message == "invalid api key [redacted] for this account"
    for text in (str(err), repr(err), str(err.args), pickle.dumps(err).decode("latin-1")):
        assert KEY not in text


@given(
    text=st.text(max_size=400),
    key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_]d[", min_size=4, max_size=40),
    where=st.integers(min_value=0, max_value=400),
)
def test_clean_message_never_contains_the_key(text: str, key: str, where: int) -> None:
    dirty = text[:where] + key + text[where:] + key
    assert key not in clean_message(dirty, key)


# Keys as Rime issues them (letters, digits, dashes, underscores); messages from everything else,
# so any piece of the key found in the cleaned message can only have come from the key.
KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
MESSAGE_TEXT = st.text(
    alphabet=st.characters(blacklist_characters=KEY_ALPHABET, blacklist_categories=("Cs",)),
    max_size=2 * MAX_MESSAGE_CHARS,
)


@given(
    before=MESSAGE_TEXT,
    after=MESSAGE_TEXT,
    key=st.text(alphabet=KEY_ALPHABET, min_size=6, max_size=80),
    # Where the key starts: anywhere, and often just before the cut, where a key used to leak.
    at=st.one_of(
        st.integers(min_value=0, max_value=2 * MAX_MESSAGE_CHARS),
        st.integers(min_value=MAX_MESSAGE_CHARS - 90, max_value=MAX_MESSAGE_CHARS),
    ),
    repeats=st.integers(min_value=1, max_value=3),
)
def test_no_piece_of_the_key_survives_wherever_the_cut_falls(
    before: str, after: str, key: str, at: int, repeats: int
) -> None:
    # Filler without whitespace, so folding cannot move the key away from `at`.
    prefix = ("".join(before.split()) + "." * at)[:at]
    dirty = prefix + (key + after) * repeats
    cleaned = clean_message(dirty, key)
    assert len(cleaned) <= MAX_MESSAGE_CHARS
    assert not leaked(key, cleaned), cleaned


def test_a_key_across_the_cut_leaves_no_prefix() -> None:
    # The case that leaked: the key starts a few characters before the cut.
    dirty = "x" * (MAX_MESSAGE_CHARS - 20) + f" invalid key {KEY}"
    cleaned = clean_message(dirty, KEY)
    assert cleaned.endswith("…")
    assert not leaked(KEY, cleaned), cleaned


def test_a_websocket_error_event_is_cleaned_of_the_key() -> None:
    raw = json.dumps({"type": "error", "message": "y" * (MAX_MESSAGE_CHARS - 4) + KEY})
    event = parse_event(raw, KEY)
    assert isinstance(event, ErrorEvent)
    assert not leaked(KEY, event.message), event.message


def test_errors_survive_pickling_with_their_fields() -> None:
    # Celery carries exceptions between processes by pickling them.
    err = RateLimited("busy", retry_after=2.5)
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.status, back.message, back.retry_after) == (
        RateLimited,
        429,
        "busy",
        2.5,
    )
    server = pickle.loads(pickle.dumps(errors.ServerError("down", status=503)))
    assert str(server) == "Rime HTTP 503: down"
