"""The webhook protocol as pure functions: URL rules, redaction, signatures, the retry schedule."""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.webhook import (
    MAX_URL_CHARS,
    TOLERANCE_SECONDS,
    DeliveryPolicy,
    check_url,
    redact_url,
    scrub,
    sign,
    verify,
)

NOW = 1_800_000_000
secrets_ = st.text(min_size=1, max_size=64)
bodies = st.binary(max_size=4096)


# Signatures


@settings(max_examples=300, deadline=None)
@given(secret=secrets_, body=bodies, age=st.integers(-TOLERANCE_SECONDS, TOLERANCE_SECONDS))
def test_a_signature_verifies_for_any_body_within_the_tolerance(
    secret: str, body: bytes, age: int
) -> None:
    header = sign(secret, body, NOW)
    assert verify(secret, body, header, now=NOW + age)


@settings(max_examples=300, deadline=None)
@given(secret=secrets_, body=bodies.filter(bool), data=st.data())
def test_any_one_byte_change_of_the_body_fails(
    secret: str, body: bytes, data: st.DataObject
) -> None:
    header = sign(secret, body, NOW)
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    changed = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    assert not verify(secret, changed, header, now=NOW)


@settings(max_examples=200, deadline=None)
@given(secret=secrets_, other=secrets_, body=bodies)
def test_another_secret_fails(secret: str, other: str, body: bytes) -> None:
    if other == secret:
        return
    assert not verify(other, body, sign(secret, body, NOW), now=NOW)


@settings(max_examples=200, deadline=None)
@given(
    secret=secrets_,
    body=bodies,
    shift=st.integers(1, 10**6),
    longer=st.booleans(),
)
def test_a_moved_timestamp_or_a_stale_signature_fails(
    secret: str, body: bytes, shift: int, longer: bool
) -> None:
    header = sign(secret, body, NOW)
    # The same signature under another time: the time is part of what was signed.
    moved = header.replace(f"t={NOW}", f"t={NOW + shift}")
    assert not verify(secret, body, moved, now=NOW + shift)
    # Replayed later than the tolerance.
    late = NOW + TOLERANCE_SECONDS + shift if longer else NOW - TOLERANCE_SECONDS - shift
    assert not verify(secret, body, header, now=late)


def test_the_header_is_the_documented_hmac_of_timestamp_dot_body() -> None:
    body = b'{"id":"evt_1","event":"job.done"}'
    expected = hmac.new(b"s3cret", b"1800000000." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret", body, NOW) == f"t=1800000000,v1={expected}"


@pytest.mark.parametrize(
    "header",
    ["", "v1=abc", "t=abc,v1=00", "t=1800000000", "t=1800000000,t=1800000000,v1=00", "garbage"],
)
def test_malformed_headers_fail(header: str) -> None:
    assert not verify("s3cret", b"{}", header, now=NOW)


def test_a_second_v1_entry_verifies_when_one_matches() -> None:
    # Room for rotating the secret: a receiver accepts any v1 that matches.
    body = b"{}"
    good = sign("new", body, NOW).split("v1=")[1]
    assert verify("new", body, f"t={NOW},v1={'0' * 64},v1={good}", now=NOW)


# URLs


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/services/T0/B0/abc",
        "http://127.0.0.1:8080/hook?token=x",
        "HTTPS://example.com",
        "http://[::1]:9000/",
    ],
)
def test_http_and_https_urls_with_a_host_are_taken(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/x", "must be an http:// or https:// URL, not ftp"),
        ("file:///etc/passwd", "must be an http:// or https:// URL, not file"),
        ("example.com/hook", "must be an http:// or https:// URL, not a path"),
        ("https:///hook", "names no host"),
        ("https://exa mple.com/", "contains a space or a control character"),
        ("https://example.com/\x00", "contains a space or a control character"),
        ("https://example.com:port/", "is not a URL"),
        ("", "must be an http:// or https:// URL"),
        (42, "must be an http:// or https:// URL"),
        ("https://example.com/" + "a" * MAX_URL_CHARS, f"longer than {MAX_URL_CHARS}"),
    ],
)
def test_other_urls_are_refused_saying_why(url: object, says: str) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        check_url(url)
    assert says in str(raised.value)


