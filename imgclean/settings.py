"""Settings files (imgclean.yaml): one section per command, keyed by option name.

    fit:  {epochs: 20, center-weight: 0.1}
    scan: {model: models/digits, batch-size: 512, json: true, move-to: rejected}

Keys are the option names as typed on the command line, with dashes or underscores
(`move-to` or `move_to`); the older parameter names (`json_out`) are still accepted.
Precedence: built-in defaults < the file < command-line flags.

A settings file is small and plain: at most MAX_FILE_BYTES, no YAML aliases (an alias tree of
a few hundred bytes can stand for millions of values), at most MAX_DEPTH levels of nesting (the
bounded reader, imgclean.structured.load_yaml), and values are scalars or short lists. An
unknown key gets a "did you mean" suggestion, as a mistyped flag does.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Mapping

from .errors import ImgcleanError
from .structured import Limits, StructuredInputError, load_yaml

CONFIG_SECTIONS = ("fit", "scan")
MAX_FILE_BYTES = 64 * 1024
MAX_DEPTH = 8  # a settings file is two levels deep (section: key: value), a list a third
MAX_VALUE_CHARS = 4096
MAX_LIST_ITEMS = 64
PREVIEW_CHARS = 60


class SettingsFileError(ImgcleanError, ValueError):
    """A settings file that cannot be used; the message names the file and the key."""


def preview(value: object) -> str:
    """repr(value) cut to a few dozen characters: an error never prints a huge value."""
    text = repr(value) if not isinstance(value, (list, dict)) else _short_repr(value)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


def _short_repr(value: object, budget: int = PREVIEW_CHARS + 1) -> str:
    # Never builds the whole repr of a deep or wide structure.
    if isinstance(value, list):
        parts, used = [], 1
        for item in value:
            if used > budget:
                parts.append("...")
                break
            part = _short_repr(item, budget - used)
            parts.append(part)
            used += len(part) + 2
        return "[" + ", ".join(parts) + "]"
    if isinstance(value, dict):
        return "{...}"
    text = repr(value)
    return text[:budget]


def _plain_value(path: Path, key: str, value: object) -> object:
    """A scalar, or a short list of scalars (e.g. mean: [0.5, 0.5, 0.5]) as "0.5,0.5,0.5"."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise SettingsFileError(f"{path}: {key} is {len(value)} characters long ({preview(value)}); at most {MAX_VALUE_CHARS}")
        return value
    if isinstance(value, list) and len(value) <= MAX_LIST_ITEMS and all(
        isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value
    ):
        return ",".join(str(v) for v in value)
    raise SettingsFileError(f"{path}: {key} must be a single value, not {preview(value)}")


def read_settings_file(path: Path, command: str, allowed: Mapping[str, str] | set[str]) -> dict:
    """The settings for `command` from a YAML file, keyed by parameter name.

    `allowed` maps each accepted key (dashes as underscores) to its parameter name; a set
    means the keys are the parameter names. The YAML is read by imgclean.structured.load_yaml
    (safe types, no aliases, at most MAX_DEPTH levels).
    """
    if not isinstance(allowed, Mapping):
        allowed = {name: name for name in allowed}
    path = Path(path)
    raw = _load(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsFileError(f"{path} must be a mapping with sections {', '.join(CONFIG_SECTIONS)}")
    unknown = [k for k in raw if k not in CONFIG_SECTIONS]
    if unknown:
        raise SettingsFileError(f"{path}: unknown section {preview(unknown[0])}{_did_you_mean(unknown[0], CONFIG_SECTIONS)}; "
                                f"use {', '.join(CONFIG_SECTIONS)}")
    section = raw.get(command) or {}
    if not isinstance(section, dict):
        raise SettingsFileError(f"{path}: section {command!r} must be a mapping of option: value")
    settings: dict = {}
    given: dict[str, str] = {}
    for key, value in section.items():
        shown = preview(key) if not isinstance(key, str) else key[:PREVIEW_CHARS]
        name = allowed.get(str(key).strip().replace("-", "_"))
        if name is None:
            suggestion = _did_you_mean(str(key).strip().replace("-", "_"), allowed, dashes=True)
            raise SettingsFileError(f"{path}: unknown key {command}.{shown}{suggestion}; "
                                    f"see `imgclean {command} -h` for the options")
        if name in given:
            raise SettingsFileError(f"{path}: {command}.{shown} and {command}.{given[name]} set the same option; keep one")
        given[name] = shown
        settings[name] = _plain_value(path, f"{command}.{shown}", value)
    return settings


def _load(path: Path) -> object:
    """The file's YAML document (None when empty), within the limits of a settings file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SettingsFileError(f"settings file {path} does not exist; `imgclean init-config` writes one") from None
    except OSError as exc:
        raise SettingsFileError(f"cannot read settings file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SettingsFileError(f"settings file {path} is larger than {MAX_FILE_BYTES // 1024} KiB; is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsFileError(f"cannot read settings file {path}: not UTF-8 text ({exc.reason})") from None
    try:
        return load_yaml(text, path, Limits(depth=MAX_DEPTH, total_bytes=MAX_FILE_BYTES))
    except StructuredInputError as exc:
        if exc.problem.startswith("not valid YAML"):
            raise SettingsFileError(f"{path} is {exc.problem}") from None
        raise SettingsFileError(str(exc)) from None


def _did_you_mean(key: object, known, dashes: bool = False) -> str:
    """" (did you mean batch-size?)" for a key close to a known one (as a mistyped flag gets)."""
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, list(known), n=1)
    if not close:
        return ""
    return f" (did you mean {close[0].replace('_', '-') if dashes else close[0]}?)"
