"""Pronunciation lexicons: words a script says differently, rewritten before it is segmented.

An entry maps a key (a word, or a few words) to an alias, plain text spoken in its place
(`SQL: sequel`), or to phonemes in Rime's phonetic alphabet (`Rime: "{r1Ym}"`), which Rime reads
when `phonemizeBetweenBrackets` is on, on Mist and Mist v2 only.

How a key matches, and why:
- Whole words. A word character is a letter, a digit, a combining mark or `_`. A key starts with
  a word character; no word character may stand just before it, nor just after a key that ends
  with one. A word joined to it by `.`, `@`, `/`, `\\` or `:` counts as part of it too, so
  `rime.ai`, `v1.2` and `docs/rime` are left alone. An apostrophe or a hyphen ends a word:
  `Rime's` and `Rime-based` are matched, as names and brands want.
- Case. A key without capital letters matches in any case (`rime`: rime, Rime, RIME); a key
  with a capital matches exactly as written (`SQL` leaves the word "sql" alone). Two keys that
  only letter case tells apart, one of them matching in any case, would both claim the same
  words: refused.
- Longest first. Reading left to right, at each word the longest key that matches wins
  (`New York City` before `New York`), and what a replacement wrote is never read again.
- A space in a key matches any run of spaces and tabs holding at most one line break, so a key
  found across a wrapped line still matches; a blank line (a paragraph break) never does.
- Never inside markup (`<200>`, `{...}`, `[...]`), URLs or e-mail addresses
  (`pipeline.addresses`). Keys are compared in Unicode's composed form (NFC), as editors write
  text.

A rewrite keeps a map back to the written text, so a problem found later (a word too long to
segment) is reported where the script wrote it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import regex

from pipeline.addresses import is_address
from pipeline.markup import Text, parse

# --- limits -----------------------------------------------------------------------------------
MAX_ENTRIES = 10_000  # one script's lexicon, the job's and its own together
MAX_KEY_CHARS = 100
MAX_KEY_WORDS = 8
MAX_ALIAS_CHARS = 200
MAX_PHONEMES_CHARS = 100
MAX_LEXICON_FILE_BYTES = 4 * 1024 * 1024

# --- Rime's phonetic alphabet (docs.rime.ai, "Rime phonetic alphabet") -------------------------
VOWELS = frozenset("@aAWxYEReIioOUuN")
CONSONANTS = frozenset("bCdDfghJklmnGprsStTvwyzZ")
# 1 primary, 2 secondary, 0 unstressed: written just before the vowel they stress.
STRESS = frozenset("012")
# The spelling of Rime's API reference example, `{h'El.o}`: a stress mark and syllable dots.
MARKS = frozenset("'.")

_MARKUP_CHARS = frozenset("<>{}[]")
_JOINERS = frozenset(".@/\\:")


class LexiconProblem(ValueError):
    """An entry, or a lexicon, that cannot be used; the message says why."""

    def __init__(self, message: str, index: int | None = None) -> None:
        self.index = index  # the entry's place in what was given, when one entry is to blame
        super().__init__(message)


@dataclass(frozen=True)
class Entry:
    """One key and what is said in its place."""

    key: str  # NFC, single spaces between its words
    replacement: str  # alias text, or `{phonemes}` with its braces
    origin: str = field(default="", compare=False)  # where it was written, for messages

    @property
    def exact(self) -> bool:
        """Whether the key matches only as written: it has a capital letter."""
        return any(ch.isupper() for ch in self.key)

    @property
    def phonemes(self) -> bool:
        """Whether the replacement is phoneme markup (needs `phonemizeBetweenBrackets`)."""
        return self.replacement.startswith("{")


def entry(key: str, replacement: str, origin: str = "") -> Entry:
    """A checked entry; LexiconProblem names what is wrong with the key or the replacement."""
    return Entry(check_key(key), check_replacement(replacement), origin)


def check_key(key: str) -> str:
    """The key as it is matched (NFC, single spaces), or LexiconProblem."""
    if "\n" in key or "\r" in key:
        raise LexiconProblem("a key is one line: it cannot hold a line break")
    normal = " ".join(unicodedata.normalize("NFC", key).split())
    if not normal:
        raise LexiconProblem("a key cannot be empty")
    if len(normal) > MAX_KEY_CHARS:
        raise LexiconProblem(f"the key is longer than {MAX_KEY_CHARS} characters")
    if len(normal.split(" ")) > MAX_KEY_WORDS:
        raise LexiconProblem(f"a key is at most {MAX_KEY_WORDS} words")
    bad = next((ch for ch in normal if ch in _MARKUP_CHARS), None)
    if bad is not None:
        raise LexiconProblem(f"a key cannot hold {bad!r}: markup is never rewritten")
    if not _is_word(normal[0]):
        raise LexiconProblem(f"a key starts with a letter or a digit, not {normal[0]!r}")
    if any(is_address(word) for word in normal.split(" ")):
        raise LexiconProblem(
            "a key cannot be a URL or an e-mail address: those are never rewritten"
        )
    return normal


def check_replacement(value: str) -> str:
    """The replacement: `{phonemes}` in Rime's alphabet, or one line of plain alias text."""
    text = value.strip()
    if not text:
        raise LexiconProblem("the replacement is empty")
    if text.startswith("{"):
        if not text.endswith("}") or "{" in text[1:] or "}" in text[:-1]:
            raise LexiconProblem(
                "phonemes are one group in curly brackets, like {k1Ast0xm}, and nothing else"
            )
        check_phonemes(text[1:-1])
        return text
    if "\n" in text or "\r" in text:
        raise LexiconProblem("an alias is one line: it cannot hold a line break")
    if len(text) > MAX_ALIAS_CHARS:
        raise LexiconProblem(f"the alias is longer than {MAX_ALIAS_CHARS} characters")
    bad = next((ch for ch in text if ch in _MARKUP_CHARS), None)
    if bad is not None:
        raise LexiconProblem(
            f"an alias is plain text and cannot hold {bad!r}; phonemes are the whole "
            "replacement in curly brackets, like {k1Ast0xm}"
        )
    return " ".join(text.split())


