"""The typed manifest: per-job defaults, resolved scripts and the job they belong to.

Every limit a manifest is held to lives here (the README's table states the same ranges): sizes
of the manifest, of texts and text files, the number of scripts, how deep YAML may nest and how
far its aliases may expand, and the range of every setting. The pause limit is the markup's
(`pipeline.markup.MAX_PAUSE_MS`), so `pause_ms` and `<ms>` markup share one; a lexicon's limits
are the lexicon's (`pipeline.lexicon`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from pipeline.errors import ManifestError
from pipeline.lexicon import Lexicon
from pipeline.markup import MAX_PAUSE_MS
from pipeline.rime.languages import spellings
from pipeline.rime.models import DEFAULT_MAX_CHARS, MODELS
from pipeline.storage.keys import DEFAULT_KEEP_RELEASES

Format = Literal["wav", "wav-mulaw", "mulaw", "mp3", "ogg"]
CaptionFormat = Literal["srt", "vtt"]

# MPEG-1 Layer III bitrates; ffmpeg's mp3 encoder rounds anything else to one of these.
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)

# --- the limits of a manifest -----------------------------------------------------------------
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
MAX_SCRIPTS = 10_000
# One script's text, written inline or in a text file (also the CSV cell limit).
MAX_TEXT_CHARS = 1_000_000
# A text file is refused unread above this: UTF-8 spends at most 4 bytes on a character.
MAX_TEXT_FILE_BYTES = 4 * MAX_TEXT_CHARS
MAX_ID_CHARS = 200
# A book (`text_file: book.epub`): the file, its entries, and what is read of it uncompressed
# (the package, its contents and its XHTML chapters; images are never read).
MAX_EPUB_BYTES = 512 * 1024 * 1024
MAX_EPUB_ENTRIES = 20_000
MAX_EPUB_READ_BYTES = 256 * 1024 * 1024
# A chapter's title (from a book's contents, a heading or a line), and a `split:` regex with
# the time its matching may take over a whole text.
MAX_TITLE_CHARS = 200
MAX_SPLIT_PATTERN_CHARS = 500
SPLIT_SECONDS = 2.0
MAX_JOB_NAME_CHARS = 200
MAX_KEEP_RELEASES = 1_000
MAX_OUTPUT_CHARS = 1_000
MAX_SETTING_CHARS = 100  # speaker, lang
MAX_TITLE_CHARS = 200  # a script's title; the book's title, author and narrator
MAX_COVER_BYTES = 10 * 1024 * 1024  # a book's cover image, stored with the job
# Webhooks one job tells of its end (each URL at most pipeline.webhook.MAX_URL_CHARS long).
MAX_NOTIFY_URLS = 10
# Lists and mappings inside one another; a manifest needs 4 (scripts, a script, formats).
MAX_YAML_DEPTH = 32
# Values after YAML aliases are expanded: aliases can make a small file describe billions.
MAX_YAML_VALUES = 1_000_000
SPEED_RANGE = (0.25, 4.0)  # `speed` and every `inlineSpeedAlpha` value
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_MAX = 1.0  # above 0
REPETITION_PENALTY_MAX = 3.0  # above 0
LOUDNESS_RANGE = (-70.0, -5.0)
TRUE_PEAK_RANGE = (-9.0, 0.0)  # dBTP: the limiter's ceiling
# Characters a text may hold that are control characters; nothing else may hold any.
TEXT_CONTROLS = frozenset("\t\n\r")

# Lists written as one string (CSV cells, or `formats: mp3|wav` in YAML); Rime itself writes
# inlineSpeedAlpha comma-separated.
_LIST_SEPARATORS = re.compile(r"[|,]")


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in _LIST_SEPARATORS.split(value) if part.strip())
    return value


def _not_bool(value: Any) -> Any:
    # pydantic reads true as 1: `speed: true` would be accepted as a speed.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


Number = Annotated[float, BeforeValidator(_not_bool)]
Whole = Annotated[int, BeforeValidator(_not_bool)]


class Voice(BaseModel):
    """Synthesis and output settings: the job's defaults, or one script's resolved settings."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # Rime's request parameters keep Rime's spelling.
    speaker: str = Field(default="cove", min_length=1, max_length=MAX_SETTING_CHARS)
    modelId: str = "mistv2"
    lang: str = Field(default="eng", min_length=1, max_length=MAX_SETTING_CHARS)
    samplingRate: Whole | None = None  # None: the model's default
    # Higher is faster, for every model.
    speed: Number = Field(default=1.0, ge=SPEED_RANGE[0], le=SPEED_RANGE[1])
    pauseBetweenBrackets: bool = True
    phonemizeBetweenBrackets: bool = False
    noTextNormalization: bool = False
    temperature: Number | None = Field(
        default=None, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1]
    )
    top_p: Number | None = Field(default=None, gt=0.0, le=TOP_P_MAX)
    repetition_penalty: Number | None = Field(default=None, gt=0.0, le=REPETITION_PENALTY_MAX)
    inlineSpeedAlpha: tuple[Number, ...] | None = None

    # Our own settings, snake_case.
    formats: tuple[Format, ...] = Field(default=("wav",), min_length=1)
    pause_ms: Whole = Field(default=250, ge=0, le=MAX_PAUSE_MS)
    paragraph_pause_ms: Whole = Field(default=700, ge=0, le=MAX_PAUSE_MS)
    max_chars: Whole = Field(default=DEFAULT_MAX_CHARS, ge=1)  # at most the model's limit
    pauses_as_cuts: bool = False
    loudness_lufs: Number | None = Field(default=None, ge=LOUDNESS_RANGE[0], le=LOUDNESS_RANGE[1])
    true_peak_db: Number = Field(default=-1.0, ge=TRUE_PEAK_RANGE[0], le=TRUE_PEAK_RANGE[1])
    mp3_bitrate: str = "128k"
    # Subtitle files written beside each output, from word timestamps (synthesized over /ws3).
    captions: tuple[CaptionFormat, ...] = ()
    # Silence before the first speech and after the last, at least (a pause marker at the very
    # start or end that asks for more wins): the stitcher's own lead and trailing pause.
    lead_pause_ms: Whole = Field(default=0, ge=0, le=MAX_PAUSE_MS)
    tail_pause_ms: Whole = Field(default=0, ge=0, le=MAX_PAUSE_MS)
    # A named set of the settings above (pipeline.manifest.presets); the manifest's own win.
    preset: Literal["acx", "podcast"] | None = None

    @field_validator("modelId")
    @classmethod
    def _known_model(cls, model_id: str) -> str:
        if model_id not in MODELS:
            raise ValueError(f"unknown modelId {model_id!r} (known: {', '.join(sorted(MODELS))})")
        return model_id

    @field_validator("lang")
    @classmethod
    def _language_of_model(cls, lang: str, info: ValidationInfo) -> str:
        # Either of Rime's spellings; the three-letter code is what the plan keeps and sends.
        model_id = info.data.get("modelId")
        if model_id is None:
            return lang
        model = MODELS[model_id]
        code = model.language(lang)
        if code is None:
            raise ValueError(
                f"{lang!r} is not a language {model_id} speaks: expected one of "
                f"{spellings(model.languages)}"
            )
        return code

    @field_validator("max_chars")
    @classmethod
    def _within_model_limit(cls, max_chars: int, info: ValidationInfo) -> int:
        model_id = info.data.get("modelId")
        if model_id is not None and max_chars > MODELS[model_id].max_chars:
            raise ValueError(
                f"{max_chars} is more than {model_id} takes in one request: at most "
                f"{MODELS[model_id].max_chars}"
            )
        return max_chars

    @field_validator("samplingRate")
    @classmethod
    def _rate_fits_model(cls, rate: int | None, info: ValidationInfo) -> int | None:
        # Fields validate in declaration order, so a valid modelId is already in info.data.
        model_id = info.data.get("modelId")
        if rate is None or model_id is None:
            return rate
        model = MODELS[model_id]
        if not model.accepts_rate(rate):
            raise ValueError(
                f"{rate} is not a sampling rate {model_id} accepts: "
                f"expected {model.describe_rates()}"
            )
        return rate

    @field_validator("inlineSpeedAlpha", "formats", "captions", mode="before")
    @classmethod
    def _accept_joined_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("inlineSpeedAlpha")
    @classmethod
    def _alphas_in_range(cls, alphas: tuple[float, ...] | None) -> tuple[float, ...] | None:
        lo, hi = SPEED_RANGE
        wrong = next((a for a in alphas or () if not lo <= a <= hi), None)
        if wrong is not None:
            raise ValueError(
                f"every inlineSpeedAlpha value must be between {lo:g} and {hi:g} (got {wrong:g})"
            )
        return alphas

    @field_validator("formats", "captions")
    @classmethod
    def _distinct_formats(cls, formats: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({f for f in formats if formats.count(f) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return formats

    @field_validator("mp3_bitrate", mode="before")
    @classmethod
    def _bitrate(cls, value: Any) -> Any:
        # `mp3_bitrate: 128` in YAML is an int; it means 128k.
        text = f"{value}k" if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(text, str):
            number = text.strip().lower().removesuffix("k")
            if number.isdigit() and int(number) in MP3_BITRATES:
                return f"{int(number)}k"
            rates = ", ".join(f"{r}k" for r in MP3_BITRATES)
            raise ValueError(f"{value!r} is not an mp3 bitrate: expected one of {rates}")
        return text

    @property
    def effective_sampling_rate(self) -> int:
        """`samplingRate`, or the model's default when it is not set."""
        return self.samplingRate or MODELS[self.modelId].default_sampling_rate


class Source(BaseModel):
    """Where something came from in a manifest, to name it in later error messages."""

    model_config = ConfigDict(frozen=True)

    file: str
    line: int | None = None  # 1-based physical line
    row: int | None = None  # CSV only: 1-based data row (the header is not counted)
    field: str | None = None  # e.g. "scripts[3]"; None for a CSV row

    def error(self, message: str, field: str | None = None) -> ManifestError:
        """A ManifestError at this place; `field` is relative to it (e.g. "text")."""
        full = ".".join(part for part in (self.field, field) if part) or None
        return ManifestError(message, file=self.file, line=self.line, row=self.row, field=full)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return where if self.row is None else f"{where} (row {self.row})"


class ScriptSpec(BaseModel):
    """One script to render: its id, its text and its resolved settings."""

    # A Lexicon is checked when it is made (pipeline.manifest.lexicons) and shared, not copied.
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    id: str  # also the output's relative path (without extension)
    text: str  # newlines normalized to \n, surrounding whitespace removed
    text_file: str | None = None  # as written in the manifest, when the text came from a file
    # A chapter's title (a book's, or a split text's); None for a script that is not a chapter.
    title: str | None = None
    source: Source  # the script's entry
    text_source: Source  # its text or text_file key: where a problem in the text is reported
    voice: Voice  # the job's defaults merged with this script's overrides
    lexicon: Lexicon | None = None  # the job's lexicon with the script's own entries over it


class JobSpec(BaseModel):
    """A whole manifest: the job's name, where outputs go, its defaults and its scripts."""

    model_config = ConfigDict(frozen=True)

    name: str
    manifest: str  # the absolute path, or the s3:// URI
    destination: str  # an absolute local folder, or s3://bucket[/prefix]
    defaults: Voice
    scripts: tuple[ScriptSpec, ...]
    keep_releases: int = DEFAULT_KEEP_RELEASES  # releases kept when a new one is published
    notify: tuple[str, ...] = ()  # webhook URLs told of the job's end
    book: BookSpec | None = None  # a book assembled from the scripts (`pipeline.manifest.book`)


class BookSpec(BaseModel):
    """The manifest's `book:`: its metadata, cover and chapters (script ids, in order)."""

    model_config = ConfigDict(frozen=True)

    title: str
    scripts: tuple[str, ...]
    folder: str
    author: str | None = None
    narrator: str | None = None
    year: str | None = None
    cover: bytes | None = None
    cover_type: str | None = None  # "image/jpeg" | "image/png"
