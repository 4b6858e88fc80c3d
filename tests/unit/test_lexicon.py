"""The lexicon's matching rules: whole words, case, longest first, markup and addresses left
alone; entries checked against Rime's phonetic alphabet."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.errors import SegmentationError
from pipeline.lexicon import (
    MAX_ENTRIES,
    Entry,
    Lexicon,
    LexiconProblem,
    apply,
    entry,
    first_clash,
    overlay,
)
from pipeline.markup import Phonemes, SpeedWord, Text, parse
from pipeline.segment import segment_text


def lexicon(**pairs: str) -> Lexicon:
    return Lexicon(tuple(entry(k.replace("_", " "), v) for k, v in pairs.items()))


def rewrite(text: str, *pairs: tuple[str, str]) -> str:
    return apply(Lexicon(tuple(entry(k, v) for k, v in pairs)), text).text


# --- the rules, one example each ----------------------------------------------------------------


def test_whole_words_only_with_possessives_and_compounds_matched() -> None:
    pairs = ("Rime", "{r1Ym}")
    assert rewrite("Rime, Rimes, Rime's and Rime-based; PreRime.", pairs) == (
        "{r1Ym}, Rimes, {r1Ym}'s and {r1Ym}-based; PreRime."
    )


def test_a_key_without_capitals_matches_any_case_and_one_with_capitals_only_itself() -> None:
    assert rewrite("rime Rime RIME", ("rime", "rhyme")) == "rhyme rhyme rhyme"
    assert rewrite("sql Sql SQL", ("SQL", "sequel")) == "sql Sql sequel"


def test_the_longest_key_wins_at_each_word() -> None:
    pairs = [("New York", "Noo York"), ("New York City", "the city"), ("York", "Yawk")]
    assert rewrite("New York City, New York, York.", *pairs) == "the city, Noo York, Yawk."


def test_a_replacement_is_never_read_again() -> None:
    assert rewrite("SQL", ("SQL", "S Q L"), ("S", "ess")) == "S Q L"


def test_markup_urls_and_addresses_are_left_alone() -> None:
    text = "Rime [Rime] {Rime} <200> https://rime.ai/Rime www.rime.ai me@rime.ai rime.ai docs/rime"
    assert rewrite(text, ("rime", "rhyme")) == (
        "rhyme [Rime] {Rime} <200> https://rime.ai/Rime www.rime.ai me@rime.ai rime.ai docs/rime"
    )


def test_a_multi_word_key_matches_across_one_line_break_but_not_a_paragraph() -> None:
    pairs = ("New York", "Noo York")
    assert rewrite("in New\nYork", pairs) == "in Noo York"
    assert rewrite("in New\n\nYork", pairs) == "in New\n\nYork"
    assert rewrite("in NewYork", pairs) == "in NewYork"


def test_combining_marks_belong_to_the_word() -> None:
    # "Cafe" followed by a combining acute is the word "Café", not "Cafe".
    assert rewrite("Cafe\u0301 and cafe", ("cafe", "kafay")) == "Cafe\u0301 and kafay"
    assert rewrite("Café", ("Cafe\u0301", "kafay")) == "kafay"  # keys are composed (NFC)


def test_a_key_ending_in_punctuation_needs_a_boundary_only_at_its_start() -> None:
    assert rewrite("Ask Dr. Okafor, not xDr. Okafor", ("Dr. Okafor", "Doctor Oh-kah-for")) == (
        "Ask Doctor Oh-kah-for, not xDr. Okafor"
    )


def test_substitutions_say_where_each_key_was() -> None:
    lx = lexicon(rime="{r1Ym}", SQL="sequel")
    done = apply(lx, "Rime and SQL.")
    assert done.text == "{r1Ym} and sequel."
    assert [(s.start, s.end, s.new_start, s.new_end) for s in done.substitutions] == [
        (0, 4, 0, 6),
        (9, 12, 11, 17),
    ]
    assert done.phoneme_spans() == ((0, 6),)
    assert [done.original_position(p) for p in (0, 5, 6, 11, 16, 17)] == [0, 0, 4, 9, 9, 12]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "cannot be empty"),
        ("   ", "cannot be empty"),
        ("two\nlines", "line break"),
        ("[Rime]", "cannot hold '['"),
        ("Rime{x}", "cannot hold '{'"),
        ("-dash", "starts with a letter or a digit"),
        ("me@rime.ai", "URL or an e-mail address"),
        ("x" * 101, "longer than 100"),
        ("a b c d e f g h i", "at most 8 words"),
    ],
)
def test_bad_keys_are_refused_with_the_reason(key: str, message: str) -> None:
    with pytest.raises(LexiconProblem, match=message.replace("{", r"\{").replace("[", r"\[")):
        entry(key, "alias")


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        ("", "empty"),
        ("{}", "empty phonemes"),
        ("{k1Ast0xm", "one group in curly brackets"),
        ("{k1Ast0xm} plus", "one group in curly brackets"),
        ("{k1st}", "must come just before a vowel"),
        ("{k1Ast0xm3}", "'3' at character 9"),
        ("{kq}", "'q' at character 2"),
        ("{k Ast}", "a space at character 2"),
        ("{kst}", "has no vowel"),
        ("say <200> it", "plain text and cannot hold '<'"),
        ("[fast]", "plain text"),
        ("two\nlines", "line break"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_bad_replacements_are_refused_with_the_reason(replacement: str, message: str) -> None:
    with pytest.raises(LexiconProblem, match=message.replace("{", r"\{").replace("[", r"\[")):
        entry("word", replacement)


@pytest.mark.parametrize("phonemes", ["{k1Ast0xm}", "{g1orby0ul2Ets}", "{h'El.o}", "{2akS0In1ir}"])
def test_rime_s_own_examples_are_valid_phonemes(phonemes: str) -> None:
    assert entry("word", phonemes).phonemes


def test_keys_that_only_case_tells_apart_clash_unless_both_are_exact() -> None:
    with pytest.raises(LexiconProblem, match="differ only in letter case") as caught:
        lexicon(rime="a", Rime="b")
    assert caught.value.index == 1
    with pytest.raises(LexiconProblem, match="given twice"):
        Lexicon((entry("Rime", "a"), entry("Rime", "b")))
    both_exact = lexicon(Rime="rhyme", RIME="R I M E")
    assert apply(both_exact, "Rime RIME rime").text == "rhyme R I M E rime"


def test_a_script_s_own_entry_replaces_the_job_s() -> None:
    job = lexicon(rime="{r1Ym}", SQL="sequel")
    own = lexicon(Rime="rhyme")
    merged = overlay(job, own)
    assert apply(merged, "Rime SQL").text == "rhyme sequel"
    assert overlay(job, Lexicon(())) is job


def test_a_lexicon_holds_at_most_the_limit() -> None:
    many = tuple(entry(f"w{i}", "x") for i in range(MAX_ENTRIES + 1))
    with pytest.raises(LexiconProblem, match="10,000"):
        Lexicon(many)


# --- properties ---------------------------------------------------------------------------------

_letters = st.sampled_from("abcdefgh")
_words = st.text(_letters, min_size=1, max_size=5)
# Prose with markup, URLs and addresses among the words, and the separators between them.
_piece = st.one_of(
    _words,
    _words.map(lambda w: w.capitalize()),
    _words.map(lambda w: f"[{w}]"),
    _words.map(lambda w: f"{{{w}}}"),
    st.integers(0, 999).map(lambda n: f"<{n}>"),
    _words.map(lambda w: f"https://{w}.example/{w}"),
    _words.map(lambda w: f"{w}@{w}.example"),
    _words.map(lambda w: f"{w}.{w}"),
)
_gap = st.sampled_from([" ", ", ", ". ", "\n", "\n\n", "'s ", "-"])


@st.composite
def texts(draw: st.DrawFn) -> str:
    pieces = draw(st.lists(_piece, min_size=1, max_size=12))
    gaps = draw(st.lists(_gap, min_size=len(pieces), max_size=len(pieces)))
    return "".join(p + g for p, g in zip(pieces, gaps, strict=True)).strip() or "a"


@st.composite
def lexicons(draw: st.DrawFn, *, phonemes_only: bool = False) -> Lexicon:
    keys = draw(
        st.lists(
            st.lists(_words, min_size=1, max_size=3).map(" ".join),
            min_size=1,
            max_size=6,
            unique_by=str.casefold,
        )
    )
    exact = draw(st.lists(st.booleans(), min_size=len(keys), max_size=len(keys)))
    replacement = st.sampled_from(["{k1Ast0xm}", "{r1Ym}"])
    if not phonemes_only:
        replacement = replacement | st.sampled_from(["zz", "yy qq", "Zed"])
    return Lexicon(
        tuple(
            entry(k.capitalize() if capital else k, draw(replacement))
            for k, capital in zip(keys, exact, strict=True)
        )
    )


def _protected(text: str) -> list[str]:
    """The markup elements and addresses of a text, in order."""
    marks = [text[t.start : t.end] for t in parse(text) if not isinstance(t, Text)]
    addresses = [w for w in text.split() if "://" in w or "@" in w]
    return marks + addresses


@settings(deadline=None)  # timing is not what these check
@given(text=texts(), lx=lexicons())
def test_text_holding_no_key_is_unchanged(text: str, lx: Lexicon) -> None:
    assume(not any(e.key.casefold() in text.casefold() for e in lx.entries))
    assert apply(lx, text).text == text


@settings(deadline=None)  # timing is not what these check
@given(text=texts(), lx=lexicons())
def test_markup_and_addresses_come_through_untouched(text: str, lx: Lexicon) -> None:
    done = apply(lx, text)
    written = [m for m in _protected(done.text) if not _is_lexicon_phonemes(m, lx)]
    assert written == _protected(text)


def _is_lexicon_phonemes(markup: str, lx: Lexicon) -> bool:
    return any(e.phonemes and e.replacement == markup for e in lx.entries)


@settings(deadline=None)  # timing is not what these check
@given(text=texts(), lx=lexicons())
def test_undoing_every_substitution_gives_the_text_back(text: str, lx: Lexicon) -> None:
    done = apply(lx, text)
    rebuilt = done.text
    for s in reversed(done.substitutions):
        assert rebuilt[s.new_start : s.new_end] == s.entry.replacement
        rebuilt = rebuilt[: s.new_start] + text[s.start : s.end] + rebuilt[s.new_end :]
        written = " ".join(text[s.start : s.end].split())
        assert written == s.entry.key if s.entry.exact else written.casefold() == s.entry.key
    assert rebuilt == text


@settings(deadline=None)  # timing is not what these check
@given(text=texts(), lx=lexicons())
def test_every_match_is_a_whole_word(text: str, lx: Lexicon) -> None:
    for s in apply(lx, text).substitutions:
        before = text[s.start - 1] if s.start else " "
        after = text[s.end] if s.end < len(text) else " "
        assert not before.isalnum() and not after.isalnum()
        assert text[s.start - 2 : s.start] not in {f"{c}." for c in "abcdefgh"}


@settings(deadline=None)  # timing is not what these check
@given(word=_words, prefix=_words, suffix=_words)
def test_a_key_inside_a_longer_word_is_never_rewritten(word: str, prefix: str, suffix: str) -> None:
    lx = Lexicon((entry(word, "{r1Ym}"),))
    for longer in (prefix + word, word + suffix, prefix + word + suffix):
        assert apply(lx, f"say {longer} now").text == f"say {longer} now"


@settings(deadline=None)  # timing is not what these check
@given(first=_words, second=_words, tail=st.sampled_from([" ", ".", ", ok"]))
def test_the_longer_of_two_keys_at_one_place_wins(first: str, second: str, tail: str) -> None:
    lx = Lexicon((entry(first, "{r1Ym}"), entry(f"{first} {second}", "{k1Ast0xm}")))
    assert apply(lx, f"{first} {second}{tail}").text == "{k1Ast0xm}" + tail


@settings(deadline=None)  # timing is not what these check
@given(text=texts(), lx=lexicons(phonemes_only=True))
def test_phoneme_lexicons_are_idempotent(text: str, lx: Lexicon) -> None:
    once = apply(lx, text).text
    assert apply(lx, once).text == once


@settings(max_examples=60, deadline=None)
@given(text=texts(), lx=lexicons(), limit=st.integers(12, 40))
def test_the_segmenter_never_cuts_a_phoneme_group(text: str, lx: Lexicon, limit: int) -> None:
    done = apply(lx, text)
    try:
        words = sum(isinstance(t, SpeedWord) for t in parse(done.text))
        segments = segment_text(done.text, limit=limit, inline_speed_alpha=[1.0] * words)
    except SegmentationError:  # a word longer than the limit: no cut to check
        return
    assert "".join(s.source for s in segments) == done.text
    for start, end in done.phoneme_spans():
        assert any(s.start <= start and end <= s.end for s in segments)
        assert any(done.text[start:end] in s.text for s in segments)
    groups = [t for t in parse(done.text) if isinstance(t, Phonemes)]
    assert len(groups) == sum(
        len([t for t in parse(s.text) if isinstance(t, Phonemes)]) for s in segments
    )


def test_entries_compare_by_key_and_replacement_not_origin() -> None:
    assert Entry("a", "b", "x.yaml:1") == Entry("a", "b", "y.csv:2")
    assert first_clash((Entry("a", "b"), Entry("c", "d"))) is None
