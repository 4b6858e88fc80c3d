"""What a finished output carries: its content type and its object metadata."""

from __future__ import annotations

from urllib.parse import quote

CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "wav-mulaw": "audio/wav",  # a WAV container holding G.711 mu-law samples
    "mulaw": "audio/basic",  # RFC 2046: headerless 8-bit mu-law
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
}

# Printable ASCII except '%', which marks an escaped byte.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%")


def content_type_for(fmt: str) -> str:
    """The MIME type of an output format (`wav`, `wav-mulaw`, `mulaw`, `mp3`, `ogg`)."""
    try:
        return CONTENT_TYPES[fmt]
    except KeyError:
        known = ", ".join(CONTENT_TYPES)
        raise ValueError(f"unknown output format {fmt!r}; expected one of {known}") from None


def is_audio(fmt: str) -> bool:
    """Whether an output format is audio (the others are captions beside it)."""
    return content_type_for(fmt).startswith("audio/")


def header_safe(value: str) -> str:
    """`value` with anything outside printable ASCII percent-encoded (S3 metadata is headers)."""
    return quote(value, safe=_HEADER_SAFE)


def output_metadata(
    job_id: str, speaker: str, model_id: str, duration_s: float, sha256: str
) -> dict[str, str]:
    """Object metadata for a finished output, with S3-safe keys (lowercase, hyphens)."""
    return {
        "job-id": header_safe(job_id),
        "speaker": header_safe(speaker),
        "model": header_safe(model_id),
        "duration-s": f"{duration_s:.3f}",
        "sha256": sha256,
    }
