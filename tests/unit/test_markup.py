"""Rime inline markup: spans of every element, and malformed markup located exactly."""

from __future__ import annotations

import pytest

from pipeline.errors import InputError, MarkupError
from pipeline.markup import (
    MAX_PAUSE_MS,
    Pause,
    Phonemes,
    SpeedWord,
    Text,
    check_inline_speed,
    parse,
    speed_words,
)


def test_plain_text_is_one_run() -> None:
    assert parse("Hello, world.") == (Text(0, 13, "Hello, world."),)


def test_empty_text_has_no_tokens() -> None:
    assert parse("") == ()


def test_every_element_with_its_span() -> None:
    text = "Hi. <200> {h'El.o} is [slow] and [very fast]."
    assert parse(text) == (
        Text(0, 4, "Hi. "),
        Pause(4, 9, 200),
        Text(9, 10, " "),
        Phonemes(10, 18, "h'El.o"),
        Text(18, 22, " is "),
        SpeedWord(22, 28, "slow"),
        Text(28, 33, " and "),
        SpeedWord(33, 44, "very fast"),
        Text(44, 45, "."),
    )


def test_spans_slice_the_text_back() -> None:
    text = "<1000>[a]{b}<0>c"
    tokens = parse(text)
    assert "".join(text[t.start : t.end] for t in tokens) == text
    assert [type(t) for t in tokens] == [Pause, SpeedWord, Phonemes, Pause, Text]
    assert [t.ms for t in tokens if isinstance(t, Pause)] == [1000, 0]


def test_speed_words_in_order() -> None:
    words = speed_words(parse("[one] two [three]"))
    assert [w.word for w in words] == ["one", "three"]


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("wait <abc> here", 5, "'<abc>' must be whole milliseconds"),
        ("wait <2.5> here", 5, "must be whole milliseconds"),
        ("a < b", 2, "'<' that is not pause markup"),
        ("a < b <200>", 2, "'<' that is not pause markup"),
        ("ends with <", 10, "'<' that is not pause markup"),
        ("<>", 0, "empty pause marker"),
        ("a > b", 2, "stray '>'"),
        ("say {h'El.o and go", 4, "'{' is not closed"),
        ("say [slow and go", 4, "'[' is not closed"),
        ("stray ] here", 6, "']' without an opening '['"),
        ("stray } here", 6, "'}' without an opening '{'"),
        ("[a [b]]", 3, "nested markup: '['"),
        ("[a {b}]", 3, "nested markup: '{'"),
        ("{a <200>}", 3, "nested markup: '<'"),
        ("[a } b]", 3, "'}' inside [...]"),
        ("x [] y", 2, "empty []"),
        ("x {} y", 2, "empty {}"),
        ("x [  ] y", 2, "empty []"),
    ],
)
def test_malformed_markup_names_its_position(text: str, position: int, fragment: str) -> None:
    with pytest.raises(MarkupError) as caught:
        parse(text)
    assert caught.value.position == position
    assert fragment in caught.value.message
    assert str(caught.value).endswith(f"at character {position}")
    assert isinstance(caught.value, InputError)


def test_speed_values_match_words() -> None:
    check_inline_speed(parse("[a] b [c]"), [1.5, 0.8], 9)


def test_too_few_speed_values_points_at_the_first_word_without_one() -> None:
    text = "[a] b [c] d [e]"
    with pytest.raises(MarkupError) as caught:
        check_inline_speed(parse(text), [1.5], len(text))
    assert caught.value.position == 6
    assert "3 bracketed [word]s" in caught.value.message
    assert "1 value;" in caught.value.message


def test_too_many_speed_values_points_at_the_end() -> None:
    text = "[a] b"
    with pytest.raises(MarkupError) as caught:
        check_inline_speed(parse(text), [1.5, 2.0, 3.0], len(text))
    assert caught.value.position == len(text)
    assert "1 bracketed [word]s but inlineSpeedAlpha has 3 values" in caught.value.message


def test_a_pause_may_be_as_long_as_the_limit() -> None:
    assert parse(f"<{MAX_PAUSE_MS}>") == (Pause(0, len(str(MAX_PAUSE_MS)) + 2, MAX_PAUSE_MS),)
    assert parse("<000060000>")[0] == Pause(0, 11, 60_000)  # leading zeros count for nothing


@pytest.mark.parametrize("digits", [str(MAX_PAUSE_MS + 1), "99999999999", "9" * 5000])
def test_a_longer_pause_is_refused_however_many_digits(digits: str) -> None:
    with pytest.raises(MarkupError) as caught:
        parse(f"Wait. <{digits}> Go.")

    assert caught.value.position == 6
    assert f"longer than the limit of {MAX_PAUSE_MS} milliseconds" in caught.value.message
    assert len(caught.value.message) < 120  # a 5,000-digit marker is not repeated whole


def test_pause_digits_are_ascii() -> None:
    with pytest.raises(MarkupError, match="must be whole milliseconds"):
        parse("Wait <\u0663\u0660\u0660> here")  # Arabic-Indic 300: Rime reads ASCII digits
