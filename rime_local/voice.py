"""espeak-ng through ctypes: the engine's real (if robotic) speech.

The library comes from the `espeakng-loader` wheel, so no system package is needed. espeak-ng
keeps global state and is not thread-safe, so one process-wide `Espeak` owns it and runs every
call on its own single worker thread; callers on the event loop await `stream()`, which hands
audio over chunk by chunk while the sentence is still being synthesized.

Some of that state outlives an utterance and no call resets it, not even `espeak_Terminate`:
the position in the pitch-flutter table and the count of pitch cycles (static variables of its
wave generator) carry on, so the same sentence came out a few samples longer or shorter, and
different, each time. Every utterance therefore runs on a library loaded afresh, and the noise
of breathy voices is drawn from a fixed seed rather than the clock's, so a voice says the same
text in the same bytes every time, in every process. `Espeak` keeps two private copies of the
library: one speaks while a second thread reloads the other with the voice just used. A fresh
library costs about 0.7 ms of CPU (a short sentence about 1.3 ms), because espeak is shown only
the engine's voice files (`_data_view`); with the wheel's whole folder it cost 3 ms more.

Input is SSML (`espeakSSML`), which gives `<prosody rate>` for inline speed words and keeps
espeak's `[[...]]` phoneme input working. Word events carry the character position in that SSML
string and the sample index where the word starts, so timestamps match the audio exactly.
"""

from __future__ import annotations

import _ctypes
import asyncio
import contextlib
import ctypes
import queue
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import espeakng_loader

from rime_local.languages import LANGUAGES

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 0x1
_SSML = 0x10
_PHONEMES = 0x100
_ENDPAUSE = 0x1000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PARAM_RANGE = 4
# Milliseconds of audio per callback: small enough that the first bytes leave early.
_BUFFER_MS = 60
# espeak-ng seeds its noise (breathy variants) from the clock at start; any fixed seed will do.
_RAND_SEED = 1
# Copies of the library: one speaks while the other is loaded afresh.
_COPIES = 2
# espeak-ng's bundled variants: f1-f5 are its female voices, m1-m8 its male ones.
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8")

# espeak's own limits for the speaking rate, in words per minute.
MIN_RATE_WPM = 80
MAX_RATE_WPM = 450
DEFAULT_RATE_WPM = 175


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class EspeakVoice:
    """An espeak voice name (with optional `+variant`) and its pitch settings (0..100)."""

    name: str
    pitch: int = 50
    pitch_range: int = 50


@dataclass(frozen=True)
class WordMark:
    """espeak's start of a word: 1-based character position in the input, sample index."""

    text_position: int
    sample: int


@dataclass(frozen=True)
class EspeakChunk:
    """Audio (16-bit LE mono at `Espeak.sample_rate`) plus the marks that fell inside it."""

    pcm: bytes
    words: tuple[WordMark, ...] = ()
    clause_ends: tuple[int, ...] = ()


class SynthesisAborted(Exception):
    """The consumer stopped listening; espeak was told to stop."""


def _data_view(data: Path, root: Path, languages: Iterable[str], variants: Iterable[str]) -> Path:
    """espeak-ng's data folder under `root`, as links, with only the given voice files.

    espeak reads every voice file when it first parses SSML in a freshly loaded library (2.5 ms
    for the wheel's 245); the engine's 22 take a tenth of that. Each language file is linked
    under its name in lower case too, the name espeak opens (`gmw/en-US` as `gmw/en-us`).
    """
    view = root / "espeak-ng-data"
    view.mkdir()
    for entry in data.iterdir():
        if entry.name not in ("lang", "voices"):
            (view / entry.name).symlink_to(entry)
    for name in languages:
        link = view / "lang" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(data / "lang" / name)
        if not link.with_name(link.name.lower()).exists():
            link.with_name(link.name.lower()).symlink_to(data / "lang" / name)
    (view / "voices" / "!v").mkdir(parents=True)
    for variant in variants:
        (view / "voices" / "!v" / variant).symlink_to(data / "voices" / "!v" / variant)
    return view


class _Library:
    """A private copy of libespeak-ng: its own static state, loaded afresh after each use."""

    def __init__(self, path: str, data_path: bytes, callback: object) -> None:
        self.path = path
        self._data_path = data_path
        self._callback = callback
        self.lib: ctypes.CDLL | None = None
        self.voice: str | None = None  # the voice set since it was loaded

    def reload(self, voice_name: str) -> int:
        """Close and reopen the library, with `voice_name` set; espeak's sample rate."""
        self.close()
        lib = ctypes.CDLL(self.path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, self._data_path, 0)
        if rate <= 0:
            _ctypes.dlclose(lib._handle)
            raise RuntimeError("espeak-ng failed to initialize")
        lib.espeak_ng_SetRandSeed(_RAND_SEED)
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib
        self.set_voice(voice_name)
        return int(rate)

    def set_voice(self, name: str) -> None:
        """Make `name` the current voice (setting voices leaves no trace in the audio)."""
        if self.lib is None or name == self.voice:
            return
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {name!r}")
        self.voice = name

    def close(self) -> None:
        """Unload the library, its static state with it."""
        if self.lib is not None:
            self.lib.espeak_Terminate()
            _ctypes.dlclose(self.lib._handle)
        self.lib = None
        self.voice = None


