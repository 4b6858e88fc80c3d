"""The rendering plan: what every stage after the manifest works from.

A `JobPlan` is pure data: per script, the synthesis parameters (`VoiceParams`, the one set the
client sends), the output settings and the segments with their pauses and cache keys. It is
built from a manifest by `build_plan`; `plan_manifest` is the one validation `plan`, `render`
and `submit` share: every check that needs no request runs there, before anything is recorded
or sent.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError
from pipeline.lexicon import Rewritten, apply
from pipeline.options import JobOptions, Publish
from pipeline.rime.models import get_model
from pipeline.rime.params import VoiceParams
from pipeline.segment import Boundary, TextSegment, lead_pause_ms, segment_text

if TYPE_CHECKING:
    from pipeline.manifest import JobSpec, ScriptSpec, Voice

# Bump when the request format or anything else that changes cached audio changes.
CACHE_VERSION = 1
# Cuts inside a sentence get a shorter, natural gap than the configured sentence pause.
WORD_GAP_MS = 80


@dataclass(frozen=True)
class OutputSpec:
    """How a script's stitched audio is finished and encoded."""

    formats: tuple[str, ...]  # wav | wav-mulaw | mulaw | mp3 | ogg
    loudness_lufs: float | None = None
    true_peak_db: float = -1.0
    mp3_bitrate: str = "128k"
    captions: tuple[str, ...] = ()  # srt | vtt: subtitles beside the audio, from word times
    # A book chapter without a wav output also writes one into its release, unlisted and never
    # published, so the book is encoded from lossless audio (`pipeline.book`).
    lossless_copy: bool = False


@dataclass(frozen=True)
class PlannedSegment:
    """One request to Rime and the silence that follows it in the stitched output."""

    index: int
    source: str  # exact slice of the script; joining every source gives the script back
    text: str  # the request text (boundary pause markers removed)
    pause_after_ms: int  # silence inserted after this segment at stitch time
    inline_speed_alpha: tuple[float, ...]
    cache_key: str
    # It holds `{phonemes}` a lexicon wrote: sent with phonemizeBetweenBrackets on.
    phonemes: bool = False

    @property
    def chars(self) -> int:
        """Characters billed for one request of this segment."""
        return len(self.text)

    def request_params(self, params: VoiceParams) -> VoiceParams:
        """The parameters this segment is synthesized with: its script's, and phoneme markup
        read when a lexicon wrote phonemes into it (only then, so other segments keep their
        cache keys)."""
        return replace(params, phonemize_between_brackets=True) if self.phonemes else params


@dataclass(frozen=True)
class ScriptPlan:
    """One script: its parameters, output settings and segments."""

    script_id: str
    params: VoiceParams
    output: OutputSpec
    segments: tuple[PlannedSegment, ...]
    lead_pause_ms: int = 0  # a pause marker at the very start of the script
    # Words the lexicon rewrote: shown by `plan`, not part of the work (not stored).
    lexicon_hits: int = field(default=0, compare=False)

    @property
    def chars(self) -> int:
        """Characters billed when every segment is synthesized once."""
        return sum(s.chars for s in self.segments)


def job_options(
    sets: Sequence[str] | None,
    voice_map: Sequence[str] | None,
    *,
    no_cache: bool = False,
    publish: str = "auto",
    notify: Sequence[str] | None = None,
) -> JobOptions:
    """The options of a job as asked for (`--set`, `--voice-map`, `--publish`, `--notify`, from
    the command line or the API), checked; an InputError names the flag."""
    from pipeline.manifest.overrides import SET, VOICE_MAP, split_assignment
    from pipeline.webhook import check_url

    try:
        mode = Publish(publish)
    except ValueError:
        raise InputError(f"--publish: {publish!r} is not auto or manual") from None
    urls = []
    for url in notify or ():
        try:
            urls.append(check_url(url))
        except ValueError as exc:
            raise InputError(f"--notify: {exc}") from None
    return JobOptions(
        set=tuple(split_assignment(SET, text) for text in sets or ()),
        voice_map=tuple(split_assignment(VOICE_MAP, text) for text in voice_map or ()),
        no_cache=no_cache,
        publish=mode,
        notify=tuple(dict.fromkeys(urls)),
    )


@dataclass(frozen=True)
class Chapter:
    """One chapter of a book: its script and its title."""

    script_id: str
    title: str


@dataclass(frozen=True)
class BookPlan:
    """A book assembled from a job's stitched scripts once all of them are done."""

    title: str
    chapters: tuple[Chapter, ...]
    folder: str  # where its files go in the release (see `pipeline.storage.keys.book_keys`)
    author: str | None = None
    narrator: str | None = None
    year: str | None = None
    cover: bytes | None = None  # JPEG or PNG, read when the job was planned
    cover_type: str | None = None  # "image/jpeg" | "image/png"

    def to_json(self) -> dict[str, object]:
        """The book as the job table stores it (its cover is kept beside, as bytes)."""
        return {
            "title": self.title,
            "chapters": [[c.script_id, c.title] for c in self.chapters],
            "folder": self.folder,
            "author": self.author,
            "narrator": self.narrator,
            "year": self.year,
            "cover_type": self.cover_type,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], cover: bytes | None) -> BookPlan:
        """The book of a stored job."""
        return cls(
            title=data["title"],
            chapters=tuple(Chapter(str(s), str(t)) for s, t in data["chapters"]),
            folder=data["folder"],
            author=data.get("author"),
            narrator=data.get("narrator"),
            year=data.get("year"),
            cover=cover,
            cover_type=data.get("cover_type"),
        )