def check_phonemes(inner: str) -> None:
    """LexiconProblem unless `inner` is a word in Rime's phonetic alphabet."""
    if not inner:
        raise LexiconProblem("empty phonemes {}")
    if len(inner) > MAX_PHONEMES_CHARS:
        raise LexiconProblem(f"the phonemes are longer than {MAX_PHONEMES_CHARS} characters")
    for i, ch in enumerate(inner):
        if ch in STRESS:
            if i + 1 == len(inner) or inner[i + 1] not in VOWELS:
                raise LexiconProblem(
                    f"stress {ch!r} at character {i + 1} of {{{inner}}} must come just before a "
                    "vowel (1 primary, 2 secondary, 0 unstressed, like {k1Ast0xm})"
                )
        elif ch not in VOWELS and ch not in CONSONANTS and ch not in MARKS:
            shown = "a space" if ch.isspace() else repr(ch)
            raise LexiconProblem(
                f"{shown} at character {i + 1} of {{{inner}}} is not in Rime's phonetic "
                f"alphabet (vowels {''.join(sorted(VOWELS))}, consonants "
                f"{''.join(sorted(CONSONANTS))}, stress 0 1 2)"
            )
    if not any(ch in VOWELS for ch in inner):
        raise LexiconProblem(f"{{{inner}}} has no vowel")


@dataclass(frozen=True)
class Lexicon:
    """Checked entries, no two of which claim the same words."""

    entries: tuple[Entry, ...]

    def __post_init__(self) -> None:
        if len(self.entries) > MAX_ENTRIES:
            raise LexiconProblem(
                f"holds {len(self.entries):,} entries; the limit is {MAX_ENTRIES:,}"
            )
        clash = first_clash(self.entries)
        if clash is not None:
            earlier, later = clash
            raise LexiconProblem(_clash_message(self.entries[earlier], self.entries[later]), later)

    @property
    def uses_phonemes(self) -> bool:
        """Whether any entry's replacement is phonemes."""
        return any(e.phonemes for e in self.entries)

    @cached_property
    def _by_first_word(self) -> tuple[dict[str, list[Entry]], dict[str, list[Entry]]]:
        """Exact entries by their first word as written, the others by its casefold; each list
        longest key first."""
        exact: dict[str, list[Entry]] = defaultdict(list)
        folded: dict[str, list[Entry]] = defaultdict(list)
        run = _WORD_RUN
        for e in sorted(self.entries, key=lambda e: -len(e.key)):
            first = run.match(e.key)
            assert first is not None  # check_key: a key starts with a word character
            if e.exact:
                exact[first.group()].append(e)
            else:
                folded[first.group().casefold()].append(e)
        return dict(exact), dict(folded)

    def candidates(self, word: str) -> list[Entry]:
        """The entries whose first word is `word`, longest key first."""
        exact, folded = self._by_first_word
        found = [*exact.get(word, ()), *folded.get(word.casefold(), ())]
        if len(found) > 1:
            found.sort(key=lambda e: -len(e.key))
        return found


def overlay(base: Lexicon, own: Lexicon) -> Lexicon:
    """`base` with `own`'s entries added; an entry of `own` replaces the ones of `base` it
    clashes with (a script's own entry wins over the job's)."""
    if not own.entries:
        return base
    by_fold: dict[str, list[Entry]] = defaultdict(list)
    for o in own.entries:
        by_fold[o.key.casefold()].append(o)
    kept = [
        b
        for b in base.entries
        if not any(_clashes(b, o) for o in by_fold.get(b.key.casefold(), ()))
    ]
    return Lexicon((*kept, *own.entries))


def first_clash(entries: Sequence[Entry]) -> tuple[int, int] | None:
    """The indexes of the first two entries that claim the same words, if any."""
    seen: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(entries):
        group = seen[e.key.casefold()]
        for j in group:
            if _clashes(entries[j], e):
                return j, i
        group.append(i)
    return None


def _clashes(a: Entry, b: Entry) -> bool:
    if a.key.casefold() != b.key.casefold():
        return False
    return a.key == b.key or not a.exact or not b.exact


