"""A book's XHTML to readable text, and long texts split into chapters with ids and titles."""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.manifest.chapters import (
    Chapter,
    Split,
    SplitProblem,
    chapter_ids,
    parse_split,
    slug,
    split_text,
)
from pipeline.manifest.models import MAX_ID_CHARS, SPLIT_SECONDS
from pipeline.manifest.paths import check_script_id
from pipeline.manifest.xhtml import BrokenDocument, extract
from pipeline.markup import Text, as_prose, parse


def page(body: str) -> bytes:
    """An XHTML document around `body`, as EPUB 3 writes one."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml" '
        'xmlns:epub="http://www.idpf.org/2007/ops"><head><title>Head title</title>'
        f"<style>p {{ color: red }}</style></head><body>{body}</body></html>"
    ).encode()


# Words as a book may hold them: any letters, digits and punctuation, markup's characters too.
_WORDS = st.lists(
    st.text(
        alphabet=st.characters(
            categories=("L", "N", "P", "S"), exclude_characters="\u00ad", max_codepoint=0x2FFF
        ),
        min_size=1,
        max_size=12,
    ),
    min_size=1,
    max_size=12,
)


@given(paragraphs=st.lists(_WORDS, min_size=1, max_size=5))
def test_words_in_paragraphs_come_back_as_the_same_words_and_never_as_markup(
    paragraphs: list[list[str]],
) -> None:
    body = "".join(
        "<p>" + "\n  ".join(html.escape(w, quote=False) for w in words) + "</p>"
        for words in paragraphs
    )

    text = extract(page(body)).text

    assert text.split("\n\n") == [" ".join(as_prose(w) for w in words) for words in paragraphs]
    assert all(isinstance(token, Text) for token in parse(text))
    assert not re.search(r"[<>\[\]{}]", text)


@given(words=_WORDS)
def test_inline_markup_leaves_only_its_words(words: list[str]) -> None:
    tags = ["em", "strong", "span", "i", "b", "a"]
    body = "<p>" + " ".join(
        f"<{tags[i % 6]}>{html.escape(w, quote=False)}</{tags[i % 6]}>" for i, w in enumerate(words)
    )
    text = extract(page(body + "</p>")).text

    assert text == " ".join(as_prose(w) for w in words)


def test_notes_page_breaks_scripts_and_styles_are_never_read() -> None:
    found = extract(
        page(
            "<section epub:type='chapter'><h2>The <em>First</em> Night</h2>"
            "<p>It was late.<a epub:type='noteref' href='#n1'>1</a> She waited"
            "<sup><a href='notes.xhtml#n2'>[2]</a></sup> by the door<a href='#n3'>*</a>."
            "<span epub:type='pagebreak' id='p7'>7</span> Nobody came."
            "<span role='doc-pagebreak' aria-label='8'/></p>"
            "<script>var x = '<p>never</p>';</script>"
            "<p>See <a href='#map'>the map</a> in <ruby>東京<rt>とうきょう</rt></ruby>.</p>"
            "<aside epub:type='footnote' id='n1'><p>A note body.</p></aside>"
            "<div role='doc-endnotes'><p>An endnote.</p></div>"
            "<section epub:type='footnotes'><p>More notes.</p></section></section>"
        )
    )

    assert found.text == (
        "The First Night\n\nIt was late. She waited by the door. Nobody came.\n\n"
        "See the map in 東京."
    )
    assert found.heading == "The First Night"
    assert "chapter" in found.types


def test_line_breaks_blocks_and_entities_keep_the_books_structure() -> None:
    found = extract(
        page(
            "<h1>Poems</h1><div><p>Roses are red,<br/>violets are blue.</p></div>"
            "<ul><li>one&nbsp;thing</li><li>an&shy;other &amp; more</li></ul>"
            "<pre>line one\nline two</pre><p>  spaced\n\t out  </p>"
        )
    )

    assert found.text == (
        "Poems\n\nRoses are red,\nviolets are blue.\n\none\u00a0thing\n\nanother & more\n\n"
        "line one\nline two\n\nspaced out"
    )


def test_an_image_page_has_no_text_but_says_it_has_an_image() -> None:
    found = extract(page("<div><img src='cover.jpg' alt='Cover'/></div>"))

    assert (found.text, found.has_image) == ("", True)


@pytest.mark.parametrize(
    "data",
    [
        b"<html><body><p>unclosed</body></html>",
        b"not xml at all",
        page("<p>&undefinedentity;</p>"),
    ],
)
def test_broken_xhtml_is_refused_with_where(data: bytes) -> None:
    with pytest.raises(BrokenDocument, match="line"):
        extract(data)


def test_entities_are_never_expanded() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE html [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b'<html xmlns="http://www.w3.org/1999/xhtml"><body><p>x &c; y</p></body></html>'
    )

    assert extract(bomb).text == "x y"


@given(text=st.text(max_size=60))
def test_prose_never_parses_as_markup(text: str) -> None:
    prose = as_prose(text)

    assert [t.text for t in parse(prose) if isinstance(t, Text)] == ([prose] if prose else [])


# --- splitting -------------------------------------------------------------------------------

COURSE = """\
---
title: The course
---
Welcome to the *course*.

