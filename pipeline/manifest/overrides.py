"""Changes given on the command line: `--set key=value` and `--voice-map old=new`.

`--set` changes the job's defaults, as if written under `defaults:`; a script's own value still
wins. `--voice-map old=new` then renames a speaker wherever it is used: the defaults (after
`--set`) and every script's own `speaker`. Each name is renamed once; renames do not chain
(`a=b` and `b=c` send a's scripts to b and b's to c).

A value reads as it would in a manifest: one YAML value (`8000`, `1.5`, `true`, `luna`, `null`
clears an optional setting), a list written `mp3|wav` or `[mp3, wav]`. What needs no manifest is
checked here: the key, the value's syntax and characters, a new speaker's name. What a value
means (its range, whether the model takes it) is checked by the manifest's own validation when
the overrides are applied (`pipeline.manifest.build`), and a problem there names its flag.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.errors import OverrideError
from pipeline.manifest.characters import first_bad_value
from pipeline.manifest.models import Voice
from pipeline.manifest.readers import VOICE_KEYS, unknown_key_message

SET = "--set"
VOICE_MAP = "--voice-map"

_FORMS = {
    SET: "KEY=VALUE, e.g. --set speaker=luna",
    VOICE_MAP: "OLD=NEW, e.g. --voice-map cove=luna",
}
# Long enough for any setting's value; a longer one is shown cut in messages.
_SHOWN_CHARS = 60


@dataclass(frozen=True)
class Setting:
    """One `--set key=value`: the key, the value as given, and as YAML reads it."""

    key: str
    text: str
    value: Any

    def __str__(self) -> str:
        return f"{self.key}={self.text}"

    def error(self, message: str) -> OverrideError:
        """An OverrideError naming this `--set`."""
        return OverrideError(SET, _shown(str(self)), message)


@dataclass(frozen=True)
class Rename:
    """One `--voice-map old=new`."""

    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.old}={self.new}"

    def error(self, message: str) -> OverrideError:
        """An OverrideError naming this `--voice-map`."""
        return OverrideError(VOICE_MAP, _shown(str(self)), message)


@dataclass(frozen=True)
class Overrides:
    """Every override of one job, in the order given."""

    settings: tuple[Setting, ...] = ()
    renames: tuple[Rename, ...] = ()

    @property
    def values(self) -> dict[str, Any]:
        """The `--set` values by key, as they join the manifest's defaults."""
        return {s.key: s.value for s in self.settings}

    def setting(self, key: str) -> Setting | None:
        """The `--set` of `key`, if one was given."""
        return next((s for s in self.settings if s.key == key), None)

    def renamed(self, speaker: Any) -> Any:
        """`speaker` after `--voice-map`; anything not renamed is returned as it is."""
        return next((r.new for r in self.renames if r.old == speaker), speaker)


NO_OVERRIDES = Overrides()


def split_assignment(flag: str, text: str) -> tuple[str, str]:
    """`key=value` -> (key, value), each without surrounding spaces; the first `=` splits."""
    key, equals, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not equals or not key:
        raise OverrideError(flag, _shown(text), f"expected {_FORMS[flag]}")
    return key, value


def parse_overrides(
    sets: Iterable[tuple[str, str]] = (), voice_map: Iterable[tuple[str, str]] = ()
) -> Overrides:
    """Overrides from (key, value) and (old, new) pairs, as `JobOptions` records them."""
    settings: list[Setting] = []
    for key, text in sets:
        setting = _setting(key, text)
        if any(s.key == key for s in settings):
            raise setting.error(f"{key} is given twice; give each setting once")
        settings.append(setting)
    renames: list[Rename] = []
    for old, new in voice_map:
        rename = Rename(old, new)
        if not new:
            raise rename.error("expected a speaker after '='")
        if any(r.old == old for r in renames):
            raise rename.error(f"{old!r} is renamed twice; rename each speaker once")
        _check_speaker(rename)
        renames.append(rename)
    return Overrides(tuple(settings), tuple(renames))


def _setting(key: str, text: str) -> Setting:
    if key not in VOICE_KEYS:
        hint = " (give the destination with --output)" if key == "output" else ""
        message = unknown_key_message(key, VOICE_KEYS, what="setting") + hint
        raise OverrideError(SET, _shown(f"{key}={text}"), message)
    setting = Setting(key, text, None)
    if not text:
        raise setting.error("expected a value after '=' (null clears an optional setting)")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise setting.error(f"cannot be read as a value ({problem}); quote text with ''") from exc
    except (ValueError, OverflowError) as exc:  # a number too long to be one
        raise setting.error(f"the value cannot be read: {exc}") from exc
    if isinstance(value, dict):
        raise setting.error("must be one value, or a list written mp3|wav, not a mapping")
    bad = first_bad_value(value)
    if bad is not None:
        raise setting.error(bad[1])
    return Setting(key, text, value)


def _check_speaker(rename: Rename) -> None:
    """The new name is held to what `speaker:` in a manifest is; the old needs no check (a name
    no script uses is refused when the overrides are applied)."""
    bad = first_bad_value(rename.new)
    if bad is not None:
        raise rename.error(bad[1])
    try:
        Voice.model_validate({"speaker": rename.new})
    except ValidationError as exc:
        raise rename.error(exc.errors(include_url=False)[0]["msg"]) from exc


def _shown(text: str) -> str:
    shown = text if text.isprintable() else repr(text)
    return shown if len(shown) <= _SHOWN_CHARS else shown[: _SHOWN_CHARS - 3] + "..."
