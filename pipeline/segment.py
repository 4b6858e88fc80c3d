"""Cut a script into Rime requests of at most `limit` characters, losslessly and markup-aware.

The text is read as atoms (runs without whitespace; markup counts as part of an atom, so
`[very slow]` is never broken) separated by gaps (whitespace and `<ms>` pause markers). Dashes
and CJK punctuation also end an atom with an empty gap after them. A cut is always made at the
end of a gap, so the whitespace and pause markers at a cut go with the earlier segment's source.

Each gap gets a level: paragraph (two or more newlines) > sentence (. ? ! … 。！？, closing
quotes allowed) > pause (a marker) > clause (, ; : ，、；：, dashes, a spaced " - ") > word.
Some gaps are no cut at all, unless they hold a pause marker or a blank line: after an
abbreviation (`Dr.`, `e.g.`, `U.S.`, initials like `J.`, `etc.` before a lowercase word, `No.`
before a number), after a list number at a line start (`1.`), and a gap of no-break spaces only
(`10\u00a0000`). Numbers, URLs and e-mail addresses hold no whitespace, so each is one atom and
never split; a dash between digits (`1990–2000`) does not end an atom, and no dash or CJK mark
ends one inside a URL or e-mail address.

Packing: a gap's strength is its level, then a hash of the two atoms either side of it. A gap
is a cut when the stretch of text between the nearest stronger gaps on its left and on its right
(or the text's ends) is longer than the limit. That is the same as splitting the text at its
strongest gap, and each part again at its own strongest gap, until every part fits; so a weaker
gap is cut only where the stronger ones around it are more than a request apart (a word gap only
inside a sentence longer than the limit). Whether a gap is a cut depends only on the text within
`limit` characters of it: an edit moves no cut farther away than that, so changing one sentence
of a book re-synthesizes the segment it is in and at most a neighbour or two
(`bench/edit_locality.py`), where packing each segment as full as it goes from the previous cut
would shift every later cut of a long paragraph. With `pauses_as_cuts`, every pause marker is a
cut and the rule applies between them.

Decisions where a script is odd:
- A text with nothing to speak (empty, or only whitespace, invisible characters such as
  zero-width spaces, and pause markup) raises SegmentationError: Rime would be asked to speak
  nothing, and zero segments could not give the text back when joined.
- Pause markers side by side (`<60000><60000>`) are one silence, held to `MAX_PAUSE_MS` too.
- Pause markers before the first word are cut from the first request's text; their sum is
  `lead_pause_ms(segments)`. Markers after the last word are the last segment's pause_after_ms.
- One atom (or a run glued by abbreviations) longer than the limit raises SegmentationError;
  there is no hard cut inside a word, number or CJK run without punctuation.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pipeline.addresses import is_address
from pipeline.errors import SegmentationError
from pipeline.markup import (
    MAX_PAUSE_MS,
    Pause,
    Phonemes,
    SpeedWord,
    Text,
    check_inline_speed,
    parse,
)
from pipeline.rime.models import DEFAULT_MAX_CHARS


class Boundary(StrEnum):
    """Why a segment ends where it does, weakest first."""

    WORD = "word"  # whitespace between two words
    CLAUSE = "clause"  # after , ; : (and CJK ，、；：) or a dash
    PAUSE = "pause"  # at `<ms>` pause markup, with nothing stronger there
    SENTENCE = "sentence"  # after . ? ! … (and CJK 。！？)
    PARAGRAPH = "paragraph"  # at a blank line
    END = "end"  # the end of the text


_LEVELS = (Boundary.WORD, Boundary.CLAUSE, Boundary.PAUSE, Boundary.SENTENCE, Boundary.PARAGRAPH)
_RANK = {b: i + 1 for i, b in enumerate(_LEVELS)}
_NO_CUT = 0


@dataclass(frozen=True)
class TextSegment:
    """One request's worth of a script."""

    source: str  # exact slice of the input; the sources of all segments join to the input
    start: int  # offset of source in the input
    text: str  # the request text: source without its boundary pause markers and outer spaces
    pause_after_ms: int | None  # pause markup at the cut after this segment; None if none
    boundary: Boundary  # the kind of cut after this segment
    inline_speed_alpha: tuple[float, ...]  # the values of this segment's own [words], in order

    @property
    def end(self) -> int:
        """Offset just past this segment's source."""
        return self.start + len(self.source)


