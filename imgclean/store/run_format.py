"""How the scan cache (store/cache.py) stores a walk run's snapshot, and reads one back.

A snapshot is a CRC-32 (4 bytes, big-endian) followed by marshal((FORMAT, span, positions,
sizes, mtimes, skips, devs, inos, ctimes, names, outcomes, rows)):
- FORMAT: this layout's number; a snapshot of any other (an older imgclean's, which kept no
  ctimes) reads as damaged, that is, a miss;
- sizes, mtimes (st_mtime_ns), skips (skip reasons), devs, inos, ctimes (st_ctime_ns), names
  and outcomes (status, predicted, nearest, score, message): one item per entry, in walk order;
  an entry's path is its name joined onto the run's folder. `names` is stored as None when span
  and positions give it;
- span: the names of the stretch of the folder's listing the run covered, images or not
  (walk.Run.span), or None when the run cannot be matched by its names (a name vanished
  mid-walk, or the entries are not that stretch's); positions: each entry's index in span, or
  None when entry i is span[i];
- rows: the run's CSV report rows (record_blocks.csv_rows), or None.
decoded() gives a Snapshot back with `names` filled in; its first eight items are what the walk
checks a listing against (walk_runs' `known`, walk._match).
"""
from __future__ import annotations

import marshal
import os
import zlib
from functools import partial
from operator import itemgetter
from typing import NamedTuple

from ..walk import FileEntry

FORMAT = 2
status = itemgetter(0)  # an outcome's status
_as_entry = partial(tuple.__new__, FileEntry)  # a tuple of an entry's fields as a FileEntry, in C


class Snapshot(NamedTuple):
    """A run's stored snapshot, as decoded() gives it (see the module docstring)."""

    span: list | None
    positions: list[int] | None
    sizes: list[int]
    mtimes: list[int]
    skips: list[str]
    devs: list
    inos: list
    ctimes: list
    names: list
    outcomes: list[tuple]
    rows: str | None


def encoded(folder, entries: list, outcomes: list[tuple], rows: str | None, span: list | None,
            positions: list[int] | None) -> bytes | None:
    """The stored form of a run's snapshot; None when marshal cannot store one of its values."""
    cut = len(joiner(folder))
    names = [e.fspath[cut:] for e in entries]
    if span is not None:
        span, positions = narrowed(span, positions, names)
    columns = [list(map(itemgetter(i), entries)) for i in range(1, 7)]  # size ... ctime_ns (FileEntry's order)
    try:
        data = marshal.dumps((FORMAT, span, positions, *columns, None if span is not None else names,
                              [tuple(o) for o in outcomes], rows))
    except ValueError:
        return None
    return zlib.crc32(data).to_bytes(4, "big") + data


def decoded(blob) -> Snapshot | None:
    """A stored snapshot, or None when it is damaged (bad checksum), of another format or not of
    that shape."""
    if not isinstance(blob, bytes) or len(blob) < 4 or zlib.crc32(blob[4:]) != int.from_bytes(blob[:4], "big"):
        return None
    try:
        stored = marshal.loads(blob[4:])
        if stored.__class__ is not tuple or len(stored) != 12 or stored[0] != FORMAT:
            return None
        _, span, positions, sizes, mtimes, skips, devs, inos, ctimes, names, outcomes, rows = stored
        if names is None:
            names = span if positions is None else list(map(span.__getitem__, positions))
        n = len(names)
        if (n == 0 or any(c.__class__ is not list or len(c) != n for c in (sizes, mtimes, skips, devs, inos, ctimes, names, outcomes))
                or not (span is None or span.__class__ is list) or not (positions is None or positions.__class__ is list)
                or (span is not None and positions is None and len(span) != n)
                or set(map(type, outcomes)) != {tuple} or set(map(len, outcomes)) != {5}
                or not (rows is None or rows.__class__ is str)):
            return None
    except (ValueError, EOFError, TypeError, IndexError):
        return None
    return Snapshot(span, positions, sizes, mtimes, skips, devs, inos, ctimes, names, outcomes, rows)


def entries(snapshot: Snapshot, folder) -> list[FileEntry]:
    """The entries of a decoded snapshot."""
    head = joiner(folder)
    names = snapshot.names
    if names and names[0].__class__ is not head.__class__:  # walked as bytes then, as str now (or back)
        return []
    return list(map(_as_entry, zip(map(head.__add__, names), snapshot.sizes, snapshot.mtimes, snapshot.skips,
                                   snapshot.devs, snapshot.inos, snapshot.ctimes)))


def joiner(folder):
    """What joins a name onto `folder` (as walk._joiner)."""
    sep = os.sep if folder.__class__ is str else os.sep.encode()
    return folder if not folder or folder.endswith(sep) else folder + sep


def narrowed(span: list, positions: list[int] | None, names: list) -> tuple[list | None, list[int] | None]:
    """(span, positions) for a run left with `names` of the entries that stretch of the listing
    gave (files moved away leave both); (None, None) when `names` are not such a run's."""
    try:
        walked = span if positions is None else [span[p] for p in positions]
    except (IndexError, TypeError):
        return None, None
    keep = set(names)
    gone = {n for n in walked if n not in keep}
    if gone:
        if [n for n in walked if n not in gone] != names:
            return None, None
        span = [n for n in span if n not in gone]
        index = {n: i for i, n in enumerate(span)}
        positions = [index[n] for n in names]
    elif walked != names:
        return None, None
    return span, None if positions is None or len(positions) == len(span) else positions
