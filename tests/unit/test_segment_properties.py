"""Properties of the segmenter over generated scripts mixing prose, numbers, markup and unicode."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.edit_locality import TEXT, changed_segments, one_sentence_edits
from pipeline.markup import parse
from pipeline.segment import Boundary, TextSegment, lead_pause_ms, segment_text

PAUSE = re.compile(r"<(\d+)>")
LEAD = re.compile(r"(?:\s|<\d+>)*")
RANK = {
    Boundary.WORD: 1,
    Boundary.CLAUSE: 2,
    Boundary.PAUSE: 3,
    Boundary.SENTENCE: 4,
    Boundary.PARAGRAPH: 5,
    Boundary.END: 6,
}

PLAIN_WORDS = ["a", "is", "the", "river", "café", "naïve", "Zoë", "😀", "東京", "well-known"]
# (piece, protected part of it)
PROTECTED = [
    ("2.5ml", "2.5ml"),
    ("$1,000.50", "$1,000.50"),
    ("3:30", "3:30"),
    ("555-0100", "555-0100"),
    ("1.5", "1.5"),
    ("10,000", "10,000"),
    ("1990–2000", "1990–2000"),
    ("Dr. Smith", "Dr. Smith"),
    ("Mrs. Jones", "Mrs. Jones"),
    ("St. Louis", "St. Louis"),
    ("e.g. apples", "e.g. apples"),
    ("i.e. pears", "i.e. pears"),
    ("U.S. Army", "U.S. Army"),
    ("vs. Spain", "vs. Spain"),
    ("No. 5", "No. 5"),
    ("J. R. R. Tolkien", "J. R. R. Tolkien"),
    ("apples etc. and", "etc. and"),
    ("5 p.m. today", "p.m. today"),
    ("https://example.com/a.b?c=d", "https://example.com/a.b?c=d"),
    ("www.x.org", "www.x.org"),
    ("bob.smith@example.com", "bob.smith@example.com"),
    ("{h'El.o}", "{h'El.o}"),
    ("{w'3rld t'Est}", "{w'3rld t'Est}"),
]
SPEED_WORDS = ["[slow]", "[very fast]"]
CJK = ["你好世界。今天很好！", "我们走吧，好吗？"]
SEPARATORS = [
    " ",
    "  ",
    "\t",
    ", ",
    ". ",
    "? ",
    "! ",
    '." ',
    "; ",
    ": ",
    " — ",
    " - ",
    "\n",
    "\n\n",
    ". \n\n",
    " <200> ",
    ". <350> ",
    " <0> <40> ",
    "\n\n<120>\n\n",
]
# Only after a plain word: separators without whitespace.
TIGHT_SEPARATORS = ["—", "<150>", "。"]


@dataclass(frozen=True)
class Script:
    text: str
    protected: tuple[tuple[int, int], ...]
    alpha: tuple[float, ...]
    pause_ms: int


random_words = st.text(
    alphabet=st.characters(categories=["L"]), min_size=4, max_size=12
)  # letters only: no markup, no whitespace, never an abbreviation chain


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    parts: list[str] = []
    protected: list[tuple[int, int]] = []
    alpha: list[float] = []
    pos = 0

    def add(piece: str, guard: str | None = None) -> None:
        nonlocal pos
        if guard is not None:
            start = pos + piece.index(guard)
            protected.append((start, start + len(guard)))
        for marker in PAUSE.finditer(piece):
            protected.append((pos + marker.start(), pos + marker.end()))
        parts.append(piece)
        pos += len(piece)

    add(draw(st.sampled_from(["", "", "  ", "<300> ", "\n<100><20>\n"])))
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["plain", "plain", "random", "protected", "speed", "cjk"]))
        tight = False
        if kind == "plain":
            add(draw(st.sampled_from(PLAIN_WORDS)))
            tight = True
        elif kind == "random":
            add(draw(random_words))
            tight = True
        elif kind == "protected":
            piece, guard = draw(st.sampled_from(PROTECTED))
            add(piece, guard)
        elif kind == "speed":
            word = draw(st.sampled_from(SPEED_WORDS))
            add(word, word)
            alpha.append(draw(st.floats(0.25, 4.0, allow_nan=False)))
        else:
            add(draw(st.sampled_from(CJK)))
        choices = SEPARATORS + TIGHT_SEPARATORS if tight else SEPARATORS
        add(draw(st.sampled_from(choices)))
    text = "".join(parts)
    total = sum(int(ms) for ms in PAUSE.findall(text))
    return Script(text, tuple(protected), tuple(alpha), total)


def first_content(segment: TextSegment) -> int:
    lead = LEAD.match(segment.source)
    assert lead is not None
    return segment.start + lead.end()


limits = st.integers(40, 300)
BOOK = TEXT.read_text(encoding="utf-8")


@settings(max_examples=200, deadline=None)
@given(script=scripts(), limit=limits, pauses_as_cuts=st.booleans())
def test_sources_join_to_the_text_and_texts_fit(
    script: Script, limit: int, pauses_as_cuts: bool
) -> None:
    segments = segment_text(
        script.text, limit=limit, inline_speed_alpha=script.alpha, pauses_as_cuts=pauses_as_cuts
    )
    assert "".join(s.source for s in segments) == script.text
    offset = 0
    for s in segments:
        assert s.start == offset
        offset += len(s.source)
        assert 0 < len(s.text) <= limit
        assert s.text == s.text.strip()
        assert s.text in s.source
        parse(s.text)  # each request's markup is whole
    assert segments[-1].boundary == Boundary.END
    assert all(s.boundary != Boundary.END for s in segments[:-1])


@settings(max_examples=200, deadline=None)
@given(script=scripts(), limit=limits, pauses_as_cuts=st.booleans())
def test_no_cut_inside_a_protected_span(script: Script, limit: int, pauses_as_cuts: bool) -> None:
    segments = segment_text(
        script.text, limit=limit, inline_speed_alpha=script.alpha, pauses_as_cuts=pauses_as_cuts
    )
    for s in segments[1:]:
        for start, end in script.protected:
            assert not start < s.start < end, (script.text[start:end], s.start)


@settings(max_examples=200, deadline=None)
@given(script=scripts(), limit=limits, pauses_as_cuts=st.booleans())
def test_inline_speed_values_are_split_in_order(
    script: Script, limit: int, pauses_as_cuts: bool
) -> None:
    segments = segment_text(
        script.text, limit=limit, inline_speed_alpha=script.alpha, pauses_as_cuts=pauses_as_cuts
    )
    assert tuple(v for s in segments for v in s.inline_speed_alpha) == script.alpha
    for s in segments:
        assert len(s.inline_speed_alpha) == s.text.count("[")


@settings(max_examples=200, deadline=None)
@given(script=scripts(), limit=limits, pauses_as_cuts=st.booleans())
def test_pause_milliseconds_are_kept(script: Script, limit: int, pauses_as_cuts: bool) -> None:
    segments = segment_text(
        script.text, limit=limit, inline_speed_alpha=script.alpha, pauses_as_cuts=pauses_as_cuts
    )
    at_cuts = lead_pause_ms(segments) + sum(s.pause_after_ms or 0 for s in segments)
    in_texts = sum(int(ms) for s in segments for ms in PAUSE.findall(s.text))
    assert at_cuts + in_texts == script.pause_ms
    if pauses_as_cuts:
        assert in_texts == 0
        assert not any(PAUSE.search(s.text) for s in segments)


@settings(max_examples=200, deadline=None)
@given(script=scripts(), limit=limits, pauses_as_cuts=st.booleans())
def test_neighbours_that_fit_together_have_a_weaker_cut_beside_them(
    script: Script, limit: int, pauses_as_cuts: bool
) -> None:
    """If two neighbours fit in one request, a cut next to them is of their cut's level or lower.

    A gap is cut only when the stretch between the stronger gaps either side of it does not
    fit, so that stretch must reach past one of the two neighbours: across a weaker cut.
    Only a forced cut at a pause marker is exempt.
    """
    segments = segment_text(
        script.text, limit=limit, inline_speed_alpha=script.alpha, pauses_as_cuts=pauses_as_cuts
    )
    for i, (left, right) in enumerate(pairwise(segments)):
        if pauses_as_cuts and left.pause_after_ms is not None:
            continue
        merged = first_content(right) + len(right.text) - first_content(left)
        if merged <= limit:
            beside = [segments[i - 1].boundary] if i > 0 else []
            if right.boundary is not Boundary.END:
                beside.append(right.boundary)
            assert any(RANK[b] <= RANK[left.boundary] for b in beside), (left, right)


# --- edit locality ----------------------------------------------------------------------------

# Distinct words: where the same two words meet at two gaps, ties between them are broken by
# how often they met before, the one thing not decided by nearby text.
distinct_words = st.lists(
    st.text(alphabet="bcdfghjklmnpqrstvwxz", min_size=3, max_size=9), min_size=2, unique=True
)
ENDINGS = [" ", " ", " ", ", ", "; ", ". ", ". ", "! ", ".\n\n"]


@st.composite
def edited_prose(draw: st.DrawFn) -> tuple[str, str, int, int, int]:
    """A text of distinct words, the same text with words start..end replaced, and the edit's
    character range in the old text and its length in the new one."""
    words = draw(distinct_words)
    ends = [draw(st.sampled_from(ENDINGS)) for _ in words]
    start = draw(st.integers(0, len(words) - 1))
    end = draw(st.integers(start + 1, min(len(words), start + 4)))
    # Vowels only, so the new words are distinct from the consonant-only old ones.
    vowels = st.text(alphabet="aeiouy", min_size=3, max_size=9)
    keep = len(words) - (end - start)
    fresh = draw(st.lists(vowels, min_size=int(keep == 0), max_size=4, unique=True))
    old = "".join(w + e for w, e in zip(words, ends, strict=True))
    new_words = [*words[:start], *fresh, *words[end:]]
    new_ends = [*ends[:start], *[" "] * len(fresh), *ends[end:]]
    new = "".join(w + e for w, e in zip(new_words, new_ends, strict=True))
    at = sum(len(w + e) for w, e in zip(words[:start], ends[:start], strict=True))
    old_len = sum(len(w + e) for w, e in zip(words[start:end], ends[start:end], strict=True))
    new_len = sum(len(w) + 1 for w in fresh)
    return old, new, at, old_len, new_len


def cut_positions(segments: tuple[TextSegment, ...]) -> set[int]:
    return {s.end for s in segments[:-1]}


@settings(max_examples=300, deadline=None)
@given(edit=edited_prose(), limit=st.integers(20, 120))
def test_an_edit_moves_no_cut_farther_than_a_request_from_it(
    edit: tuple[str, str, int, int, int], limit: int
) -> None:
    """Whether a gap is cut depends only on the text within `limit` characters of it."""
    old, new, at, old_len, new_len = edit
    before = cut_positions(segment_text(old, limit=limit))
    after = cut_positions(segment_text(new, limit=limit))
    reach = limit + 12  # the limit, plus the word either side whose hash is the gap's
    shift = new_len - old_len

    def far_before(p: int) -> bool:
        return p < at - reach

    def far_after(p: int, edit_end: int) -> bool:
        return p > edit_end + reach

    kept_before = {p for p in before if far_before(p)}
    assert kept_before == {p for p in after if far_before(p)}
    kept_after = {p + shift for p in before if far_after(p, at + old_len)}
    assert kept_after == {p for p in after if far_after(p, at + new_len)}


def test_one_sentence_edits_of_a_book_re_synthesize_a_segment_or_two() -> None:
    """The bench's figure in small (bench/edit_locality.py): random edits of the bench's book,
    at most 3 segments each and nearly always 1 or 2, where the old packing reached 6."""
    edits = one_sentence_edits(BOOK, 40, random.Random(3))
    counts = [changed_segments(BOOK, edited, 500) for edited in edits]
    assert max(counts) <= 3
    assert sum(c <= 2 for c in counts) >= 39