_CLOSING = "\"'”’»)」』）》"
_OPENING = "\"'“‘«(¿¡「『（《"
_SENTENCE_PUNCT = ".!?…。！？｡"
_CLAUSE_PUNCT = ",;:，、；：—–"
# No-break spaces separate atoms but glue them: `10 000`, `Dr. Smith` are never cut.
_BREAKING_WS = re.compile(r"[^\S\u00a0\u2007\u202f]")
_HYPHENS = re.compile(r"-+")
_SPACES = re.compile(r"\s+")
# Split points inside an atom: after a dash run or after CJK punctuation (which takes no space).
_SPLIT = re.compile(rf"[—–]+|[。！？｡，、；：]+[{_CLOSING}]*")
_SPLIT_CHARS = re.compile(r"[—–。！？｡，、；：]")
_PAUSE_MARK = re.compile(r"<([0-9]+)>")
_LEAD = re.compile(r"(?:\s|<[0-9]+>)*")

# Never a sentence end: titles and Latin shorthands that a name or phrase always follows.
_HARD_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "st", "mt", "rev", "fr", "gen", "capt", "lt", "col",
        "sgt", "hon", "vs", "e.g", "i.e", "cf", "approx", "fig", "vol", "pp", "ca", "dept", "ft",
    }
)  # fmt: skip
# A sentence end only when the next word is not lowercase ("etc. and" vs "etc. Then").
_SOFT_ABBREVIATIONS = frozenset({"etc", "inc", "ltd", "co", "corp", "jr", "sr", "a.m", "p.m"})
_LETTER_CHAIN = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
_LIST_NUMBER = re.compile(r"\d+\.")


def segment_text(
    text: str,
    *,
    limit: int = DEFAULT_MAX_CHARS,
    inline_speed_alpha: Sequence[float] = (),
    pauses_as_cuts: bool = False,
) -> tuple[TextSegment, ...]:
    """Cut `text` into segments whose request text has 1..`limit` characters."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    tokens = parse(text)
    check_inline_speed(tokens, inline_speed_alpha, len(text))
    layout = _layout(text, tokens)
    if not any(_speakable(text, a, b) for a, b in zip(layout.starts, layout.ends, strict=True)):
        raise SegmentationError(
            "nothing to speak: the text is empty or only whitespace, invisible characters "
            "(like zero-width spaces) and pause markup",
            0,
        )
    levels = _gap_levels(text, layout)
    return _pack(text, layout, levels, limit, tuple(inline_speed_alpha), pauses_as_cuts)


def _speakable(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] holds a character that is not a control, format or separator."""
    return any(unicodedata.category(ch)[0] not in "CZ" for ch in text[start:end])


def lead_pause_ms(segments: Sequence[TextSegment]) -> int:
    """Milliseconds of pause markup before the first word (cut from the first request)."""
    if not segments:
        return 0
    lead = _LEAD.match(segments[0].source)
    assert lead is not None  # the pattern matches the empty string
    return sum(int(ms) for ms in _PAUSE_MARK.findall(lead.group()))


@dataclass
class _Layout:
    """Atoms as parallel offset lists, the pause markup in the gaps, and [word] positions."""

    starts: list[int]
    ends: list[int]
    gap_ms: list[int | None]  # gap k lies between atom k and atom k + 1
    trailing_ms: int | None
    markup_starts: list[int]
    markup_ends: list[int]
    speed_starts: list[int]


def _layout(text: str, tokens: Sequence[Text | Pause | Phonemes | SpeedWord]) -> _Layout:
    layout = _Layout([], [], [], None, [], [], [])
    pending: int | None = None  # pause ms in the gap being read
    in_atom = False

    def content(start: int, end: int) -> None:
        nonlocal pending, in_atom
        if in_atom:
            layout.ends[-1] = end
            return
        if layout.starts:
            layout.gap_ms.append(pending)
        layout.starts.append(start)
        layout.ends.append(end)
        pending = None
        in_atom = True

    for token in tokens:
        if isinstance(token, Text):
            pos = token.start
            for space in _SPACES.finditer(text, token.start, token.end):
                if space.start() > pos:
                    content(pos, space.start())
                in_atom = False
                pos = space.end()
            if pos < token.end:
                content(pos, token.end)
        elif isinstance(token, Pause):
            pending = (pending or 0) + token.ms
            if pending > MAX_PAUSE_MS:
                # Markers side by side are one silence; it has the limit of one marker.
                raise SegmentationError(
                    f"the pauses written together here add up to {pending} milliseconds; "
                    f"the limit for one place is {MAX_PAUSE_MS}",
                    token.start,
                )
            in_atom = False
        else:
            layout.markup_starts.append(token.start)
            layout.markup_ends.append(token.end)
            if isinstance(token, SpeedWord):
                layout.speed_starts.append(token.start)
            content(token.start, token.end)
    layout.trailing_ms = pending
    _split_atoms(text, layout)
    return layout


