"""One script's text or speaker changed by hand (the console's re-render of one take)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ManifestError
from pipeline.manifest import JobSpec, load_manifest
from pipeline.manifest.edits import edit_script
from pipeline.manifest.models import MAX_TEXT_CHARS

MANIFEST = b"""\
job: clinic
defaults: {speaker: cove, modelId: mistv2}
scripts:
  - id: a
    text: Hello there.
  - id: b
    text: Goodbye now.
    speaker: astra
"""


def _job() -> JobSpec:
    return load_manifest(Path("/srv/clinic.yaml"), data=MANIFEST)


printable = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp")), min_size=1
).filter(lambda t: t.strip())


@given(printable)
@settings(max_examples=100, deadline=None)
def test_an_edited_text_replaces_only_that_script(text: str) -> None:
    job = _job()
    edited = edit_script(job, "b", text=text)
    assert edited.scripts[1].text == text.strip()
    assert edited.scripts[1].voice == job.scripts[1].voice
    assert edited.scripts[0] == job.scripts[0]
    assert edited.model_copy(update={"scripts": job.scripts}) == job


def test_a_new_speaker_keeps_every_other_setting() -> None:
    job = _job()
    edited = edit_script(job, "b", speaker=" marsh ")
    assert edited.scripts[1].voice.speaker == "marsh"
    assert edited.scripts[1].voice.model_dump(exclude={"speaker"}) == job.scripts[
        1
    ].voice.model_dump(exclude={"speaker"})
    assert edited.scripts[1].text == "Goodbye now."


def test_a_textarea_s_line_ends_are_the_manifest_s() -> None:
    assert edit_script(_job(), "a", text="One.\r\nTwo.\r\n").scripts[0].text == "One.\nTwo."


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"text": "   "}, "edit.text", "empty"),
        ({"text": "bell\x07"}, "edit.text", "line 1, column 5"),
        ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "edit.text", "limit"),
        ({"speaker": "s" * 101}, "edit.speaker", "at most 100"),
    ],
)
def test_a_bad_edit_names_its_field_and_script(
    changes: dict[str, str], field: str, words: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        edit_script(_job(), "a", **changes)
    assert caught.value.field == field
    assert "script 'a'" in str(caught.value) and words in str(caught.value)


def test_an_unknown_script_is_named() -> None:
    with pytest.raises(ManifestError, match="no script 'zz'"):
        edit_script(_job(), "zz", text="x")
