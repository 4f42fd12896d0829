"""Duplicates in a folder: the same bytes, the same pixels, and near-duplicates by deep features.

Three kinds, found in this order and merged into groups (a union-find over the files):

- ``bytes``: the same file content. Files are grouped by size first; only sizes shared by two
  or more files are read and hashed (sha256).
- ``pixels``: different files, the same picture (a PNG re-saved as another PNG or as BMP, say).
  Candidates share the hash of their decoded model-size array; each candidate is then decoded at
  full resolution and kept only when the full-resolution pixels hash the same, so two pictures
  that merely shrink to the same small array are never called identical.
- ``near``: cosine similarity of L2-normalised deep features at or above a threshold, confirmed
  by the correlation of the decoded pixels. Searched a block of rows at a time against every
  file (at most ``max_block_bytes`` of similarities in memory at once, never all pairs), keeping
  each file's few most similar earlier files. Only files that are not exact copies take part.

Exact groups and near groups are kept apart (an exact copy points at the original of its exact
group, whatever near links that file has). In every group the original is the oldest file: the
earliest modification time (st_mtime_ns), and among files modified at the same instant the first
by path (its bytes) (:func:`sort_key`). A copy made later (cp, a download saved again, an export)
is newer than its source whatever its name, so the file a person had first is the one kept; every
other file of the group is a duplicate of it. Makes no decisions about moving; never prints.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ... import data

BYTES, PIXELS, NEAR = "bytes", "pixels", "near"
KIND_ORDER = (BYTES, PIXELS, NEAR)  # strongest first: a copy's reported link is its strongest one
NEIGHBOURS = 4  # near-duplicate links kept per file (the most similar earlier files)
MAX_BLOCK_BYTES = 64 * 2**20  # similarities held at once by the near-duplicate search
MIN_PIXEL_CORRELATION = 0.97  # a near duplicate's decoded pixels must correlate this well too
_READ_CHUNK = 1 << 20


@dataclass
class Duplicate:
    """One later copy: the index of its group's original, how it was linked, and the similarity."""

    original: int
    kind: str  # BYTES, PIXELS or NEAR (the strongest link of the copy into its group)
    similarity: float  # 1.0 for bytes and pixels, the cosine for near


class Groups:
    """Union-find over file indices, remembering each file's strongest link."""

    def __init__(self, n: int):
        self.parent = np.arange(n)
        self.link: dict[int, tuple[int, float]] = {}  # index -> (kind rank, similarity)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, i: int, j: int, kind: str, similarity: float) -> None:
        rank = KIND_ORDER.index(kind)
        for k in (i, j):
            old = self.link.get(k)
            if old is None or (rank, -similarity) < (old[0], -old[1]):
                self.link[k] = (rank, similarity)
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def duplicates(self, order_key: Sequence) -> dict[int, Duplicate]:
        """index -> Duplicate for every file but the first (by `order_key`) of each group."""
        members: dict[int, list[int]] = {}
        for i in self.link:
            members.setdefault(self.find(i), []).append(i)
        out = {}
        for group in members.values():
            group.sort(key=lambda i: order_key[i])
            for i in group[1:]:
                rank, sim = self.link[i]
                out[i] = Duplicate(group[0], KIND_ORDER[rank], float(sim))
        return out


def file_sha256(path) -> str | None:
    """sha256 of a file's bytes, or None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_READ_CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def full_pixels_hash(path) -> str | None:
    """Hash of an image's full-resolution pixels as RGBA (EXIF orientation applied), so the same
    picture saved as grey, palette or RGB hashes the same;
    decoded with scanning's format allow-list and pixel limit; None when it cannot be decoded."""
    import warnings

    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as fh, Image.open(fh, formats=data.ALLOWED_FORMATS) as img:
                if img.size[0] * img.size[1] > data.MAX_PIXELS:
                    return None
                img.load()
                img = ImageOps.exif_transpose(img).convert("RGBA")  # one form: grey, palette, RGB alike
                h = hashlib.sha256(f"{img.size}{img.mode}".encode())
                h.update(img.tobytes())
                return h.hexdigest()
    except Exception:  # a file that cannot be decoded is simply not a pixel duplicate
        return None


