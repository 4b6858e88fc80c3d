"""Rime's inline markup turned into a plan espeak can speak: SSML sentences and silences.

How the engine reads the markup (Rime documents the syntax, not every corner):
- `<200>`: with `pauseBetweenBrackets` on a model that honours pauses (Mist), exactly 200 ms of
  silence; otherwise the marker is dropped and nothing is inserted (Rime ignores it there too).
- `{h'El.o}`: with `phonemizeBetweenBrackets`, spoken through espeak's `[[...]]` phoneme input
  after dropping Rime's syllable dots and stress digits. Rime's alphabet is not espeak's, so this
  is best effort: it sounds like a word, not necessarily the right one. Without the flag the
  braces are dropped and the content is read as text.
- `[word]`: always read without its brackets; the n-th bracketed word takes the n-th value of
  `inlineSpeedAlpha` (above 1 slower, below 1 faster, through SSML `<prosody rate>`). Words
  beyond the list keep the normal speed; extra values are ignored.
Each sentence becomes one espeak call, so long texts stream sentence by sentence.

Text from several WebSocket messages is planned as `Span`s, each with the markup options of the
message it came in. Neighbouring spans with the same options are joined before the markup is
read, so a bracket split across two messages still counts and the connection's
`inlineSpeedAlpha` runs across them (within one synthesis, as for one request); a span with its
own `inlineSpeedAlpha` is read on its own, so its values go to its own bracketed words, the
first value to its first. Sentences run on across spans: an option change inside a sentence
does not cut it in two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from xml.sax.saxutils import escape

from rime_local.sentences import last_boundary, split_sentences

_MARKUP = re.compile(r"<(\d+)>|\{([^{}]*)\}|\[([^\[\]]*)\]")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class WordSpan:
    """A word as the user wrote it and where it sits in the SSML string (0-based, end excl.)."""

    word: str
    start: int
    end: int


@dataclass(frozen=True)
class Sentence:
    """One espeak call: SSML plus the words it contains."""

    ssml: str
    words: tuple[WordSpan, ...]


@dataclass(frozen=True)
class Silence:
    """Inserted silence, in milliseconds."""

    ms: int


PlanItem = Sentence | Silence


@dataclass(frozen=True)
class MarkupOptions:
    """Which markup the request switched on, and whether the model honours pauses."""

    pauses: bool = False
    phonemes: bool = False
    inline_speeds: tuple[float, ...] = ()


@dataclass(frozen=True)
class Span:
    """Text and the markup options it was sent with.

    `alone`: the options came with this text only (its own `inlineSpeedAlpha`), so the span is
    never joined with its neighbours.
    """

    text: str
    options: MarkupOptions
    alone: bool = False


def split_span(span: Span, at: int) -> tuple[Span, Span]:
    """`span` cut at character `at`; a span's own speeds go with the bracketed words they fit."""
    head, tail = span.text[:at], span.text[at:]
    tail_options = span.options
    if span.alone:
        used = sum(match.group(3) is not None for match in _MARKUP.finditer(head))
        tail_options = replace(span.options, inline_speeds=span.options.inline_speeds[used:])
    return Span(head, span.options, span.alone), Span(tail, tail_options, span.alone)


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Phonemes:
    raw: str


@dataclass(frozen=True)
class _Timed:
    text: str
    speed: float | None


_Inline = _Text | _Phonemes | _Timed


def espeak_phonemes(raw: str) -> str:
    """Rime phoneme text to espeak mnemonics, best effort: drop syllable dots and digits."""
    return re.sub(r"[.\d\s]", "", raw)


def _tokens(text: str, options: MarkupOptions) -> list[_Inline | Silence]:
    out: list[_Inline | Silence] = []
    speeds = iter(options.inline_speeds)
    pos = 0
    for match in _MARKUP.finditer(text):
        if match.start() > pos:
            out.append(_Text(text[pos : match.start()]))
        pause, phonemes, timed = match.groups()
        if pause is not None:
            if options.pauses and int(pause) > 0:
                out.append(Silence(int(pause)))
        elif phonemes is not None:
            out.append(_Phonemes(phonemes) if options.phonemes else _Text(phonemes))
        else:
            out.append(_Timed(timed or "", next(speeds, None)))
        pos = match.end()
    if pos < len(text):
        out.append(_Text(text[pos:]))
    return out


class _Builder:
    def __init__(self) -> None:
        self.parts: list[str] = ["<speak>"]
        self.length = len("<speak>")
        self.words: list[WordSpan] = []

    def raw(self, fragment: str) -> None:
        self.parts.append(fragment)
        self.length += len(fragment)

    def text(self, text: str) -> None:
        pos = 0
        for match in _WORD.finditer(text):
            self.raw(escape(text[pos : match.start()]))
            start = self.length
            self.raw(escape(match.group()))
            self.words.append(WordSpan(match.group(), start, self.length))
            pos = match.end()
        self.raw(escape(text[pos:]))

    def empty(self) -> bool:
        return not self.words

    def build(self) -> Sentence:
        return Sentence("".join([*self.parts, "</speak>"]), tuple(self.words))


def _joined(spans: Sequence[Span]) -> list[Span]:
    """Neighbouring spans with the same options as one, unless either stands alone."""
    out: list[Span] = []
    for span in spans:
        last = out[-1] if out else None
        if last is not None and not (last.alone or span.alone) and last.options == span.options:
            out[-1] = Span(last.text + span.text, last.options)
        else:
            out.append(span)
    return out


def plan(text: str, options: MarkupOptions) -> list[PlanItem]:
    """The sentences and silences that speak `text`, in order."""
    return plan_spans([Span(text, options)])


def plan_spans(spans: Sequence[Span]) -> list[PlanItem]:
    """The sentences and silences that speak the spans one after another, in order."""
    tokens = [token for span in _joined(spans) for token in _tokens(span.text, span.options)]
    items: list[PlanItem] = []
    builder = _Builder()

    def close() -> None:
        nonlocal builder
        if not builder.empty():
            items.append(builder.build())
        builder = _Builder()

    for token in tokens:
        if isinstance(token, Silence):
            close()
            items.append(token)
        elif isinstance(token, _Text):
            pieces = split_sentences(token.text)
            for i, piece in enumerate(pieces):
                builder.text(piece)
                # A piece ends a sentence unless it is the trailing, unfinished remainder.
                if i < len(pieces) - 1 or _ends_sentence(piece):
                    close()
        elif isinstance(token, _Phonemes):
            builder.raw(" ")
            start = builder.length
            builder.raw(f"[[{escape(espeak_phonemes(token.raw))}]]")
            builder.words.append(WordSpan(token.raw, start, builder.length))
        else:
            if token.speed is not None and token.speed > 0:
                builder.raw(f'<prosody rate="{round(100 / token.speed)}%">')
                builder.text(token.text)
                builder.raw("</prosody>")
            else:
                builder.text(token.text)
    close()
    return items


def _ends_sentence(piece: str) -> bool:
    stripped = piece.rstrip()
    return bool(stripped) and last_boundary(stripped) == len(stripped)
