"""Cues written as SubRip (`.srt`) and WebVTT (`.vtt`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline.captions.cues import Cue


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def srt(cues: Sequence[Cue]) -> str:
    """SubRip: numbered cues, times as `HH:MM:SS,mmm`."""
    blocks = [
        f"{n}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n" + "\n".join(c.lines) + "\n"
        for n, c in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def _vtt_text(line: str) -> str:
    # WebVTT cue text is markup of its own: an ampersand or angle bracket must be escaped.
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt(cues: Sequence[Cue]) -> str:
    """WebVTT: the header, then cues with times as `HH:MM:SS.mmm`."""
    blocks = [
        f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n"
        + "\n".join(_vtt_text(line) for line in c.lines)
        + "\n"
        for c in cues
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


WRITERS: dict[str, Callable[[Sequence[Cue]], str]] = {"srt": srt, "vtt": vtt}