@dataclass(frozen=True)
class JobPlan:
    """A whole job: where it came from, where it goes, its scripts and how it was asked for."""

    name: str
    manifest: str
    destination: str  # a local folder or s3://bucket/prefix
    scripts: tuple[ScriptPlan, ...]
    options: JobOptions = field(default_factory=JobOptions)
    book: BookPlan | None = None

    @property
    def chars(self) -> int:
        """Characters billed when every segment is synthesized once."""
        return sum(s.chars for s in self.scripts)


def timed_keys(plan: JobPlan) -> frozenset[str]:
    """The cache keys whose audio is wanted with word timestamps (their scripts ask for
    captions)."""
    return frozenset(s.cache_key for c in plan.scripts if c.output.captions for s in c.segments)


def cache_key(params: VoiceParams, text: str, inline_speed_alpha: tuple[float, ...]) -> str:
    """Content address of one segment's audio: same inputs, same key, on every machine."""
    payload = {
        "v": CACHE_VERSION,
        "text": text,
        "inlineSpeedAlpha": list(inline_speed_alpha),
        "params": asdict(params),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def synth_params(voice: Voice) -> VoiceParams:
    """The request parameters of a script's resolved settings, speed in the model's convention."""
    model = get_model(voice.modelId)
    return VoiceParams(
        speaker=voice.speaker,
        model_id=voice.modelId,
        lang=voice.lang,
        sampling_rate=voice.effective_sampling_rate,
        speed_alpha=None if voice.speed == 1.0 else model.speed_alpha(voice.speed),
        pause_between_brackets=voice.pauseBetweenBrackets,
        phonemize_between_brackets=voice.phonemizeBetweenBrackets,
        no_text_normalization=voice.noTextNormalization,
        temperature=voice.temperature,
        top_p=voice.top_p,
        repetition_penalty=voice.repetition_penalty,
    )


def gap_ms(segment: TextSegment, voice: Voice) -> int:
    """Silence after a segment: its pause markup if any, else the configured gap for its cut."""
    if segment.pause_after_ms is not None:
        return segment.pause_after_ms
    return {
        Boundary.PARAGRAPH: voice.paragraph_pause_ms,
        Boundary.SENTENCE: voice.pause_ms,
        Boundary.PAUSE: voice.pause_ms,
        Boundary.CLAUSE: voice.pause_ms // 2,
        Boundary.WORD: min(voice.pause_ms, WORD_GAP_MS),
        Boundary.END: 0,
    }[segment.boundary]


def plan_script(script: ScriptSpec) -> ScriptPlan:
    """Apply the lexicon and segment one script; markup, lexicon and length problems name the
    manifest place of its text."""
    voice = script.voice
    params = synth_params(voice)
    rewritten = _rewrite(script)
    try:
        segments = segment_text(
            rewritten.text,
            limit=voice.max_chars,
            inline_speed_alpha=voice.inlineSpeedAlpha or (),
            pauses_as_cuts=voice.pauses_as_cuts,
        )
    except InputError as exc:
        raise script.text_source.error(_locate(str(exc), script, exc, rewritten)) from exc
    # Where the lexicon wrote phonemes; markup is never cut, so each group is in one segment.
    phoneme_starts = [a for a, _ in rewritten.phoneme_spans()]
    last = len(segments) - 1
    planned = []
    for i, seg in enumerate(segments):
        first = bisect_left(phoneme_starts, seg.start)
        phonemes = first < len(phoneme_starts) and phoneme_starts[first] < seg.end
        segment = PlannedSegment(
            index=i,
            source=seg.source,
            text=seg.text,
            # The tail pause is the last segment's own trailing pause, at least.
            pause_after_ms=max(gap_ms(seg, voice), voice.tail_pause_ms if i == last else 0),
            inline_speed_alpha=seg.inline_speed_alpha,
            cache_key="",
            phonemes=phonemes and not params.phonemize_between_brackets,
        )
        key = cache_key(segment.request_params(params), seg.text, seg.inline_speed_alpha)
        planned.append(replace(segment, cache_key=key))
    output = OutputSpec(
        formats=tuple(voice.formats),
        loudness_lufs=voice.loudness_lufs,
        true_peak_db=voice.true_peak_db,
        mp3_bitrate=voice.mp3_bitrate,
        captions=tuple(voice.captions),
    )
    return ScriptPlan(
        script.id,
        params,
        output,
        tuple(planned),
        max(lead_pause_ms(segments), voice.lead_pause_ms),
        lexicon_hits=len(rewritten.substitutions),
    )


def _rewrite(script: ScriptSpec) -> Rewritten:
    """The script's text with its lexicon applied; a phoneme entry its model cannot read, or a
    text the lexicon makes too long, is the manifest's error."""
    from pipeline.manifest.models import MAX_TEXT_CHARS

    if script.lexicon is None:
        return Rewritten(script.text)
    try:
        rewritten = apply(script.lexicon, script.text)
    except InputError as exc:
        raise script.text_source.error(_locate(str(exc), script, exc)) from exc
    model = get_model(script.voice.modelId)
    unread = next(
        (
            s
            for s in rewritten.substitutions
            if s.entry.phonemes and not model.honours_phoneme_markup
        ),
        None,
    )
    if unread is not None:
        origin = f" ({unread.entry.origin})" if unread.entry.origin else ""
        raise script.text_source.error(
            f"the lexicon gives {unread.entry.key!r} the phonemes {unread.entry.replacement}"
            f"{origin}, but {model.id} does not read phoneme markup (Mist and Mist v2 do); give "
            f"this script an alias for it in its own lexicon{_where(script, unread.start)}"
        )
    if len(rewritten.text) > MAX_TEXT_CHARS:
        raise script.text_source.error(
            f"with its lexicon applied the text is {len(rewritten.text):,} characters long; the "
            f"limit is {MAX_TEXT_CHARS:,}"
        )
    return rewritten


def _locate(
    message: str, script: ScriptSpec, exc: Exception, rewritten: Rewritten | None = None
) -> str:
    """Add the line and column inside the script's text to a message with a character offset
    (an offset in the rewritten text is mapped back to where the script wrote it)."""
    position = getattr(exc, "position", None)
    if position is None:
        return message
    if rewritten is not None:
        position = rewritten.original_position(position)
    return message + _where(script, position)


def _where(script: ScriptSpec, position: int) -> str:
    before = script.text[:position]
    line = before.count("\n") + 1
    column = position - (before.rfind("\n") + 1) + 1
    where = f"{script.text_file}" if script.text_file else "the text"
    if script.title is not None:
        where = f"chapter {script.title!r} of {where}"
    return f" (line {line}, column {column} of {where})"


def book_plan(job: JobSpec) -> BookPlan | None:
    """The manifest's book, its chapters titled by their scripts (the id when untitled)."""
    if job.book is None:
        return None
    spec = job.book
    by_id = {s.id: s for s in job.scripts}
    return BookPlan(
        title=spec.title,
        chapters=tuple(Chapter(i, by_id[i].title or i) for i in spec.scripts),
        folder=spec.folder,
        author=spec.author,
        narrator=spec.narrator,
        year=spec.year,
        cover=spec.cover,
        cover_type=spec.cover_type,
    )


def _with_lossless_copy(script: ScriptPlan) -> ScriptPlan:
    if "wav" in script.output.formats:
        return script
    return replace(script, output=replace(script.output, lossless_copy=True))


def build_plan(job: JobSpec, options: JobOptions | None = None) -> JobPlan:
    """The rendering plan of a validated manifest, asked for with `options`."""
    book = book_plan(job)
    chapters = {c.script_id for c in book.chapters} if book else set()
    scripts = tuple(plan_script(s) for s in job.scripts)
    return JobPlan(
        name=job.name,
        manifest=str(job.manifest),
        destination=job.destination,
        scripts=tuple(_with_lossless_copy(s) if s.script_id in chapters else s for s in scripts),
        book=book,
        # The manifest's own say in how its releases are kept and whom they tell, with the
        # flags' options (their webhooks after the manifest's, each once).
        options=replace(
            options or JobOptions(),
            keep_releases=job.keep_releases,
            notify=tuple(dict.fromkeys((*job.notify, *(options.notify if options else ())))),
        ),
    )


def plan_manifest(
    path: Path | str,
    *,
    output: str | None = None,
    options: JobOptions | None = None,
    data: bytes | None = None,
    edit: Callable[[JobSpec], JobSpec] | None = None,
) -> JobPlan:
    """Read, validate and plan a manifest with the overrides of `options` applied; any problem
    is one InputError naming its place (or its flag). `data`: the manifest's bytes, as if at
    `path`; `edit` changes the validated manifest before it is planned."""
    job = load_job(path, output=output, options=options, data=data)
    return build_plan(edit(job) if edit is not None else job, options)


def load_job(
    path: Path | str,
    *,
    output: str | None = None,
    options: JobOptions | None = None,
    data: bytes | None = None,
) -> JobSpec:
    """The validated manifest with the overrides of `options` applied (what `plan_manifest`
    plans; `plan` also shows its chapters' titles)."""
    # Imported here: the stages and workers use plans, never manifests.
    from pipeline.manifest import load_manifest
    from pipeline.manifest.overrides import parse_overrides

    options = options or JobOptions()
    overrides = parse_overrides(options.set, options.voice_map)
    return load_manifest(path, output=output, overrides=overrides, data=data)
