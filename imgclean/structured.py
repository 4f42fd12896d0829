"""Bounded readers for every structured file imgclean reads: JSON documents, JSON lines, CSV and
YAML, each with limits on nesting depth, line (or field) length and total size.

Any of these files may come from someone else (an edited report, a damaged journal, a model
directory from elsewhere, a settings file), so none of them may turn into a traceback or an
unbounded allocation. Python's parsers recurse: json.loads of a few KB of `[[[[...` raises
RecursionError (not a ValueError) and yaml's composer does the same, and csv stops mid-file at
its 131,072-character field limit with a bare csv.Error. Here:

- the nesting depth of a JSON text is measured before json.loads sees it (bracket counts first,
  which settle almost every line at C speed; only a line with more brackets than the limit has
  its strings removed and its brackets peeled, one level per pass);
- a line longer than the limit is never held whole: it is read in bounded pieces and reported;
- NUL characters and text that is not UTF-8 are errors, not crashes (CSV reports keep their
  surrogate-escaped bytes: a file name that is not UTF-8 is written there as it is);
- every problem is a :class:`StructuredInputError`, one line naming the file, the line and the
  limit. JSON lines and CSV rows are yielded one at a time, so a caller chooses whether a bad
  line stops it (a report) or is reported and skipped (a journal).

csv's field limit is a process-wide setting: reading a CSV here raises it (never lowers it) to
:data:`MAX_FIELD_CHARS`, since a path in a report of a deep tree can be longer than csv's default.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from typing import IO, Any, Iterator

from .errors import ImgcleanError

MiB = 1 << 20
MAX_DEPTH = 32  # far deeper than anything imgclean writes (a report row is 1, a journal record 2)
MAX_LINE_BYTES = 8 * MiB  # a JSON line (a row naming a path of a 1,000-level tree fits easily)
MAX_FIELD_CHARS = 8 * MiB  # a CSV field, and a CSV physical line
_PIECE = 1 * MiB  # how much of an over-long line is read at a time while skipping it


class StructuredInputError(ImgcleanError, ValueError):
    """A structured file (or one line of it) that cannot be read within the limits.

    `where` names the file, `line` the line (None for the whole file), `problem` what is wrong;
    str() is the one line for the user. `torn`: the line is the file's last and has no newline
    (a write cut short: a journal drops such a line)."""

    def __init__(self, where: object, problem: str, line: int | None = None, torn: bool = False):
        self.where, self.problem, self.line, self.torn = str(where), problem, line, torn
        at = f"{self.where} line {line}" if line is not None else self.where
        super().__init__(f"{at}: {problem}")


@dataclass(frozen=True)
class Limits:
    """What a reader accepts: nesting `depth`, `line_bytes` per JSON line, `field_chars` per CSV
    field and physical line, and `total_bytes` for the whole input (None: any size, streamed)."""

    depth: int = MAX_DEPTH
    line_bytes: int = MAX_LINE_BYTES
    field_chars: int = MAX_FIELD_CHARS
    total_bytes: int | None = None


DEFAULT = Limits()

# ----------------------------------------------------------------------------- JSON

# A JSON string, escapes included, or an unterminated one up to the end of the text: it matches
# at every quote, so removing strings is one linear pass (an unterminated string that could fail
# to match would be retried from each of its escaped quotes: quadratic).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*\\?(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_ONE_KIND = str.maketrans("{}", "[]")
_loads = json.loads


def too_deep(text: str, depth: int) -> bool:
    """True when the JSON `text` nests arrays and objects more than `depth` levels (or has
    unclosed brackets that json.loads would recurse into). Never recurses itself.

    The count of opening brackets bounds the depth from above, so a text with at most `depth`
    of them is settled by two str.count calls. Otherwise strings are removed (a valid JSON
    string always matches _STRING, so brackets inside names never count), only the brackets are
    kept, and innermost pairs are removed one level per pass: what is left after `depth` passes
    is deeper than `depth`."""
    if text.count("[") + text.count("{") <= depth:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).translate(_ONE_KIND)
    for _ in range(depth):
        if "[]" not in brackets:
            break
        brackets = brackets.replace("[]", "")
    return "[" in brackets


def _check_text(text: str, limits: Limits) -> str:
    """'' when `text` may be given to json.loads, else what is wrong with it."""
    if "\x00" in text:
        return "holds a NUL character"
    if too_deep(text, limits.depth):
        return f"nested deeper than {limits.depth} levels (the limit)"
    return ""


def _decode(data: bytes) -> tuple[str | None, str]:
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"


def parse_json(text: str, where: object, limits: Limits = DEFAULT, line: int | None = None) -> Any:
    """json.loads(text) within `limits`, or StructuredInputError."""
    problem = _check_text(text, limits)
    if not problem:
        try:
            return _loads(text)
        except RecursionError:  # a backstop: _check_text has measured the depth already
            problem = f"nested deeper than {limits.depth} levels (the limit)"
        except ValueError as exc:  # JSONDecodeError, and int() of a number with too many digits
            problem = f"not valid JSON ({_short(str(exc))})"
    raise StructuredInputError(where, problem, line)


def load_json(data: bytes | str, where: object, limits: Limits = DEFAULT) -> Any:
    """One JSON document (bytes are UTF-8) within `limits`, or StructuredInputError."""
    if limits.total_bytes is not None and len(data) > limits.total_bytes:
        raise StructuredInputError(where, f"{len(data):,} bytes, more than the limit of {limits.total_bytes:,}")
    if isinstance(data, (bytes, bytearray, memoryview)):
        text, problem = _decode(bytes(data))
        if text is None:
            raise StructuredInputError(where, problem)
    else:
        text = data
    return parse_json(text, where, limits)


def json_lines(fh: IO[bytes], where: object, limits: Limits = DEFAULT) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSON-lines file opened in binary mode.

    A bad line (too long, not UTF-8, a NUL, too deep, not JSON) gives a StructuredInputError as
    its value instead of raising, so the caller decides; an over-long line is skipped in pieces,
    never held whole. More than `limits.total_bytes` in all raises."""
    readline, cap, total_limit = fh.readline, limits.line_bytes + 1, limits.total_bytes
    total = n = 0
    while True:
        raw = readline(cap)
        if not raw:
            return
        n += 1
        total += len(raw)
        if raw[-1:] != b"\n" and len(raw) == cap:  # longer than the limit: skip the rest of it
            while piece := readline(_PIECE):
                total += len(piece)
                if piece[-1:] == b"\n" or (total_limit is not None and total > total_limit):
                    break
            value, problem, torn = None, f"longer than {limits.line_bytes:,} bytes (the limit)", not piece
        elif not raw.strip():
            continue
        else:
            value, problem = _line_value(raw, limits)
            torn = raw[-1:] != b"\n"
        if total_limit is not None and total > total_limit:
            raise StructuredInputError(where, f"larger than {total_limit:,} bytes (the limit)")
        yield n, (StructuredInputError(where, problem, n, torn) if problem else value)