def test_a_refusal_never_shows_the_urls_path_or_query() -> None:
    with pytest.raises(ValueError) as raised:
        check_url("https://example.com:port/services/T0/B0/tok-ABCDEF")
    assert "tok-ABCDEF" not in str(raised.value)
    assert "services" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/secret", "https://hooks.slack.com/…"),
        ("http://127.0.0.1:8080/hook?token=abc", "http://127.0.0.1:8080/…"),
        ("https://user:pass@example.com/", "https://example.com/"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com/?t=1", "https://example.com/…"),
        ("http://[::1]:9000/x", "http://[::1]:9000/…"),
        ("not a url", "<unparsable URL>"),
    ],
)
def test_redacted_urls_keep_scheme_host_and_port(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@settings(max_examples=200, deadline=None)
@given(
    token=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_", min_size=8),
    in_query=st.booleans(),
)
def test_no_token_of_a_url_survives_redaction_or_scrubbing(token: str, in_query: bool) -> None:
    url = f"https://hooks.example.com/{'hook?token=' if in_query else 'services/'}{token}"
    assert token not in redact_url(url)
    message = f"ConnectError: could not reach {url} (also {url.split('.com')[1]})"
    assert token not in scrub(message, url)


# The retry schedule


def test_waits_grow_exponentially_up_to_the_cap() -> None:
    policy = DeliveryPolicy(initial_wait=1.0, max_wait=8.0, jitter=0.0)
    assert [policy.wait(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


@settings(max_examples=200, deadline=None)
@given(attempts=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_jitter_adds_at_most_its_own_seconds(attempts: int, seed: int) -> None:
    policy = DeliveryPolicy(initial_wait=0.5, max_wait=30.0, jitter=2.0)
    plain = DeliveryPolicy(initial_wait=0.5, max_wait=30.0, jitter=0.0).wait(attempts)
    wait = policy.wait(attempts, random.Random(seed))
    assert plain <= wait <= plain + 2.0


def test_no_attempt_is_scheduled_past_the_give_up_time_and_the_last_one_is_at_it() -> None:
    policy = DeliveryPolicy(initial_wait=100.0, max_wait=100.0, jitter=0.0, give_up_seconds=250)
    created = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert policy.next_attempt(1, created, created) == created + timedelta(seconds=100)
    later = created + timedelta(seconds=200)
    # The wait would overshoot the deadline: the last attempt is made at it instead.
    assert policy.next_attempt(3, created, later) == created + timedelta(seconds=250)
    assert policy.next_attempt(4, created, created + timedelta(seconds=250)) is None


@settings(max_examples=200, deadline=None)
@given(
    attempts=st.integers(1, 40),
    elapsed=st.floats(0, 10_000),
    give_up=st.floats(1, 5_000),
    seed=st.integers(0, 2**32),
)
def test_the_schedule_is_bounded_by_the_give_up_time(
    attempts: int, elapsed: float, give_up: float, seed: int
) -> None:
    policy = DeliveryPolicy(initial_wait=1.0, max_wait=300.0, jitter=1.0, give_up_seconds=give_up)
    created = datetime(2026, 12, 1, tzinfo=UTC)
    now = created + timedelta(seconds=elapsed)
    when = policy.next_attempt(attempts, created, now, random.Random(seed))
    if elapsed >= give_up:
        assert when is None
    else:
        assert when is not None and now < when <= created + timedelta(seconds=give_up)


# The README's receiver


@cache
def readme_verify() -> Callable[..., bool]:
    """The verification snippet of the README's Notifications section, as a receiver copies it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Notifications", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    verify_: Callable[..., bool] = namespace["verify"]
    return verify_


@settings(max_examples=100, deadline=None)
@given(secret=secrets_, body=bodies.filter(bool), data=st.data())
def test_the_readmes_snippet_verifies_what_we_sign_and_nothing_changed(
    secret: str, body: bytes, data: st.DataObject
) -> None:
    check = readme_verify()
    now = int(time.time())
    header = sign(secret, body, now)
    assert check(secret, body, header)
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    changed = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    assert not check(secret, changed, header)
    assert not check(secret, body, sign(secret, body, now - TOLERANCE_SECONDS - 5))
