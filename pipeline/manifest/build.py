"""Plain manifest data to a validated JobSpec; every problem is one located ManifestError."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from pipeline.errors import ManifestError
from pipeline.lexicon import Lexicon, LexiconProblem, overlay
from pipeline.manifest.book import check_title, read_book
from pipeline.manifest.characters import character_problem, first_bad_value, where_in
from pipeline.manifest.lexicons import KEY as LEXICON
from pipeline.manifest.lexicons import read_lexicon
from pipeline.manifest.models import (
    MAX_EPUB_BYTES,
    MAX_JOB_NAME_CHARS,
    MAX_KEEP_RELEASES,
    MAX_NOTIFY_URLS,
    MAX_SCRIPTS,
    MAX_TEXT_CHARS,
    BookSpec,
    JobSpec,
    ScriptSpec,
    Source,
    Voice,
)
from pipeline.manifest.overrides import NO_OVERRIDES, Overrides
from pipeline.manifest.paths import (
    PathProblem,
    check_local_outputs,
    check_script_id,
    default_job_name,
    normalize_text,
    read_text_file,
    resolve_destination,
)
from pipeline.manifest.presets import with_preset
from pipeline.manifest.readers import (
    SCRIPT_KEYS,
    TOP_KEYS,
    VOICE_KEYS,
    Loc,
    RawManifest,
    unknown_key_message,
)
from pipeline.storage.keys import DEFAULT_KEEP_RELEASES, book_keys, first_clash, output_key
from pipeline.webhook import check_url

if TYPE_CHECKING:
    from pipeline.manifest.chapters import Chapter


def build_job(
    raw: RawManifest,
    *,
    recorded: str,
    output: str | None = None,
    overrides: Overrides = NO_OVERRIDES,
) -> JobSpec:
    """Validate `raw` and resolve every script's settings, text and the destination; the job
    records `recorded` as its manifest (an absolute path, or an s3:// URI).

    `overrides` join the defaults (`--set`), then rename speakers (`--voice-map`); see
    `pipeline.manifest.overrides`.
    """
    data = raw.data
    where = raw.locator.source
    bad = first_bad_value(data)
    if bad is not None:
        raise where(bad[0]).error(bad[1])
    for key in data:
        if key not in TOP_KEYS:
            raise where((key,)).error(unknown_key_message(key, TOP_KEYS))
    name = _job_name(raw)
    destination = _destination(raw, output)
    notify = _notify(raw)
    defaults_data = data.get("defaults") or {}
    if not isinstance(defaults_data, dict):
        raise where(("defaults",)).error("must be a mapping of settings (e.g. speaker: cove)")
    defaults = _validate_voice(
        raw, with_preset({**defaults_data, **overrides.values}), ("defaults",), overrides=overrides
    )
    entries = data.get("scripts")
    if entries is None:
        raise where(()).error("there is no 'scripts' list: add one script at least")
    if not isinstance(entries, list) or not entries:
        raise where(("scripts",)).error("must be a list with one script at least")
    if len(entries) > MAX_SCRIPTS:
        raise where(("scripts",)).error(
            f"holds {len(entries):,} scripts; a job may hold at most {MAX_SCRIPTS:,} (split it)"
        )
    lexicon = read_lexicon(raw, data[LEXICON], (LEXICON,)) if LEXICON in data else None
    scripts: list[ScriptSpec] = []
    first_seen: dict[str, ScriptSpec] = {}
    use = _Use()
    for index, entry in enumerate(entries):
        for script in _scripts(raw, defaults, entry, ("scripts", index), overrides, use, lexicon):
            # Some file systems ignore case: Welcome.wav and welcome.wav would be one file.
            earlier = first_seen.setdefault(script.id.casefold(), script)
            if earlier is not script:
                raise script.source.error(
                    f"{script.id!r} is used again (first at {_place(earlier.source)}); ids must "
                    "differ in more than letter case",
                    "id",
                )
            scripts.append(script)
        if len(scripts) > MAX_SCRIPTS:
            raise raw.locator.source(("scripts", index)).error(
                f"brings the job to more than {MAX_SCRIPTS:,} scripts with its chapters; a job "
                f"may hold at most {MAX_SCRIPTS:,} (split it)"
            )
    use.check(overrides)
    book = read_book(raw, scripts, name)
    _check_outputs(raw, scripts, destination, overridden=output is not None, book=book)
    return JobSpec(
        name=name,
        manifest=recorded,
        destination=destination,
        defaults=_renamed(defaults, overrides),
        scripts=tuple(scripts),
        keep_releases=_keep_releases(raw),
        notify=notify,
        book=book,
    )


def _keep_releases(raw: RawManifest) -> int:
    value = raw.data.get("keep_releases", DEFAULT_KEEP_RELEASES)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEEP_RELEASES:
        raise raw.locator.source(("keep_releases",)).error(
            f"must be a whole number from 1 to {MAX_KEEP_RELEASES:,} (releases kept, the "
            "published one among them)"
        )
    return value


# Speakers a refused rename lists: enough to spot a typo, one line for a job of many voices.
_NAMES_SHOWN = 10


@dataclass
class _Use:
    """What the scripts took from the overrides: an override nothing takes changes nothing,
    and is refused rather than rendering the job as it was (a typo in a speaker's name)."""

    inherited: set[str] = field(default_factory=set)  # keys some script takes from defaults
    speakers: set[str] = field(default_factory=set)  # every script's speaker before renames

    def check(self, overrides: Overrides) -> None:
        """OverrideError for the first `--set` or `--voice-map` that no script takes."""
        for setting in overrides.settings:
            if setting.key not in self.inherited:
                hint = "; rename a speaker with --voice-map" if setting.key == "speaker" else ""
                raise setting.error(
                    f"every script sets its own {setting.key}, so it changes nothing (a "
                    f"script's own value wins{hint})"
                )
        for rename in overrides.renames:
            if rename.old not in self.speakers:
                names = sorted(self.speakers)
                more = f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""
                raise rename.error(
                    f"no script speaks with {rename.old!r} (this job's speakers: "
                    f"{', '.join(names[:_NAMES_SHOWN])}{more})"
                )


def _renamed(voice: Voice, overrides: Overrides) -> Voice:
    speaker = overrides.renamed(voice.speaker)
    if speaker == voice.speaker:
        return voice
    # The new name was held to speaker's rules when it was parsed; nothing else changes.
    return Voice.model_validate({**voice.model_dump(), "speaker": speaker})


def _check_outputs(
    raw: RawManifest,
    scripts: list[ScriptSpec],
    destination: str,
    *,
    overridden: bool,
    book: BookSpec | None = None,
) -> None:
    """Every output key of the job can be written: none clashes with another, or with what the
    destination folder already holds (found out otherwise after the requests were billed)."""
    keys: list[tuple[ScriptSpec | None, str]] = [
        (s, output_key(s.id, fmt)) for s in scripts for fmt in (*s.voice.formats, *s.voice.captions)
    ]
    if book is not None:
        # The book's files (owned by no script) first: a clash then names the script.
        titles = {s.id: s.title or s.id for s in scripts}
        m4b, m3u, mp3s = book_keys(book.folder, book.title, (titles[i] for i in book.scripts))
        keys = [(None, key) for key in (m4b, m3u, *mp3s)] + keys
    clash = first_clash(keys)
    if clash is not None:
        earlier, later, earlier_key, later_key = clash
        if earlier is None or later is None:
            script = later or earlier
            assert script is not None
            raise raw.locator.source(("book", "folder")).error(
                f"the book's {earlier_key if earlier is None else later_key!r} and script "
                f"{script.id!r}'s {later_key if earlier is None else earlier_key!r} cannot both "
                "be written; rename the script or give the book another folder"
            )
        if earlier_key == later_key:
            how = "the same file"
        elif earlier_key.casefold() == later_key.casefold():
            how = "one file where letter case is ignored (macOS, Windows, S3 synced to them)"
        else:
            how = "a file and a folder of the same name"
        raise later.source.error(
            f"{later.id!r} writes {later_key!r} and {earlier.id!r} (at {_place(earlier.source)}) "
            f"writes {earlier_key!r}: {how}; rename one of them",
            "id",
        )
    if destination.startswith("s3://"):
        return
    try:
        check_local_outputs(Path(destination), (key for _, key in keys))
    except PathProblem as exc:
        if overridden:
            raise ManifestError(str(exc), file=raw.file, field="output (override)") from exc
        raise raw.locator.source(("output",)).error(str(exc)) from exc


def _job_name(raw: RawManifest) -> str:
    value = raw.data.get("job")
    if value is None:
        return default_job_name(raw.file)
    problem = None
    if not isinstance(value, str) or not value.strip():
        problem = "must be a non-empty text"
    elif len(value) > MAX_JOB_NAME_CHARS:
        problem = f"is longer than {MAX_JOB_NAME_CHARS} characters"
    elif not value.isprintable():
        problem = "contains a control character"
    if problem:
        raise raw.locator.source(("job",)).error(problem)
    return str(value).strip()


def _destination(raw: RawManifest, override: str | None) -> str:
    if override is not None:
        problem = character_problem(override, text=False)
        if problem is not None:
            raise ManifestError(f"contains {problem[1]}", file=raw.file, field="output (override)")
        # A path given on the command line is relative to where the command runs.
        try:
            return resolve_destination(override, Path.cwd())
        except PathProblem as exc:
            raise ManifestError(str(exc), file=raw.file, field="output (override)") from exc
    value = raw.data.get("output")
    folder = raw.folder.base
    if value is None:
        return resolve_destination(f"out/{default_job_name(raw.file)}", folder)
    if not isinstance(value, str):
        raise raw.locator.source(("output",)).error(
            "must be a folder (relative to the manifest) or s3://bucket/prefix"
        )
    try:
        return resolve_destination(value, folder)
    except PathProblem as exc:
        raise raw.locator.source(("output",)).error(str(exc)) from exc


def _notify(raw: RawManifest) -> tuple[str, ...]:
    """The webhook URLs of `notify:`, one URL or a list of them; each written once."""
    value = raw.data.get("notify")
    if value is None:
        return ()
    where = raw.locator.source
    urls: list[Any] = [value] if isinstance(value, str) else value
    if not isinstance(urls, list):
        raise where(("notify",)).error("must be a URL or a list of URLs")
    if len(urls) > MAX_NOTIFY_URLS:
        raise where(("notify",)).error(
            f"lists {len(urls)} URLs; a job may notify at most {MAX_NOTIFY_URLS}"
        )
    for index, url in enumerate(urls):
        loc: tuple[str | int, ...] = ("notify",) if isinstance(value, str) else ("notify", index)
        try:
            check_url(url)
        except ValueError as exc:
            raise where(loc).error(str(exc)) from exc
        if url in urls[:index]:
            raise where(loc).error("lists this URL twice")
    return tuple(urls)


def _scripts(
    raw: RawManifest,
    defaults: Voice,
    entry: Any,
    loc: Loc,
    overrides: Overrides,
    use: _Use,
    lexicon: Lexicon | None,
) -> list[ScriptSpec]:
    """An entry's script, or one script per chapter of its book or split text, each with the
    entry's settings."""
    source = raw.locator.source(loc)
    if not isinstance(entry, dict):
        raise source.error("each script must be a mapping with an id and a text")
    script_id = entry.get("id")
    if script_id is None:
        raise source.error("is required", "id")
    if not isinstance(script_id, str):
        # YAML reads `id: 010` as the number 8; quoting keeps what was written.
        raise raw.locator.source((*loc, "id")).error("must be text, not a number; put it in quotes")
    try:
        check_script_id(script_id)
    except PathProblem as exc:
        raise raw.locator.source((*loc, "id")).error(str(exc)) from exc
    # A script's own preset fills what the script does not write, over what it inherits.
    own = with_preset({key: value for key, value in entry.items() if key not in SCRIPT_KEYS})
    data = {**defaults.model_dump(), **own}
    use.inherited.update(key for key in data if key not in own)
    if isinstance(data["speaker"], str):
        use.speakers.add(data["speaker"])
    data["speaker"] = overrides.renamed(data["speaker"])
    voice = _validate_voice(raw, data, loc, own, overrides)
    text_file = entry.get("text_file")
    text_source = raw.locator.source((*loc, "text" if text_file is None else "text_file"))
    script_lexicon = _script_lexicon(raw, entry, loc, lexicon)
    chapters = _chapters(raw, entry, loc)
    if chapters is None:
        text = _text(raw, entry, loc)
        title = entry.get("title")
        return [
            ScriptSpec(
                id=script_id,
                text=text,
                text_file=text_file,
                source=source,
                text_source=text_source,
                voice=voice,
                lexicon=script_lexicon,
                title=None
                if title is None
                else check_title(title, raw.locator.source((*loc, "title"))),
            )
        ]
    return [
        ScriptSpec(
            id=chapter_id,
            text=_within_limit(chapter.text, text_source, chapter),
            text_file=text_file,
            title=chapter.title,
            source=source,
            text_source=text_source,
            voice=voice,
            lexicon=script_lexicon,
        )
        for chapter_id, chapter in zip(_chapter_ids(script_id, chapters), chapters, strict=True)
    ]


def _chapter_ids(script_id: str, chapters: tuple[Chapter, ...]) -> list[str]:
    from pipeline.manifest.chapters import chapter_ids

    return chapter_ids(script_id, chapters)


def _chapters(raw: RawManifest, entry: dict[str, Any], loc: Loc) -> tuple[Chapter, ...] | None:
    """The chapters of an entry's EPUB or `split:` text; None for an entry of one script."""
    text_file = entry.get("text_file")
    is_book = isinstance(text_file, str) and text_file.lower().endswith(".epub")
    if not is_book and "split" not in entry:
        return None
    # Imported only for such entries: lxml, markdown-it and regex cost a manifest of prompts
    # nothing.
    from pipeline.manifest.chapters import SplitProblem, parse_split, split_text
    from pipeline.manifest.epub import EpubProblem, read_chapters

    if "split" in entry and is_book:
        raise raw.locator.source((*loc, "split")).error(
            "an EPUB is always read as its chapters; remove split"
        )
    if is_book:
        assert isinstance(text_file, str)
        where = raw.locator.source((*loc, "text_file"))
        if "text" in entry:
            raise where.error("give either text or text_file, not both")
        try:
            with raw.folder.open(text_file, limit=MAX_EPUB_BYTES, what="an EPUB") as book:
                return read_chapters(book)
        except PathProblem as exc:
            raise where.error(str(exc)) from exc
        except EpubProblem as exc:
            raise where.error(f"{text_file!r} {exc}") from exc
    where = raw.locator.source((*loc, "split"))
    try:
        split = parse_split(entry["split"])
        return split_text(_text(raw, entry, loc), split)
    except SplitProblem as exc:
        what = f"{text_file!r}: " if isinstance(text_file, str) else ""
        raise where.error(f"{what}{exc}") from exc


def _script_lexicon(
    raw: RawManifest, entry: dict[str, Any], loc: Loc, job: Lexicon | None
) -> Lexicon | None:
    """The job's lexicon with the script's own entries over it."""
    if entry.get(LEXICON) is None:
        return job
    own = read_lexicon(raw, entry[LEXICON], (*loc, LEXICON))
    if job is None:
        return own
    try:
        return overlay(job, own)
    except LexiconProblem as exc:  # together they hold too many entries
        raise raw.locator.source((*loc, LEXICON)).error(str(exc)) from exc


def _text(raw: RawManifest, entry: dict[str, Any], loc: Loc) -> str:
    has_text, has_file = "text" in entry, entry.get("text_file") is not None
    if has_text and has_file:
        raise raw.locator.source((*loc, "text_file")).error(
            "give either text or text_file, not both"
        )
    if has_file:
        where = raw.locator.source((*loc, "text_file"))
        if not isinstance(entry["text_file"], str):
            raise where.error("must be a path relative to the manifest's folder")
        try:
            text = read_text_file(entry["text_file"], raw.folder)
        except PathProblem as exc:
            raise where.error(str(exc)) from exc
        problem = character_problem(text, text=True)
        if problem is not None:
            offset, what = problem
            raise where.error(
                f"{entry['text_file']!r} contains {what} at {where_in(text, offset)}; remove it"
            )
        if not normalize_text(text):
            raise where.error(f"{entry['text_file']!r} holds no text")
        return _within_limit(normalize_text(text), where)
    if not has_text:
        raise raw.locator.source(loc).error("needs a text or a text_file", "text")
    where = raw.locator.source((*loc, "text"))
    value = entry["text"]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise where.error("is empty")
    if not isinstance(value, str):
        raise where.error("must be text; put it in quotes")
    return _within_limit(normalize_text(value), where)


def _within_limit(text: str, where: Source, chapter: Chapter | None = None) -> str:
    if len(text) > MAX_TEXT_CHARS:
        which = f"chapter {chapter.title!r} ({chapter.origin})" if chapter else "the text"
        raise where.error(
            f"{which} is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}"
        )
    return text


def _validate_voice(
    raw: RawManifest,
    data: dict[str, Any],
    loc: Loc,
    own: dict[str, Any] | None = None,
    overrides: Overrides = NO_OVERRIDES,
) -> Voice:
    """Voice from `data`; the first error (by line) becomes a ManifestError, or an
    OverrideError when the defaults' value came from `--set`.

    `own` holds the keys the script itself wrote; a problem with a value it inherited from the
    defaults (or from `--set`) says so.
    """
    try:
        return Voice.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        located = [(raw.locator.source((*loc, *err["loc"])), err) for err in errors]
        if own is None and overrides.settings:
            # A value given on the command line has no line of its own: it is named first.
            given = [pair for pair in located if _key(pair[1]) in overrides.values]
            located = given or located
        source, err = min(located, key=lambda pair: pair[0].line or 0)
        message = _message(err, SCRIPT_KEYS + VOICE_KEYS if own is not None else VOICE_KEYS)
        key = _key(err)
        inherited = key is not None and own is not None and key not in own
        setting = overrides.setting(key) if key is not None else None
        if setting is not None and own is None:
            raise setting.error(message) from exc
        if setting is not None and inherited:
            message += f" (the value comes from --set {setting})"
        elif inherited:
            message += " (the value comes from defaults)"
        raise source.error(message) from exc


def _key(err: ErrorDetails) -> str | None:
    """The setting an error is about."""
    return str(err["loc"][0]) if err["loc"] else None


def _message(err: ErrorDetails, known: tuple[str, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return unknown_key_message(str(err["loc"][-1]), known)
    if kind == "value_error":
        return str(err["ctx"]["error"])
    value = err["input"]
    shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
    got = f" (got {shown!r})" if isinstance(value, str | int | float | bool) else ""
    return f"{err['msg']}{got}"


def _place(source: Source) -> str:
    line = f"line {source.line}" if source.line is not None else "an earlier entry"
    return f"row {source.row}, {line}" if source.row is not None else line
