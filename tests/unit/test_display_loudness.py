"""The loudness cell of `rime-batch status`: each output's figures, alike ones on one line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.display import loudness_cell
from pipeline.loudness import Loudness, LoudnessRecord
from pipeline.store.schema import OutputFile

RECORD = LoudnessRecord(-16.0, -1.0, 5.04, True, -16.5, 1.9, -1.4, "mp3")


def output(fmt: str, loudness: Loudness | None) -> OutputFile:
    return OutputFile(fmt, f"out/s.{fmt}", "0" * 64, 100, loudness)


def test_outputs_that_measure_alike_are_one_line() -> None:
    same = Loudness(-16.1, -1.1, 2.0)
    cell = loudness_cell(RECORD, [output("wav", same), output("ogg", same)])
    assert cell == "-16.1 LUFS LRA 2.0 TP -1.1 (limited +5.0 dB)"


def test_outputs_that_differ_each_have_a_line_naming_them() -> None:
    outputs = [
        output("wav", Loudness(-16.1, -1.1, 2.0)),
        output("mp3", Loudness(-16.5, -1.4, 1.9)),
        output("ogg", Loudness(-16.1, -1.1, 2.0)),
        output("srt", None),  # captions measure nothing
    ]
    assert loudness_cell(RECORD, outputs).splitlines() == [
        "wav, ogg: -16.1 LUFS LRA 2.0 TP -1.1",
        "mp3: -16.5 LUFS LRA 1.9 TP -1.4",
        "(limited +5.0 dB)",
    ]


def test_a_row_from_before_outputs_were_measured_shows_its_one_figure() -> None:
    old = LoudnessRecord(-16.0, -1.0, 3.0, False, -16.0, 2.0, -1.2)
    assert loudness_cell(old, [output("wav", None)]) == "-16.0 LUFS LRA 2.0 TP -1.2 (gain +3.0 dB)"
    assert loudness_cell(None, [output("wav", None)]) == ""
    assert loudness_cell(RECORD, [output("wav", Loudness(None, None))]) == "silent"


levels = st.one_of(st.none(), st.floats(-70, -5))
figures = st.builds(Loudness, levels, levels, st.one_of(st.none(), st.floats(0, 20)))
formats = st.lists(st.sampled_from(["wav", "mp3", "wav-mulaw", "mulaw", "ogg"]), unique=True)


@given(
    formats.filter(bool).flatmap(
        lambda f: st.tuples(st.just(f), st.lists(figures, min_size=len(f), max_size=len(f)))
    )
)
def test_every_output_is_shown_once_with_its_own_figures(
    case: tuple[list[str], list[Loudness]],
) -> None:
    names, measured = case
    cell = loudness_cell(RECORD, [output(f, m) for f, m in zip(names, measured, strict=True)])
    lines = cell.splitlines()
    if len(lines) == 1:  # no names needed: every output shows the same figures
        assert len({as_shown(m) for m in measured}) == 1
        return
    assert lines[-1] == "(limited +5.0 dB)"
    named = {f: line for line in lines[:-1] for f in line.split(": ")[0].split(", ")}
    assert sorted(named) == sorted(names)
    for fmt, loudness in zip(names, measured, strict=True):
        shown = named[fmt].split(": ", 1)[1]
        level = loudness.integrated_lufs
        assert shown == "silent" if level is None else shown.startswith(f"{level:.1f} LUFS")


def as_shown(loudness: Loudness) -> tuple[str, ...] | None:
    """The figures as the cell rounds them; None for silence."""
    if loudness.integrated_lufs is None:
        return None
    rest = (loudness.range_lu, loudness.true_peak_dbtp)
    return (f"{loudness.integrated_lufs:.1f}", *("-" if v is None else f"{v:.1f}" for v in rest))
