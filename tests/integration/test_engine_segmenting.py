"""Sentence-end heuristics and the markup plan of the local engine (pure, no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rime_local.script import MarkupOptions, Sentence, Silence, Span, plan, plan_spans
from rime_local.sentences import PHRASE_MARKS, last_boundary, split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. ", "Hello there."),
        ("Hello there.", "Hello there."),
        ("Is it? Yes! And", "Is it? Yes!"),
        ('He said "stop." Then', 'He said "stop."'),
        ("take 2.5ml of it", None),
        ("take 2.5ml of the solution. Now", "take 2.5ml of the solution."),
        ("Dr. Smith is in", None),
        ("Ask Dr. Smith. He knows", "Ask Dr. Smith."),
        ("fruit, e.g. apples", None),
        ("it costs 3.99 today", None),
        ("J. K. Rowling wrote", None),
        ("the U.S. economy", None),
        ("Wait... what", None),
        ("approx. five people", None),
        ("visit example.com today", None),
    ],
)
def test_sentence_ends(text: str, expected: str | None) -> None:
    cut = last_boundary(text)
    assert (text[:cut] if cut is not None else None) == expected


def test_commas_end_phrases_on_ws_but_not_in_numbers() -> None:
    assert last_boundary("This is a sentence, that", PHRASE_MARKS) == len("This is a sentence,")
    assert last_boundary("It was 1,000 dollars", PHRASE_MARKS) is None


def test_a_token_ending_in_a_period_fires_as_seed_004_warns() -> None:
    # ["take ", "2."] has a period at the end of what was received: Rime fires early here too.
    assert last_boundary("take 2.") == len("take 2.")


@given(st.text(alphabet=st.sampled_from(list("ab .?!,\n'\"Dr5")), max_size=80))
def test_splitting_is_lossless(text: str) -> None:
    assert "".join(split_sentences(text)) == text


def test_plan_splits_sentences_and_inserts_pauses_only_when_honoured() -> None:
    text = "Hi there. <300> How are you? Fine"
    honoured = plan(text, MarkupOptions(pauses=True))
    kinds = [type(item).__name__ for item in honoured]
    assert kinds == ["Sentence", "Silence", "Sentence", "Sentence"]
    assert honoured[1] == Silence(300)
    ignored = plan(text, MarkupOptions(pauses=False))
    assert not any(isinstance(item, Silence) for item in ignored)
    words = [w.word for item in ignored if isinstance(item, Sentence) for w in item.words]
    assert words == ["Hi", "there.", "How", "are", "you?", "Fine"]


def test_plan_marks_speed_words_and_phonemes() -> None:
    options = MarkupOptions(phonemes=True, inline_speeds=(3.0, 0.5))
    [sentence] = plan("This is [slow] and [fast] and {h'El.o}", options)
    assert isinstance(sentence, Sentence)
    assert '<prosody rate="33%">slow</prosody>' in sentence.ssml
    assert '<prosody rate="200%">fast</prosody>' in sentence.ssml
    assert "[[h'Elo]]" in sentence.ssml
    for span in sentence.words[:-1]:
        assert sentence.ssml[span.start : span.end] == span.word.replace("&", "&amp;")


def test_plan_escapes_ssml_and_keeps_word_spans() -> None:
    [sentence] = plan("Fish & chips <cheap>", MarkupOptions())
    assert isinstance(sentence, Sentence)
    assert "&amp;" in sentence.ssml and "&lt;cheap&gt;" in sentence.ssml
    assert [w.word for w in sentence.words] == ["Fish", "&", "chips", "<cheap>"]


def test_spans_with_their_own_speeds_plan_like_one_text_with_the_lists_joined() -> None:
    spans = [
        Span("Say [one] now. ", MarkupOptions(inline_speeds=(3.0,)), alone=True),
        Span("Then [two] later.", MarkupOptions(inline_speeds=(0.5,)), alone=True),
        Span(" And [three] plain.", MarkupOptions()),
    ]
    joined = plan(
        "Say [one] now. Then [two] later. And [three] plain.",
        MarkupOptions(inline_speeds=(3.0, 0.5)),
    )
    assert plan_spans(spans) == joined


def test_spans_without_options_of_their_own_are_read_as_one_text() -> None:
    # A bracket split across two messages still counts, and takes the connection's speed.
    options = MarkupOptions(inline_speeds=(3.0,))
    split = plan_spans([Span("This is [sl", options), Span("ow] speech.", options)])
    assert split == plan("This is [slow] speech.", options)
    [sentence] = split
    assert isinstance(sentence, Sentence) and '<prosody rate="33%">slow</prosody>' in sentence.ssml