# Getting started

Install the [tool](https://example.com/tool) first. ![a screenshot](shot.png)

```
# not a heading {code}
```

    # nor this, indented code

- # nor this, in a list

> # nor this, in a quote

| step | time |
|------|------|
| one  | 5 min |

# Next <300> steps
Done **soon**.
"""


def test_markdown_splits_at_top_level_headings_and_strips_its_syntax() -> None:
    chapters = split_text(COURSE, parse_split("headings"))

    assert [c.title for c in chapters] == [
        "Welcome to the course.",
        "Getting started",
        "Next <300> steps",
    ]
    assert chapters[0].text == "Welcome to the course."
    assert chapters[1].text == (
        "Getting started\n\nInstall the tool first.\n\nnor this, in a list\n\nnor this, in a "
        "quote\n\nstep, time\n\none, 5 min"
    )
    # Rime's markup written in the prose is the script's own.
    assert chapters[2].text == "Next <300> steps\n\nDone soon."
    assert [c.origin for c in chapters] == ["line 1", "line 6", "line 24"]


def test_headings_split_at_the_files_top_level_unless_told_a_level() -> None:
    text = "# Course\n\nIntro.\n\n## Lesson one\n\nA.\n\n## Lesson two\n\nB.\n"

    top = split_text(text, parse_split("headings"))
    deeper = split_text(text, parse_split({"headings": 2}))
    only_lessons = split_text("## One\n\nA.\n\n### Part\n\nB.\n\n## Two\n\nC.\n", Split())

    assert [c.title for c in top] == ["Course"]
    assert [c.title for c in deeper] == ["Course", "Lesson one", "Lesson two"]
    assert [c.text for c in deeper] == ["Course\n\nIntro.", "Lesson one\n\nA.", "Lesson two\n\nB."]
    assert [c.title for c in only_lessons] == ["One", "Two"]


def test_a_regex_starts_a_chapter_at_each_matching_line() -> None:
    text = "Course notes\n\nLesson 1: Hello\nSay [slow] hello.\n\nLesson 2: Bye\nSay bye.\n"

    chapters = split_text(text, parse_split({"regex": r"^Lesson \d+"}))

    assert chapters == (
        Chapter("Course notes", "Course notes", "line 1"),
        Chapter("Lesson 1: Hello", "Lesson 1: Hello\nSay [slow] hello.", "line 3"),
        Chapter("Lesson 2: Bye", "Lesson 2: Bye\nSay bye.", "line 6"),
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("chapters", "must be headings"),
        ({"headings": 7}, "from 1 to 6"),
        ({"headings": True}, "from 1 to 6"),
        ({"regex": "("}, "not a valid regular expression"),
        ({"regex": ""}, "non-empty"),
        ({"regex": "x" * 501}, "longer than 500"),
        ({"regex": "a", "headings": 1}, "must be headings"),
    ],
)
def test_a_bad_split_says_what_is_accepted(value: object, message: str) -> None:
    with pytest.raises(SplitProblem, match=re.escape(message)):
        parse_split(value)


def test_a_split_that_finds_no_cut_is_refused() -> None:
    with pytest.raises(SplitProblem, match="matches no line"):
        split_text("one\ntwo\n", parse_split({"regex": "^Chapter"}))
    with pytest.raises(SplitProblem, match="no Markdown heading"):
        split_text("```\n# code\n```\ntext\n", Split())


def test_a_regex_that_backtracks_without_end_is_stopped() -> None:
    # Without the timeout this search would outlive the test's own timeout by ages.
    with pytest.raises(SplitProblem, match=rf"more than {SPLIT_SECONDS:g} s .* simplify it"):
        split_text(("a" * 60 + "b\n") * 3, parse_split({"regex": r"^(a|aa)+$"}))


def test_ids_are_numbered_to_the_width_the_count_needs() -> None:
    nine = [Chapter(f"Part {n}", "x", "") for n in range(9)]
    hundred = [Chapter("Kapitel Über Straße", "x", "") for _ in range(100)]

    assert chapter_ids("book", nine)[0] == "book/01-part-0"
    assert chapter_ids("b", hundred)[99] == "b/100-kapitel-uber-strae"
    assert chapter_ids("b", hundred)[0] == "b/001-kapitel-uber-strae"
    assert chapter_ids("b", [Chapter("日本語", "x", "")]) == ["b/01-chapter"]


@given(entry=st.from_regex(r"[a-z][a-z0-9/]{0,198}[a-z]", fullmatch=True), title=st.text())
def test_every_chapter_id_is_a_safe_script_id(entry: str, title: str) -> None:
    entry = re.sub("/+", "/", entry)
    [made] = chapter_ids(entry, [Chapter(title, "x", "")])

    if len(entry) < MAX_ID_CHARS - 4:
        check_script_id(made)
        assert len(made) <= MAX_ID_CHARS
    assert re.fullmatch(r"[a-z0-9-]*", slug(title))