class Espeak:
    """The process-wide espeak-ng: synthesis on one thread, fresh libraries from another.

    It speaks the voice files `languages` (paths under espeak-ng's `lang/`, like `gmw/en-US`)
    with the variants `variants` (names under `voices/!v`, like `f3`), and no others.
    """

    def __init__(self, languages: Collection[str], variants: Collection[str]) -> None:
        self._languages = tuple(languages)
        self._variants = tuple(variants)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak-load")
        self._lock = threading.Lock()
        self._ready: queue.Queue[_Library] = queue.Queue()
        self._copies: tempfile.TemporaryDirectory[str] | None = None
        self._data_path = b""
        # ctypes callbacks die with their last Python reference
        self._callback_ref = _Callback(self._on_audio)
        self._sink: Callable[[EspeakChunk], bool] | None = None
        self.sample_rate = 22050

    def _start(self) -> None:
        """Copy the library and load every copy, once (under the lock)."""
        if self._copies is not None:
            return
        # A copy at its own path is a separate library to the loader, with its own state.
        self._copies = tempfile.TemporaryDirectory(prefix="rime-local-espeak-")
        root = Path(self._copies.name)
        data = Path(espeakng_loader.get_data_path())
        view = _data_view(data, root, self._languages, self._variants)
        self._data_path = str(view).encode()
        for index in range(_COPIES):
            path = root / f"libespeak-ng-{index}.so"
            shutil.copyfile(espeakng_loader.get_library_path(), path)
            library = _Library(str(path), self._data_path, self._callback_ref)
            self.sample_rate = library.reload(self._languages[0])
            self._ready.put(library)

    def _recycle(self, library: _Library) -> None:
        """Load `library` afresh with the voice it last spoke, and make it ready again."""
        try:
            library.reload(library.voice or self._languages[0])
        except Exception:
            # Left unloaded: the next synthesis reloads it itself and reports what fails.
            with contextlib.suppress(Exception):
                library.close()
        self._ready.put(library)

    def _on_audio(
        self, wav: ctypes._Pointer[ctypes.c_short], count: int, evs: ctypes._Pointer[_Event]
    ) -> int:
        sink = self._sink
        if sink is None:
            return 1
        pcm = ctypes.string_at(wav, count * 2) if count > 0 and wav else b""
        words: list[WordMark] = []
        ends: list[int] = []
        i = 0
        while evs[i].type != _EVENT_LIST_TERMINATED:
            ev = evs[i]
            if ev.type == _EVENT_WORD:
                words.append(WordMark(ev.text_position, ev.sample))
            elif ev.type == _EVENT_END:
                ends.append(ev.sample)
            i += 1
        if not pcm and not words and not ends:
            return 0
        return 0 if sink(EspeakChunk(pcm, tuple(words), tuple(ends))) else 1

    def synth_blocking(
        self, ssml: str, voice: EspeakVoice, rate_wpm: int, sink: Callable[[EspeakChunk], bool]
    ) -> None:
        """Synthesize one SSML utterance on this thread; `sink` returns False to stop."""
        with self._lock:
            self._start()
            library = self._ready.get()
            try:
                if library.lib is None:
                    library.reload(voice.name)
                library.set_voice(voice.name)
                lib = library.lib
                assert lib is not None
                lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
                lib.espeak_SetParameter(_PARAM_RANGE, voice.pitch_range, 0)
                rate = max(MIN_RATE_WPM, min(MAX_RATE_WPM, rate_wpm))
                lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
                data = ssml.encode("utf-8") + b"\0"
                flags = _CHARS_UTF8 | _SSML | _PHONEMES | _ENDPAUSE
                self._sink = sink
                lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
            finally:
                self._sink = None
                self._loader.submit(self._recycle, library)

    async def stream(
        self, ssml: str, voice: EspeakVoice, rate_wpm: int
    ) -> AsyncIterator[EspeakChunk]:
        """Chunks of one utterance, handed over while espeak is still synthesizing it."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EspeakChunk | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def sink(chunk: EspeakChunk) -> bool:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return not stop.is_set()

        def run() -> None:
            try:
                self.synth_blocking(ssml, voice, rate_wpm, sink)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        future = loop.run_in_executor(self._executor, run)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            # Wait for espeak to return so the next utterance never shares its callback.
            await asyncio.shield(future)


@lru_cache(maxsize=1)
def get_espeak() -> Espeak:
    """The one espeak-ng instance of this process, with the engine's languages and variants."""
    languages = [language.espeak for language in LANGUAGES.values()]
    return Espeak(languages, FEMALE_VARIANTS + MALE_VARIANTS)
