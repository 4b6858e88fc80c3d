"""Presets: named sets of settings a manifest asks for with `preset:` (defaults or a script).

A preset fills the settings its level of the manifest does not write itself: a key written next
to `preset:` wins over the preset, and a script's preset wins over what the script inherits from
`defaults:` (the nearest say wins). The numbers of `acx` come from ACX's rules
(`pipeline.acx`), so the rules have one home.
"""

from __future__ import annotations

from typing import Any

from pipeline import acx

PRESETS: dict[str, dict[str, Any]] = {
    "acx": {
        "samplingRate": acx.SAMPLE_RATE,
        "formats": ("mp3",),
        "mp3_bitrate": f"{acx.MIN_MP3_KBPS}k",
        "loudness_lufs": acx.TARGET_LUFS,
        "true_peak_db": acx.CEILING_DBTP,
        "lead_pause_ms": acx.LEAD_PAUSE_MS,
        "tail_pause_ms": acx.TAIL_PAUSE_MS,
    },
    # Apple's and Spotify's spoken-word reference: -16 LUFS integrated, -1 dBTP.
    "podcast": {"loudness_lufs": -16.0, "true_peak_db": -1.0},
}


def with_preset(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its preset's settings filled in under the keys it writes itself."""
    name = data.get("preset")
    if not isinstance(name, str) or name not in PRESETS:
        return data  # no preset, or one the model's validation refuses with its own message
    return {**PRESETS[name], **data}