def _line_value(raw: bytes, limits: Limits) -> tuple[Any, str]:
    """(value, '') for one JSON line, or (None, what is wrong with it)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
    # The common case, a line without NUL and with few brackets, costs three C calls here.
    if "\x00" in text or text.count("[") + text.count("{") > limits.depth:
        problem = _check_text(text, limits)
        if problem:
            return None, problem
    try:
        return _loads(text), ""
    except RecursionError:  # a backstop: the depth is measured above
        return None, f"nested deeper than {limits.depth} levels (the limit)"
    except ValueError as exc:  # JSONDecodeError, and int() of a number with too many digits
        return None, f"not JSON ({_short(str(exc))})"


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- CSV


def bounded_lines(fh: IO[str], where: object, limits: Limits, counter: list[int]) -> Iterator[str]:
    """The physical lines of a text file, each at most `limits.field_chars` characters and
    without NUL; StructuredInputError (naming the line) otherwise. counter[0]: lines read.
    (CSV reads through it; so may any line-based format of reports/formats.py.)"""
    readline, cap = fh.readline, limits.field_chars + 1
    while True:
        line = readline(cap)
        if not line:
            return
        counter[0] += 1
        if len(line) == cap and line[-1] != "\n":
            raise StructuredInputError(where, f"longer than {limits.field_chars:,} characters (the limit)", counter[0])
        if "\x00" in line:
            raise StructuredInputError(where, "holds a NUL character", counter[0])
        yield line


class CsvRows:
    """The rows of a CSV file (opened in text mode with newline="") as dicts keyed by its header,
    within `limits`. Iterating gives (line number of the row's first line, dict); a row that
    cannot be parsed raises StructuredInputError naming its line (the rest of a CSV file cannot
    be trusted after a broken row). `fieldnames`: the header (empty for an empty file)."""

    def __init__(self, fh: IO[str], where: object, limits: Limits = DEFAULT):
        if csv.field_size_limit() < limits.field_chars:
            csv.field_size_limit(limits.field_chars)
        self.where, self.limits = where, limits
        self._count = [0]
        self._reader = csv.reader(bounded_lines(fh, where, limits, self._count))
        self.fieldnames: list[str] = self._next() or []

    def _next(self) -> list[str] | None:
        try:
            return next(self._reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            problem = str(exc)
            if "field larger than field limit" in problem:
                problem = f"a field is longer than {csv.field_size_limit():,} characters (the limit)"
            raise StructuredInputError(self.where, f"not readable CSV ({problem})", self._count[0]) from None

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        names = self.fieldnames
        width = len(names)
        while True:
            first = self._count[0] + 1
            values = self._next()
            if values is None:
                return
            if not values:
                continue  # a blank line, as csv.DictReader skips it
            if self._count[0] > first and max(map(len, values)) > self.limits.field_chars:
                # (a row on one line is bounded by the line limit; csv's own limit may be higher)
                raise StructuredInputError(
                    self.where, f"not readable CSV (a field is longer than {self.limits.field_chars:,} characters (the limit))", first
                )
            if len(values) == width:
                yield first, dict(zip(names, values))
            else:  # short rows get None, long ones keep the rest under None (as csv.DictReader)
                row = dict(zip(names, values))
                for name in names[len(values):]:
                    row[name] = None
                if len(values) > width:
                    row[None] = values[width:]
                yield first, row


# ----------------------------------------------------------------------------- YAML


def load_yaml(text: str | bytes, where: object, limits: Limits = DEFAULT) -> Any:
    """A YAML document with yaml's safe types, no aliases (a few hundred bytes of aliases can
    stand for millions of values) and at most `limits.depth` levels; StructuredInputError
    otherwise. Bytes must be UTF-8; `limits.total_bytes` bounds the size."""
    import yaml

    if limits.total_bytes is not None and len(text) > limits.total_bytes:
        raise StructuredInputError(where, f"larger than {limits.total_bytes:,} bytes (the limit)")
    if isinstance(text, bytes):
        decoded, problem = _decode(text)
        if decoded is None:
            raise StructuredInputError(where, problem)
        text = decoded
    if "\x00" in text:
        raise StructuredInputError(where, "holds a NUL character", text.count("\n", 0, text.index("\x00")) + 1)
    try:
        return yaml.load(text, Loader=_yaml_loader(limits.depth))
    except yaml.YAMLError as exc:
        raise StructuredInputError(where, f"not valid YAML: {_short(' '.join(str(exc).split()), 300)}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # int() of 5,000 digits, a 13th month...
        raise StructuredInputError(where, f"not valid YAML: {_short(str(exc))}") from None


_LOADERS: dict[int, type] = {}


def _yaml_loader(depth: int) -> type:
    """A SafeLoader that refuses aliases and nodes nested deeper than `depth` (one class per depth)."""
    if depth in _LOADERS:
        return _LOADERS[depth]
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        level = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(
                    None, None, "YAML aliases (*name) are not allowed", self.peek_event().start_mark
                )
            if self.level >= depth:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {depth} levels (the limit)", self.peek_event().start_mark
                )
            self.level += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.level -= 1

    _LOADERS[depth] = BoundedLoader
    return BoundedLoader
