"""espeak-ng through ctypes: the engine's real (if robotic) speech.

The library comes from the `espeakng-loader` wheel, so no system package is needed. espeak-ng
keeps global state and is not thread-safe, so one process-wide `Espeak` owns it and runs every
call on its own single worker thread; callers on the event loop await `stream()`, which hands
audio over chunk by chunk while the sentence is still being synthesized.

Some of that state outlives an utterance and no call resets it, not even `espeak_Terminate`:
the position in the pitch-flutter table and the count of pitch cycles (static variables of its
wave generator) carry on, so the same sentence came out a few samples longer or shorter, and
different, each time. Every utterance therefore runs on the library loaded afresh (closed, then
opened again, about 2 ms), and the noise of breathy voices is drawn from a fixed seed rather than
the clock's, so a voice says the same text in the same bytes every time, in every process.

Input is SSML (`espeakSSML`), which gives `<prosody rate>` for inline speed words and keeps
espeak's `[[...]]` phoneme input working. Word events carry the character position in that SSML
string and the sample index where the word starts, so timestamps match the audio exactly.
"""

from __future__ import annotations

import _ctypes
import asyncio
import ctypes
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import espeakng_loader

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


class Espeak:
    """The process-wide espeak-ng instance."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._callback_ref: object = None
        self._sink: Callable[[EspeakChunk], bool] | None = None
        self.sample_rate = 22050

    def _load_afresh(self) -> ctypes.CDLL:
        """espeak-ng loaded anew, its static state as at first start, ready to synthesize."""
        if self._lib is not None:
            self._lib.espeak_Terminate()
            _ctypes.dlclose(self._lib._handle)
            self._lib = None
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
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
        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path, 0)
        if rate <= 0:
            raise RuntimeError("espeak-ng failed to initialize")
        self.sample_rate = int(rate)
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed(_RAND_SEED)
        if self._callback_ref is None:
            # ctypes callbacks die with their last Python reference
            self._callback_ref = _Callback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback_ref)
        self._lib = lib
        return lib

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
            lib = self._load_afresh()
            if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {voice.name!r}")
            lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
            lib.espeak_SetParameter(_PARAM_RANGE, voice.pitch_range, 0)
            rate = max(MIN_RATE_WPM, min(MAX_RATE_WPM, rate_wpm))
            lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
            data = ssml.encode("utf-8") + b"\0"
            flags = _CHARS_UTF8 | _SSML | _PHONEMES | _ENDPAUSE
            self._sink = sink
            try:
                lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
            finally:
                self._sink = None

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
    """The one espeak-ng instance of this process."""
    return Espeak()
