"""The cells of a report row, checked: what every report reader (scans: records.py; audits:
audit_records.py) accepts in a path, a count, a number, a text, a root. Each raises RowError
with a short message naming the cell; a huge or odd value is never echoed whole."""
from __future__ import annotations

import os
from typing import Any

# Text cells other than the path are at most MAX_TEXT characters: a record's message goes into a
# quarantine's journal when its file is moved.
MAX_TEXT = 65_536


class RowError(ValueError):
    """One row of a report is not sound (the message says which cell and why)."""


def preview(value: Any) -> str:
    """A value as an error shows it: never a huge one."""
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def count_cell(value: Any, key: str) -> int | None:
    """A non-negative integer (JSON) or digits (CSV); None for an empty cell."""
    if type(value) is int and value >= 0:  # (the common cases first: a report is read twice by apply)
        return value
    if value.__class__ is str and value.isdigit() and value.isascii():
        return int(value)
    if value is None or value == "":
        return None
    raise RowError(f"{key} {preview(value)} is not a non-negative integer")


def text_cell(value: Any, key: str) -> str | None:
    """A string of at most MAX_TEXT characters; None for an empty cell."""
    if value.__class__ is str and len(value) <= MAX_TEXT:
        return value or None
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"{key} {preview(value)} is not a string")
    if len(value) > MAX_TEXT:
        raise RowError(f"{key} is {len(value):,} characters long, more than the limit of {MAX_TEXT:,}")
    return value or None


def number_cell(value: Any, key: str) -> float | None:
    """A number (JSON) or its text (CSV); None for an empty cell or NaN."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RowError(f"{key} {preview(value)} is not a number") from None
    return None if number != number else number  # NaN: no number


def root_cell(value: Any) -> str | None:
    """The scanned folder a row records: an absolute path, or None."""
    root = text_cell(value, "root")
    if root is not None and ("\x00" in root or not os.path.isabs(root)):
        raise RowError(f"root {preview(root)} is not an absolute path")
    return root


_UNNORMAL = frozenset(("", ".", ".."))  # components normpath would remove or resolve


def check_relative(path: Any, key: str = "path") -> str:
    """A record's path: relative, normalised, no `..`, no NUL; else RowError saying which."""
    if not isinstance(path, str) or not path:
        raise RowError(f"the {key} is missing")
    if "\x00" in path:
        raise RowError(f"the {key} holds a NUL character")
    parts = path.split(os.sep)
    if _UNNORMAL.isdisjoint(parts):  # relative and normalised: what os.path.normpath leaves as it is
        return path
    if os.path.isabs(path):
        raise RowError(f"the {key} {preview(path)} is absolute; a report's paths are relative to its root")
    if ".." in parts:
        raise RowError(f"the {key} {preview(path)} climbs out of the root with '..'")
    raise RowError(f"the {key} {preview(path)} is not normalised")