def _clash_message(earlier: Entry, later: Entry) -> str:
    where = f" ({earlier.origin})" if earlier.origin else ""
    if earlier.key == later.key:
        return f"{later.key!r} is given twice (first{where})"
    return (
        f"{later.key!r} and {earlier.key!r}{where} differ only in letter case, and a key "
        "without capitals matches in any case; keep one, or give both capitals"
    )


@dataclass(frozen=True)
class Substitution:
    """One rewrite: where its key was in the written text, where its replacement is now."""

    start: int
    end: int
    new_start: int
    new_end: int
    entry: Entry


@dataclass(frozen=True)
class Rewritten:
    """A text with the lexicon applied, and where each substitution went."""

    text: str
    substitutions: tuple[Substitution, ...] = ()

    def phoneme_spans(self) -> tuple[tuple[int, int], ...]:
        """(start, end) in `text` of each `{phonemes}` group the lexicon wrote."""
        return tuple((s.new_start, s.new_end) for s in self.substitutions if s.entry.phonemes)

    def original_position(self, position: int) -> int:
        """The offset in the written text of an offset in `text` (a replacement maps to the
        start of the key it replaced)."""
        i = bisect_right([s.new_start for s in self.substitutions], position) - 1
        if i < 0:
            return position
        s = self.substitutions[i]
        if position < s.new_end:
            return s.start
        return s.end + (position - s.new_end)


def apply(lexicon: Lexicon, text: str) -> Rewritten:
    """`text` with every key the rules above find replaced; MarkupError for broken markup."""
    if not lexicon.entries:
        return Rewritten(text)
    run = _WORD_RUN
    pieces: list[str] = []
    subs: list[Substitution] = []
    pos = 0  # end of the written text already copied
    shift = 0  # len(new) - len(old) so far
    for lo, hi in _free_ranges(text):
        for word in run.finditer(text, lo, hi):
            start = word.start()
            if start < pos or _joined_before(text, start):
                continue
            for candidate in lexicon.candidates(word.group()):
                end = _match_end(candidate, text, start, hi)
                if end is None:
                    continue
                replacement = candidate.replacement
                pieces.append(text[pos:start])
                pieces.append(replacement)
                subs.append(
                    Substitution(
                        start, end, start + shift, start + shift + len(replacement), candidate
                    )
                )
                shift += len(replacement) - (end - start)
                pos = end
                break
    if not subs:
        return Rewritten(text)
    pieces.append(text[pos:])
    return Rewritten("".join(pieces), tuple(subs))


def _joined_before(text: str, start: int) -> bool:
    """Whether the word at `start` is joined to an earlier word (`rime` in `docs.rime`)."""
    return start >= 2 and text[start - 1] in _JOINERS and _is_word(text[start - 2])


def _free_ranges(text: str) -> list[tuple[int, int]]:
    """The (start, end) ranges of plain text outside markup and addresses."""
    protected = [
        (m.start(), m.end())
        for m in re.finditer(r"\S+", text)
        if is_address(text, m.start(), m.end())
    ]
    ranges: list[tuple[int, int]] = []
    for token in parse(text):
        if not isinstance(token, Text):
            continue
        lo = token.start
        for a, b in protected:
            if b <= lo or a >= token.end:
                continue
            if a > lo:
                ranges.append((lo, a))
            lo = max(lo, b)
        if lo < token.end:
            ranges.append((lo, token.end))
    return ranges


# Word characters: Unicode's \w (letters, digits, connectors like `_`) and combining marks, so
# a decomposed "Cafe\u0301" is one word.
_WORD_CLASS = r"\w\p{M}"
_WORD_CHAR = regex.compile(f"[{_WORD_CLASS}]")
_WORD_RUN = regex.compile(f"[{_WORD_CLASS}]+")


def _is_word(ch: str) -> bool:
    return _WORD_CHAR.fullmatch(ch) is not None


def _match_end(e: Entry, text: str, start: int, hi: int) -> int | None:
    """Where `e`'s key ends when it matches text[start:hi] at `start` as a whole word."""
    key = e.key
    if " " in key:
        found = _spaced(key, e.exact).match(text, start, hi)
        if found is None:
            return None
        end = found.end()
    else:
        end = start + len(key)
        written = text[start:end]
        if end > hi or (written != key and (e.exact or written.casefold() != key.casefold())):
            return None
    if end < hi and _is_word(key[-1]):
        after = text[end]
        if _is_word(after) or (after in _JOINERS and end + 1 < hi and _is_word(text[end + 1])):
            return None
    return end


# A space in a key: some whitespace, with at most one line break in it.
_GAP = r"(?=\s)[^\S\n]*\n?[^\S\n]*"


@functools.lru_cache(maxsize=1024)
def _spaced(key: str, exact: bool) -> re.Pattern[str]:
    """A key of several words, its spaces matching the spacing of the text."""
    body = _GAP.join(re.escape(part) for part in key.split(" "))
    return re.compile(body, 0 if exact else re.IGNORECASE)