def _split_atoms(text: str, layout: _Layout) -> None:
    """End atoms after dashes and CJK punctuation, which need no space before the next word."""
    starts: list[int] = []
    ends: list[int] = []
    gap_ms: list[int | None] = []
    for k, (a, b) in enumerate(zip(layout.starts, layout.ends, strict=True)):
        if k:
            gap_ms.append(layout.gap_ms[k - 1])
        piece = a
        if _SPLIT_CHARS.search(text, a, b) and not is_address(text, a, b):
            for m in _SPLIT.finditer(text, a, b):
                cut = m.end()
                if cut >= b or _inside_markup(layout, cut) or _between_digits(text, m):
                    continue
                starts.append(piece)
                ends.append(cut)
                gap_ms.append(None)
                piece = cut
        starts.append(piece)
        ends.append(b)
    layout.starts, layout.ends, layout.gap_ms = starts, ends, gap_ms


def _inside_markup(layout: _Layout, pos: int) -> bool:
    i = bisect_right(layout.markup_starts, pos) - 1
    return i >= 0 and layout.markup_starts[i] < pos < layout.markup_ends[i]


def _between_digits(text: str, m: re.Match[str]) -> bool:
    """A dash in a number range or phone number (`1990–2000`) is not a clause break."""
    if text[m.start()] not in "—–":
        return False
    return m.start() > 0 and text[m.start() - 1].isdigit() and text[m.end()].isdigit()


def _gap_levels(text: str, layout: _Layout) -> list[int]:
    levels: list[int] = []
    starts, ends = layout.starts, layout.ends
    for k in range(len(starts) - 1):
        prev_start, prev_end, next_start = starts[k], ends[k], starts[k + 1]
        level = _RANK[Boundary.WORD]
        punct = _final_punct(text, prev_start, prev_end)
        if punct and punct in _SENTENCE_PUNCT:
            glued = _glues(text, prev_start, prev_end, next_start)
            level = _NO_CUT if glued else _RANK[Boundary.SENTENCE]
        elif (punct and punct in _CLAUSE_PUNCT) or _HYPHENS.fullmatch(text, prev_start, prev_end):
            level = _RANK[Boundary.CLAUSE]
        if prev_end < next_start and not _BREAKING_WS.search(text, prev_end, next_start):
            level = _NO_CUT
        if layout.gap_ms[k] is not None:
            level = max(level, _RANK[Boundary.PAUSE])
        if text.count("\n", prev_end, next_start) >= 2:
            level = _RANK[Boundary.PARAGRAPH]
        levels.append(level)
    return levels


def _final_punct(text: str, start: int, end: int) -> str:
    """The last character of an atom before any closing quotes or brackets ("" if none)."""
    while end > start and text[end - 1] in _CLOSING:
        end -= 1
    return text[end - 1] if end > start else ""


def _glues(text: str, start: int, end: int, next_start: int) -> bool:
    """Whether the period ending text[start:end] belongs to an abbreviation, not a sentence."""
    if text[end - 1] != ".":
        return False
    word = text[start : end - 1].lstrip(_OPENING)
    folded = word.casefold()
    following = text[next_start : next_start + 2].lstrip(_OPENING)[:1]
    if folded in _HARD_ABBREVIATIONS:
        return True
    if folded in _SOFT_ABBREVIATIONS:
        return following.islower() or following.isdigit()
    if folded == "no":
        return following.isdigit() or following == "#"
    if _LETTER_CHAIN.fullmatch(word):
        return True
    if len(word) == 1 and word.isupper() and word != "I":
        return True
    return bool(_LIST_NUMBER.fullmatch(text, start, end)) and _at_line_start(text, start)


def _at_line_start(text: str, pos: int) -> bool:
    i = pos - 1
    while i >= 0 and text[i] in " \t":
        i -= 1
    return i < 0 or text[i] == "\n"


