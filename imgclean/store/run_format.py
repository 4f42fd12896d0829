"""How the scan cache (store/cache.py) stores a walk run's snapshot, and reads one back.

A snapshot is a CRC-32 (4 bytes, big-endian) followed by marshal((span, positions, sizes,
mtimes, skips, devs, inos, names, outcomes, rows)):
- sizes, mtimes (st_mtime_ns), skips (skip reasons), devs, inos, names and outcomes (status,
  predicted, nearest, score, message): one item per entry, in walk order; an entry's path is its
  name joined onto the run's folder. `names` is stored as None when span and positions give it;
- span: the names of the stretch of the folder's listing the run covered, images or not
  (walk.Run.span), or None when the run cannot be matched by its names (a name vanished
  mid-walk, or the entries are not that stretch's); positions: each entry's index in span, or
  None when entry i is span[i];
- rows: the run's CSV report rows (record_blocks.csv_rows), or None.
decoded() gives the tuple back with `names` filled in; its first seven items are what the walk
checks a listing against (walk_runs' `known`, walk._match).
"""
from __future__ import annotations

import marshal
import os
import zlib
from operator import itemgetter

status = itemgetter(0)  # an outcome's status


def encoded(folder, entries: list, outcomes: list[tuple], rows: str | None, span: list | None,
            positions: list[int] | None) -> bytes | None:
    """The stored form of a run's snapshot; None when marshal cannot store one of its values."""
    cut = len(joiner(folder))
    names = [e[0][cut:] for e in entries]
    if span is not None:
        span, positions = narrowed(span, positions, names)
    columns = [list(c) for c in zip(*entries)]
    try:
        data = marshal.dumps((span, positions, *columns[1:], None if span is not None else names,
                              [tuple(o) for o in outcomes], rows))
    except ValueError:
        return None
    return zlib.crc32(data).to_bytes(4, "big") + data


def decoded(blob) -> tuple | None:
    """A stored snapshot as (span, positions, sizes, mtimes, skips, devs, inos, names, outcomes,
    rows), or None when it is damaged (bad checksum) or not of that shape."""
    if not isinstance(blob, bytes) or len(blob) < 4 or zlib.crc32(blob[4:]) != int.from_bytes(blob[:4], "big"):
        return None
    try:
        stored = marshal.loads(blob[4:])
        if stored.__class__ is not tuple or len(stored) != 10:
            return None
        span, positions, sizes, mtimes, skips, devs, inos, names, outcomes, rows = stored
        if names is None:
            names = span if positions is None else list(map(span.__getitem__, positions))
        n = len(names)
        if (n == 0 or any(c.__class__ is not list or len(c) != n for c in (sizes, mtimes, skips, devs, inos, names, outcomes))
                or not (span is None or span.__class__ is list) or not (positions is None or positions.__class__ is list)
                or (span is not None and positions is None and len(span) != n)
                or set(map(type, outcomes)) != {tuple} or set(map(len, outcomes)) != {5}
                or not (rows is None or rows.__class__ is str)):
            return None
    except (ValueError, EOFError, TypeError, IndexError):
        return None
    return span, positions, sizes, mtimes, skips, devs, inos, names, outcomes, rows


def entries(snapshot: tuple, folder) -> list[tuple]:
    """The entries (path, size, mtime_ns, skip_reason, dev, ino) of a decoded snapshot."""
    head = joiner(folder)
    names = snapshot[7]
    if names and names[0].__class__ is not head.__class__:  # walked as bytes then, as str now (or back)
        return []
    return list(zip(map(head.__add__, names), *snapshot[2:7]))


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
