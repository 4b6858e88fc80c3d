"""Segmenter throughput on a 100k-character chapter: prints segments/s and characters/s."""

from __future__ import annotations

import argparse
import random
import time

from pipeline.segment import TextSegment, segment_text

WORDS = [
    "the", "river", "ran", "cold", "and", "fast", "under", "old", "stone", "bridge", "nobody",
    "had", "crossed", "it", "since", "winter", "storms", "she", "paid", "for", "map", "copy",
    "from", "bells", "rang", "out", "over", "sleeping", "town",
]  # fmt: skip
EXTRAS = ["Dr. Reyes", "e.g. this", "2.5ml", "$1,000.50", "3:30", "www.example.org", "[slowly]"]
ENDS = [" ", " ", " ", " ", " ", ", ", ". ", ". ", "; ", " — ", ". <300> ", ".\n\n"]


def chapter(chars: int, seed: int = 7) -> tuple[str, list[float]]:
    """A reproducible chapter of prose with numbers, abbreviations and markup."""
    rng = random.Random(seed)
    parts: list[str] = []
    alpha: list[float] = []
    size = 0
    while size < chars:
        word = rng.choice(EXTRAS) if rng.random() < 0.05 else rng.choice(WORDS)
        if word.startswith("["):
            alpha.append(1.2)
        piece = word + rng.choice(ENDS)
        parts.append(piece)
        size += len(piece)
    return "".join(parts), alpha


def main() -> None:
    """TextSegment the chapter a few times and print the best run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chars", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    text, alpha = chapter(args.chars)
    best = float("inf")
    segments: tuple[TextSegment, ...] = ()
    for _ in range(args.runs):
        started = time.perf_counter()
        segments = segment_text(text, limit=args.limit, inline_speed_alpha=alpha)
        best = min(best, time.perf_counter() - started)
    fill = sum(len(s.text) for s in segments) / len(segments)
    print(
        f"{len(text):,} chars -> {len(segments)} segments (mean {fill:.0f} chars, "
        f"limit {args.limit}) in {best * 1000:.1f} ms: {len(segments) / best:,.0f} segments/s, "
        f"{len(text) / best / 1e6:.2f} M chars/s"
    )


if __name__ == "__main__":
    main()