def _pack(
    text: str,
    layout: _Layout,
    levels: list[int],
    limit: int,
    alpha: tuple[float, ...],
    pauses_as_cuts: bool,
) -> tuple[TextSegment, ...]:
    starts, ends = layout.starts, layout.ends
    cuts = _cuts(text, layout, levels, limit, pauses_as_cuts)
    segments: list[TextSegment] = []
    seg_start = 0
    first = 0
    for cut in [*cuts, None]:
        if cut is None:
            seg_end, last_atom, pause, boundary = (
                len(text),
                len(starts) - 1,
                layout.trailing_ms,
                Boundary.END,
            )
        else:
            seg_end, last_atom, pause = starts[cut + 1], cut, layout.gap_ms[cut]
            boundary = _LEVELS[levels[cut] - 1]
        if ends[last_atom] - starts[first] > limit:
            raise _too_long(text, layout, first, last_atom, limit)
        lo = bisect_left(layout.speed_starts, seg_start)
        hi = bisect_left(layout.speed_starts, seg_end)
        segments.append(
            TextSegment(
                source=text[seg_start:seg_end],
                start=seg_start,
                text=text[starts[first] : ends[last_atom]],
                pause_after_ms=pause,
                boundary=boundary,
                inline_speed_alpha=alpha[lo:hi],
            )
        )
        if cut is not None:
            seg_start, first = seg_end, cut + 1
    return tuple(segments)


def _cuts(
    text: str, layout: _Layout, levels: list[int], limit: int, pauses_as_cuts: bool
) -> list[int]:
    """The gaps that are cuts, in order (see the packing rule in the module docstring)."""
    starts, ends = layout.starts, layout.ends
    forced = _FORCED if pauses_as_cuts else None
    gaps: list[int] = []
    strength: list[tuple[int, int, int]] = []
    seen: dict[tuple[int, int], int] = {}  # how often each (level, hash) came before
    for k, level in enumerate(levels):
        if level == _NO_CUT:
            continue
        if forced is not None and layout.gap_ms[k] is not None:
            key = (forced, 0)
        else:
            key = (level, zlib.crc32(text[starts[k] : ends[k + 1]].encode()))
        count = seen[key] = seen.get(key, 0) + 1
        gaps.append(k)
        # Where the same two words meet again ("a a a a", a refrain) the hashes tie; the
        # ruler of the occurrence (its trailing zeros) splits such a run in halves, as
        # nothing in the text itself can tell those gaps apart.
        strength.append((*key, (count & -count).bit_length()))
    # Nearest stronger gap either side, by one pass with a stack of ever weaker gaps; equal
    # strengths (a hash collision) count the left one as stronger.
    left = [-1] * len(gaps)  # index into `gaps`, -1 for the text's start
    right = [len(gaps)] * len(gaps)
    stack: list[int] = []
    for j, s in enumerate(strength):
        while stack and strength[stack[-1]] < s:
            right[stack.pop()] = j
        left[j] = stack[-1] if stack else -1
        stack.append(j)
    last = len(starts) - 1
    cuts = []
    for j, k in enumerate(gaps):
        if strength[j][0] == forced:
            cuts.append(k)
            continue
        first = 0 if left[j] < 0 else gaps[left[j]] + 1
        end_atom = last if right[j] == len(gaps) else gaps[right[j]]
        if ends[end_atom] - starts[first] > limit:
            cuts.append(k)
    return cuts


# Above every level: with pauses_as_cuts a pause marker is always a cut.
_FORCED = _RANK[Boundary.PARAGRAPH] + 1


def _too_long(text: str, layout: _Layout, first: int, last: int, limit: int) -> SegmentationError:
    """Why atoms first..last, with no gap to cut between them, cannot be one request."""
    starts, ends = layout.starts, layout.ends
    for k in range(first, last + 1):
        if ends[k] - starts[k] > limit:
            return SegmentationError(
                f"a single word of {ends[k] - starts[k]} characters is longer than the limit "
                f"of {limit} ({_preview(text, starts[k])})",
                starts[k],
            )
    return SegmentationError(
        f"no place to cut within the limit of {limit} characters ({_preview(text, starts[first])})",
        starts[first],
    )


def _preview(text: str, start: int) -> str:
    snippet = text[start : start + 30]
    return repr(snippet + "…") if len(text) > start + 30 else repr(snippet)
