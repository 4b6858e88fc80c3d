"""One script changed by hand, after its manifest was read: a new text or a new speaker.

The review console's re-render of one take goes through here. The edit is held to the rules the
manifest's own `text` and `speaker` are (characters, emptiness, length; the speaker's form), and
a problem names the edit's field (`edit.text`, `edit.speaker`) and the script.
"""

from __future__ import annotations

from pydantic import ValidationError

from pipeline.errors import ManifestError
from pipeline.manifest.characters import character_problem, where_in
from pipeline.manifest.models import MAX_TEXT_CHARS, JobSpec, ScriptSpec, Voice
from pipeline.manifest.paths import normalize_text


def edit_script(
    job: JobSpec, script_id: str, *, text: str | None = None, speaker: str | None = None
) -> JobSpec:
    """`job` with script `script_id`'s text and/or speaker replaced; the rest as it was."""
    found = [s for s in job.scripts if s.id == script_id]
    if not found:
        raise ManifestError(f"no script {script_id!r} in the manifest", field="edit.script")
    script = found[0]
    changed = script
    if text is not None:
        changed = changed.model_copy(update={"text": _text(script, text), "text_file": None})
    if speaker is not None and speaker.strip() != script.voice.speaker:
        changed = changed.model_copy(update={"voice": _voice(script, speaker.strip())})
    scripts = tuple(changed if s is script else s for s in job.scripts)
    return job.model_copy(update={"scripts": scripts})


def _problem(script: ScriptSpec, field: str, message: str) -> ManifestError:
    return ManifestError(f"script {script.id!r}: {message}", field=f"edit.{field}")


def _text(script: ScriptSpec, given: str) -> str:
    text = normalize_text(given)  # a browser's textarea sends \r\n
    problem = character_problem(text, text=True)
    if problem is not None:
        offset, what = problem
        raise _problem(script, "text", f"the text contains {what} at {where_in(text, offset)}")
    if not text:
        raise _problem(script, "text", "the text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise _problem(
            script,
            "text",
            f"the text is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}",
        )
    return text


def _voice(script: ScriptSpec, speaker: str) -> Voice:
    try:
        return Voice.model_validate({**script.voice.model_dump(), "speaker": speaker})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise _problem(script, "speaker", f"{first['msg']} (got {speaker[:40]!r})") from exc
