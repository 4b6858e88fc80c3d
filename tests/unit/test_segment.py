"""The segmenter, rule by rule: boundaries, protected spans, pauses, inline speeds, unicode."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pipeline.errors import MarkupError, SegmentationError
from pipeline.segment import Boundary, TextSegment, lead_pause_ms, segment_text


def texts(segments: Sequence[TextSegment]) -> list[str]:
    return [s.text for s in segments]


def cut_positions(segments: Sequence[TextSegment]) -> list[int]:
    return [s.start for s in segments[1:]]


def check_lossless(text: str, segments: Sequence[TextSegment], limit: int) -> None:
    assert "".join(s.source for s in segments) == text
    for s in segments:
        assert text[s.start : s.end] == s.source
        assert 0 < len(s.text) <= limit
        assert s.text == s.text.strip()


# --- lossless cuts and the limit ---------------------------------------------------------------


def test_short_text_is_one_segment() -> None:
    segments = segment_text("Hello there.")
    assert segments == (TextSegment("Hello there.", 0, "Hello there.", None, Boundary.END, ()),)


def test_whitespace_at_a_cut_goes_with_the_earlier_source() -> None:
    text = "One.  \n Two."
    segments = segment_text(text, limit=4)
    assert [s.source for s in segments] == ["One.  \n ", "Two."]
    assert texts(segments) == ["One.", "Two."]
    assert segments[1].start == 8
    assert segments[0].end == 8


def test_leading_and_trailing_whitespace_stay_in_sources_only() -> None:
    text = "  \n Hello world.  \n"
    segments = segment_text(text, limit=6)
    check_lossless(text, segments, 6)
    assert texts(segments) == ["Hello", "world."]
    assert segments[0].source == "  \n Hello "


@pytest.mark.parametrize("limit", [200, 500, 1000])
def test_limit_is_configurable(limit: int) -> None:
    text = " ".join(f"Sentence number {i} says a few words." for i in range(300))
    segments = segment_text(text, limit=limit)
    check_lossless(text, segments, limit)
    assert max(len(s.text) for s in segments) > limit // 2
    assert len(segments) < len(segment_text(text, limit=limit // 2))


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t", "<200>", "  <200> <300>\n"])
def test_nothing_to_speak_is_an_error(text: str) -> None:
    with pytest.raises(SegmentationError) as caught:
        segment_text(text)
    assert caught.value.position == 0
    assert "nothing to speak" in str(caught.value)


def test_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        segment_text("Hi.", limit=0)


# --- boundary levels and packing ----------------------------------------------------------------


def test_sentence_boundary_beats_a_farther_word_boundary() -> None:
    first = " ".join(["word"] * 75) + "."  # 374 characters
    text = first + " " + " ".join(["more"] * 60) + "."
    segments = segment_text(text, limit=500)
    assert segments[0].text == first
    assert segments[0].boundary == Boundary.SENTENCE
    check_lossless(text, segments, 500)


def test_paragraph_beats_farther_sentences() -> None:
    text = "Short para.\n\nA longer sentence. And another one that goes on."
    segments = segment_text(text, limit=40)
    assert texts(segments)[0] == "Short para."
    assert segments[0].boundary == Boundary.PARAGRAPH
    assert segments[0].source == "Short para.\n\n"


def test_a_weaker_gap_is_cut_only_where_the_stronger_ones_are_a_request_apart() -> None:
    text = "One. Two. Three. Four five six seven"
    segments = segment_text(text, limit=20)
    # The last sentence fits, so none of its word gaps is cut; the sentence ends are.
    assert texts(segments)[-1] == "Four five six seven"
    assert all(s.boundary == Boundary.SENTENCE for s in segments[:-1])
    check_lossless(text, segments, 20)


def test_rest_that_fits_is_one_segment_even_across_paragraphs() -> None:
    text = "A.\n\nB."
    segments = segment_text(text, limit=100)
    assert texts(segments) == ["A.\n\nB."]
    assert segments[0].boundary == Boundary.END


def test_clause_beats_a_farther_word_boundary() -> None:
    segments = segment_text("one, two three four", limit=14)
    assert texts(segments) == ["one,", "two three four"]
    assert segments[0].boundary == Boundary.CLAUSE


@pytest.mark.parametrize("punct", [";", ":", "，"])
def test_other_clause_marks(punct: str) -> None:
    segments = segment_text(f"one{punct} two three four", limit=14)
    assert texts(segments)[0] == f"one{punct}"
    assert segments[0].boundary == Boundary.CLAUSE


def test_em_dash_without_spaces_is_a_clause_cut() -> None:
    segments = segment_text("alpha—beta gamma delta", limit=12)
    assert [s.source for s in segments] == ["alpha—", "beta gamma ", "delta"]
    assert [s.boundary for s in segments] == [Boundary.CLAUSE, Boundary.WORD, Boundary.END]


def test_spaced_hyphen_is_a_clause_cut_but_a_hyphenated_word_is_not() -> None:
    segments = segment_text("one two - three four", limit=10)
    assert texts(segments) == ["one two -", "three four"]
    assert segments[0].boundary == Boundary.CLAUSE
    segments = segment_text("well-known facts", limit=11)
    assert texts(segments) == ["well-known", "facts"]
    assert segments[0].boundary == Boundary.WORD


@pytest.mark.parametrize("ending", ['."', ".”", "?)", "!'", "…", "?!"])
def test_sentence_end_with_closing_quotes(ending: str) -> None:
    text = f"He said stop{ending} Then he left."
    segments = segment_text(text, limit=len(f"He said stop{ending}") + 2)
    assert texts(segments)[0] == f"He said stop{ending}"
    assert segments[0].boundary == Boundary.SENTENCE


def test_a_chapter_is_cut_only_at_sentence_ends_into_well_filled_segments() -> None:
    # Its speed is bench/segment.py's to measure: a time limit here fails on a busy machine.
    sentences = [
        "The river ran cold and fast under the old stone bridge.",
        "Nobody had crossed it since the winter storms of 1999.",
        "She paid $1,000.50 for the map, e.g. a copy from Dr. Reyes.",
        "At 3:30 the bells rang out over the sleeping town.",
    ]
    chapter = ""
    i = 0
    while len(chapter) < 100_000:
        chapter += sentences[i % len(sentences)] + " "
        i += 1
    segments = segment_text(chapter, limit=500)
    check_lossless(chapter, segments, 500)
    assert all(s.boundary == Boundary.SENTENCE for s in segments[:-1])
    # A refrain repeats the same sentence ends, which no hash tells apart; they are split in
    # halves, so the segments stay well filled rather than one refrain long.
    assert sum(len(s.text) for s in segments) / len(segments) > 0.6 * 500


# --- protected spans --------------------------------------------------------------------------


def assert_never_cut_inside(text: str, protected: str, alpha: Sequence[float] = ()) -> None:
    """Sweep every limit that can hold the protected span; no cut may fall inside it."""
    start = text.index(protected)
    end = start + len(protected)
    # One more than the span: punctuation right after it belongs to the same word.
    shortest = max(len(protected) + 1, *(len(word) for word in text.split()))
    for limit in range(shortest, len(text) + 1):
        segments = segment_text(text, limit=limit, inline_speed_alpha=alpha)
        check_lossless(text, segments, limit)
        inside = [p for p in cut_positions(segments) if start < p < end]
        assert inside == [], f"limit {limit} cut {protected!r} at {inside}"
        assert any(protected in s.text for s in segments)


@pytest.mark.parametrize(
    "number", ["2.5ml", "3:30", "$1,000.50", "555-0100", "1.5", "10,000", "1990–2000", "4—5"]
)
def test_numbers_are_never_cut(number: str) -> None:
    assert_never_cut_inside(f"Take {number}. Then, wait {number} more. Done.", number)


@pytest.mark.parametrize(
    "phrase",
    [
        "Dr. Smith",
        "Mr. Jones",
        "Mrs. Jones",
        "Ms. Lee",
        "St. Louis",
        "e.g. apples",
        "i.e. pears",
        "U.S. Army",
        "vs. Spain",
        "No. 5",
        "J. R. R. Tolkien",
        "etc. and",
        "Prof. Xu",
        "p.m. today",
    ],
)
def test_abbreviations_are_never_cut_after(phrase: str) -> None:
    assert_never_cut_inside(f"We met {phrase} here. Later {phrase} left, sadly.", phrase)


def test_abbreviation_would_have_been_the_best_cut() -> None:
    segments = segment_text("Please ask Dr. Smith now.", limit=14)
    assert "Dr." not in texts(segments)[0]
    assert any(t.startswith("Dr. Smith") for t in texts(segments))


def test_initials_stay_with_the_name() -> None:
    segments = segment_text("By J. R. R. Tolkien, a book.", limit=18)
    assert texts(segments) == ["By", "J. R. R. Tolkien,", "a book."]


def test_etc_before_a_capital_ends_a_sentence() -> None:
    segments = segment_text("We had apples etc. Then we left.", limit=20)
    assert texts(segments)[0] == "We had apples etc."
    assert segments[0].boundary == Boundary.SENTENCE
    segments = segment_text("We had apples etc. and then left.", limit=20)
    assert not any(t.endswith("etc.") for t in texts(segments))
    assert all(s.boundary == Boundary.WORD for s in segments[:-1])


def test_no_is_an_abbreviation_only_before_a_number() -> None:
    segments = segment_text("He said No. Then left.", limit=12)
    assert texts(segments)[0] == "He said No."
    assert segments[0].boundary == Boundary.SENTENCE
    segments = segment_text("Room No. 5 is free.", limit=9)
    assert texts(segments)[0] == "Room"


def test_list_numbers_at_a_line_start_stay_with_their_item() -> None:
    text = "Steps:\n1. Mix well\n2. Bake"
    segments = segment_text(text, limit=9)
    check_lossless(text, segments, 9)
    assert not any(s.text.endswith(("1.", "2.")) for s in segments)


@pytest.mark.parametrize(
    "address",
    [
        "https://example.com/a.b?c=d",
        "www.x.org",
        "bob.smith@example.com",
        "https://example.com/a—b,c;d:e",
    ],
)
def test_urls_and_emails_are_never_cut(address: str) -> None:
    assert_never_cut_inside(f"See {address} for more. Or {address}, then stop.", address)


def test_sentence_end_right_after_a_url() -> None:
    segments = segment_text("Visit www.x.org. Then go.", limit=17)
    assert texts(segments) == ["Visit www.x.org.", "Then go."]
    assert segments[0].boundary == Boundary.SENTENCE


def test_no_break_space_glues() -> None:
    segments = segment_text("Pay 10\u00a0000 now", limit=8)
    assert texts(segments) == ["Pay", "10\u00a0000", "now"]


def test_markup_is_never_cut() -> None:
    assert_never_cut_inside("Say it [very slow], and then go.", "[very slow]", [0.8])
    assert_never_cut_inside("Say {h'El.o w'3rld} and then go.", "{h'El.o w'3rld}")


# --- too long to cut ----------------------------------------------------------------------------


def test_a_token_longer_than_the_limit_names_its_position() -> None:
    text = "short " + "x" * 30 + " end"
    with pytest.raises(SegmentationError) as caught:
        segment_text(text, limit=20)
    assert caught.value.position == 6
    assert "30 characters is longer than the limit of 20" in str(caught.value)


def test_a_number_is_never_split_even_when_too_long() -> None:
    with pytest.raises(SegmentationError) as caught:
        segment_text("It cost $1,000,000,000.50 in all.", limit=10)
    assert caught.value.position == 8


def test_an_abbreviation_glued_run_too_long_is_an_error() -> None:
    with pytest.raises(SegmentationError) as caught:
        segment_text("Hi. Dr. Abcdefghij", limit=10)
    assert caught.value.position == 4
    assert "no place to cut" in str(caught.value)


def test_markup_longer_than_the_limit_is_an_error() -> None:
    with pytest.raises(SegmentationError) as caught:
        segment_text("go [very slow] now", limit=8, inline_speed_alpha=[1.2])
    assert caught.value.position == 3


# --- pauses ---------------------------------------------------------------------------------------


def test_pause_at_a_cut_becomes_pause_after() -> None:
    segments = segment_text("One. <300> Two.", limit=5)
    assert [(s.text, s.pause_after_ms, s.boundary) for s in segments] == [
        ("One.", 300, Boundary.SENTENCE),
        ("Two.", None, Boundary.END),
    ]
    assert segments[0].source == "One. <300> "


def test_consecutive_pauses_at_one_cut_add_up() -> None:
    segments = segment_text("One. <300> <200>Two.", limit=5)
    assert [s.pause_after_ms for s in segments] == [500, None]


def test_pause_without_spaces_is_a_cut() -> None:
    segments = segment_text("Hello<300>world again", limit=12)
    assert texts(segments) == ["Hello", "world again"]
    assert segments[0].boundary == Boundary.PAUSE
    assert segments[0].pause_after_ms == 300


def test_pause_inside_a_segment_stays_in_its_text() -> None:
    segments = segment_text("One <300> two.", limit=100)
    assert texts(segments) == ["One <300> two."]
    assert segments[0].pause_after_ms is None


def test_pause_beats_a_clause_and_yields_to_a_sentence() -> None:
    segments = segment_text("a, b <200> c d e", limit=12)
    assert texts(segments)[0] == "a, b"
    assert segments[0].boundary == Boundary.PAUSE
    segments = segment_text("a. b <200> c d e", limit=12)
    assert texts(segments)[0] == "a."
    assert segments[0].boundary == Boundary.SENTENCE


def test_pauses_as_cuts_cut_at_every_marker() -> None:
    text = "Hello <300> world <200> again and Dr. <100> Who."
    segments = segment_text(text, pauses_as_cuts=True)
    assert texts(segments) == ["Hello", "world", "again and Dr.", "Who."]
    assert [s.pause_after_ms for s in segments] == [300, 200, 100, None]
    assert all("<" not in s.text for s in segments)


def test_lead_and_trailing_pauses() -> None:
    text = "<500> <250>Hello there. <1000>\n"
    segments = segment_text(text)
    assert texts(segments) == ["Hello there."]
    assert lead_pause_ms(segments) == 750
    assert segments[-1].pause_after_ms == 1000
    assert segments[-1].boundary == Boundary.END
    assert lead_pause_ms(segment_text("Hello <20>")) == 0
    assert lead_pause_ms(()) == 0


def test_pause_at_a_paragraph_break() -> None:
    segments = segment_text("A.\n\n<200>\n\nB.", limit=2)
    assert [(s.text, s.pause_after_ms, s.boundary) for s in segments] == [
        ("A.", 200, Boundary.PARAGRAPH),
        ("B.", None, Boundary.END),
    ]


# --- inline speed ---------------------------------------------------------------------------------


def test_inline_speed_values_follow_their_words() -> None:
    segments = segment_text("[a] b. [c] d [e].", limit=6, inline_speed_alpha=[1.0, 2.0, 3.0])
    assert [(s.text, s.inline_speed_alpha) for s in segments] == [
        ("[a] b.", (1.0,)),
        ("[c] d", (2.0,)),
        ("[e].", (3.0,)),
    ]


def test_segment_without_bracketed_words_has_no_values() -> None:
    segments = segment_text("Plain words. And [one].", limit=12, inline_speed_alpha=[0.5])
    assert [s.inline_speed_alpha for s in segments] == [(), (0.5,)]


def test_inline_speed_count_mismatch_is_an_error() -> None:
    with pytest.raises(MarkupError) as caught:
        segment_text("This is [slow] and [fast].", inline_speed_alpha=[3.0])
    assert caught.value.position == 19
    assert "2 bracketed [word]s but inlineSpeedAlpha has 1 value" in str(caught.value)
    with pytest.raises(MarkupError):
        segment_text("No brackets here.", inline_speed_alpha=[3.0])


def test_malformed_markup_reaches_the_caller() -> None:
    with pytest.raises(MarkupError) as caught:
        segment_text("a < b")
    assert caught.value.position == 2


# --- unicode --------------------------------------------------------------------------------------


def test_cjk_sentence_punctuation_gives_boundaries() -> None:
    text = "你好世界。今天天气很好！我们走吧，好吗？"
    segments = segment_text(text, limit=8)
    assert texts(segments) == ["你好世界。", "今天天气很好！", "我们走吧，好吗？"]
    assert [s.boundary for s in segments] == [Boundary.SENTENCE, Boundary.SENTENCE, Boundary.END]


def test_cjk_without_punctuation_over_the_limit_is_an_error() -> None:
    with pytest.raises(SegmentationError) as caught:
        segment_text("很" * 12, limit=10)
    assert caught.value.position == 0


def test_characters_are_counted_as_python_str_length() -> None:
    text = "😀" * 5 + " " + "é" * 5
    segments = segment_text(text, limit=5)
    assert texts(segments) == ["😀" * 5, "é" * 5]
