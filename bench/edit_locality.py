"""Edit locality: how many segments one edited sentence re-synthesizes, old packing vs new.

A 100,000-character public-domain text (the first twelve chapters of Jane Austen's *Pride and
Prejudice*, 1813) is segmented, one sentence is edited (a word replaced, deleted or inserted, or
a stretch rewritten), and the segments whose text the original did not have are counted: those
are the cache misses a re-render pays for. The baseline is the packing this project used before
(each segment as full as it goes from the previous cut), run here on the same gaps.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path

from pipeline.markup import parse
from pipeline.segment import _NO_CUT, _gap_levels, _layout, segment_text

TEXT = Path(__file__).parent / "texts" / "pride-and-prejudice.txt"
_SENTENCE = re.compile(r"[^.?!\n]+[.?!][”’\"']*")
_WORD = re.compile(r"[A-Za-z]+")

Segmenter = Callable[[str, int], list[str]]


def one_sentence_edits(text: str, count: int, rng: random.Random) -> list[str]:
    """`count` copies of `text`, each with one sentence edited as an author would."""
    sentences = list(_SENTENCE.finditer(text))
    vocabulary = _WORD.findall(text)
    edits: list[str] = []
    while len(edits) < count:
        sentence = rng.choice(sentences)
        words = list(_WORD.finditer(text, sentence.start(), sentence.end()))
        if len(words) < 3:
            continue
        word = rng.choice(words)
        a, b = word.span()
        match rng.choice(["replace", "delete", "insert", "rewrite"]):
            case "replace":
                edits.append(text[:a] + rng.choice(vocabulary) + text[b:])
            case "delete":
                edits.append(text[:a] + text[b:].lstrip(" "))
            case "insert":
                added = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 4)))
                edits.append(f"{text[:b]} {added}{text[b:]}")
            case _:
                written = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 12)))
                edits.append(text[:a] + written + text[b:])
    return edits


def current(text: str, limit: int) -> list[str]:
    """The segmenter's request texts."""
    return [s.text for s in segment_text(text, limit=limit)]


def fill_from_previous_cut(text: str, limit: int) -> list[str]:
    """The old packing: from each segment's start, the farthest cut of the best level in reach."""
    layout = _layout(text, parse(text))
    levels = _gap_levels(text, layout)
    starts, ends = layout.starts, layout.ends
    by_level: dict[int, list[int]] = {}
    for k, level in enumerate(levels):
        if level != _NO_CUT:
            by_level.setdefault(level, []).append(k)
    out: list[str] = []
    i = 0
    while True:
        reach = bisect_right(ends, starts[i] + limit) - 1
        cut = None
        if reach < len(starts) - 1:
            for level in sorted(by_level, reverse=True):
                gaps = by_level[level]
                j = bisect_right(gaps, reach) - 1
                if j >= 0 and gaps[j] >= i:
                    cut = gaps[j]
                    break
        if cut is None:
            out.append(text[starts[i] : ends[-1]])
            return out
        out.append(text[starts[i] : ends[cut]])
        i = cut + 1


def changed_segments(before: str, after: str, limit: int, segmenter: Segmenter = current) -> int:
    """Segments of `after` whose text `before` has no segment of: what a re-render sends."""
    return len(set(segmenter(after, limit)) - set(segmenter(before, limit)))


def report(name: str, text: str, edits: list[str], limit: int, segmenter: Segmenter) -> None:
    """One line: the segments, their mean length, and what the edits re-synthesize."""
    base = segmenter(text, limit)
    old = set(base)
    counts = [len(set(segmenter(edited, limit)) - old) for edited in edits]
    over = sum(c > 2 for c in counts)
    print(
        f"{name:24s} {len(base):4d} segments (mean {statistics.mean(map(len, base)):.0f} chars); "
        f"per edit: max {max(counts)}, median {statistics.median(counts):g}, "
        f"mean {statistics.mean(counts):.2f}, more than 2 in {over} ({over / len(counts):.1%}), "
        f"max {max(counts) / len(base):.2%} of the book"
    )


def main() -> None:
    """Print both packings' figures over the same random one-sentence edits."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edits", type=int, default=300)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    text = TEXT.read_text(encoding="utf-8")
    edits = one_sentence_edits(text, args.edits, random.Random(args.seed))
    print(f"{len(text):,} characters, {args.edits} one-sentence edits, limit {args.limit}")
    report("old: fill from last cut", text, edits, args.limit, fill_from_previous_cut)
    report("new: cuts by nearby text", text, edits, args.limit, current)


if __name__ == "__main__":
    main()