def exact_duplicates(paths: Sequence, sizes: Sequence[int], arrays: np.ndarray | None, groups: Groups,
                     progress: Callable[[int, int], None] | None = None) -> None:
    """Link files with the same bytes, then files with the same pixels, into `groups`.

    `paths[i]` and `sizes[i]` describe file i; `arrays[i]` is its decoded model-size array (None:
    no pixel check).
    """
    by_size: dict[int, list[int]] = {}
    for i, size in enumerate(sizes):
        by_size.setdefault(int(size), []).append(i)
    candidates = [i for group in by_size.values() if len(group) > 1 for i in group]
    by_digest: dict[str, int] = {}
    for n, i in enumerate(candidates, 1):
        digest = file_sha256(paths[i])
        if digest is not None:
            first = by_digest.setdefault(digest, i)
            if first != i:
                groups.union(first, i, BYTES, 1.0)
        if progress is not None and (n % 256 == 0 or n == len(candidates)):
            progress(n, len(candidates))
    if arrays is None or not len(arrays):
        return
    by_array: dict[bytes, list[int]] = {}
    for i in range(len(arrays)):
        by_array.setdefault(hashlib.sha256(np.ascontiguousarray(arrays[i]).tobytes()).digest(), []).append(i)
    for members in by_array.values():
        if len(members) < 2:
            continue
        roots = {groups.find(i) for i in members}
        if len(roots) == 1 and all(i in groups.link for i in members):
            continue  # all the same bytes already
        full: dict[str, int] = {}
        for i in members:
            digest = full_pixels_hash(paths[i])
            if digest is None:
                continue
            first = full.setdefault(digest, i)
            if first != i and groups.find(first) != groups.find(i):
                groups.union(first, i, PIXELS, 1.0)


def pixel_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two decoded arrays' pixels (mean removed, unit norm): 1 for the same picture."""
    x = a.astype(np.float32).ravel()
    y = b.astype(np.float32).ravel()
    x -= x.mean()
    y -= y.mean()
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx < 1e-6 or ny < 1e-6:  # flat pictures: alike only if equally flat
        return 1.0 if nx < 1e-6 and ny < 1e-6 and abs(float(a.mean()) - float(b.mean())) < 1.0 else 0.0
    return float(x @ y) / (nx * ny)


def near_duplicates(features: np.ndarray, threshold: float, groups: Groups, order_key: Sequence,
                    arrays: np.ndarray | None = None, min_pixel_correlation: float = MIN_PIXEL_CORRELATION,
                    candidates: np.ndarray | None = None, neighbours: int = NEIGHBOURS,
                    max_block_bytes: int = MAX_BLOCK_BYTES, progress: Callable[[int, int], None] | None = None) -> int:
    """Link files whose features have cosine similarity >= `threshold` into `groups` (and, with
    `arrays`, whose decoded pixels correlate at least `min_pixel_correlation`: deep features
    trained with center loss pull a class together, so two different pictures of one digit can
    reach a cosine of 0.995); returns the number of links made. Only rows where `candidates`
    (a bool mask) is true take part. Rows are processed in blocks so that at most
    `max_block_bytes` of similarities exist at once; each file keeps links to its `neighbours`
    most similar files that come before it in `order_key` order."""
    idx = np.arange(len(features)) if candidates is None else np.flatnonzero(candidates)
    n = len(idx)
    if n < 2:
        return 0
    f = np.asarray(features, dtype=np.float32)[idx]
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    order = sorted(range(n), key=lambda i: order_key[idx[i]])
    fs = f[order]  # rows in sort_key order: a row's earlier files are the columns before it
    block = max(1, int(max_block_bytes // (4 * n)))
    links = 0
    for start in range(1, n, block):
        stop = min(n, start + block)
        sims = fs[start:stop] @ fs[:stop].T  # only columns that can be earlier than some row
        for r in range(stop - start):
            row = sims[r, : start + r]  # strictly earlier files
            hits = np.flatnonzero(row >= threshold)
            if len(hits) > neighbours:
                hits = hits[np.argpartition(-row[hits], neighbours - 1)[:neighbours]]
            for c in hits:
                a, b = int(idx[order[c]]), int(idx[order[start + r]])
                if arrays is not None and pixel_correlation(arrays[a], arrays[b]) < min_pixel_correlation:
                    continue
                groups.union(a, b, NEAR, float(min(row[c], 1.0)))
                links += 1
        if progress is not None:
            progress(stop, n)
    return links


def sort_key(path: str | bytes, mtime_ns: int) -> tuple[int, bytes]:
    """The order that decides which file of a group is the original (the first): the oldest
    file by modification time, ties broken by the path's bytes."""
    return int(mtime_ns), os.fsencode(path)
