"""The scan's review sample, chosen after the scan from candidates tracked while it ran.

The engines give a score per file, not its deep features, so the sample is chosen in two steps:
- while records stream, :class:`SampleCandidates` (a record sink) keeps in bounded memory the
  files the scan accepted (status ok; never a moved, rejected, skipped or person-accepted one):
  per predicted class the POOL * n highest-scoring (nearest the threshold from below), and a
  reservoir sample of RANDOM_POOL * n of all of them (the random spot check, and rows for the spread);
- after the scan, :func:`choose_sample` reads only those files again, by descriptor beneath the
  scanned folder (never through a link; a file whose size, mtime or inode differs from its record
  is left out), embeds them, and lets review_sample.review_sample choose n.
"""
from __future__ import annotations

import heapq
import logging
import math
import os
import random
import stat
from dataclasses import dataclass

from ... import data

log = logging.getLogger(__name__)

POOL = 4  # candidates near the threshold per pick: review_sample.POOL (not imported: that module needs numpy,
# which a rescan the cache answers whole never imports)
RANDOM_POOL = 2  # reservoir rows per pick
MAX_BOUNDARY_ROWS = 20_000  # candidates near the threshold kept over all classes, at most
DEFAULT_SAMPLE = 20


@dataclass(frozen=True)
class Candidate:
    """An accepted file as its record gave it (path relative to the scanned folder, identity)."""

    path: str
    score: float
    predicted: str | None
    nearest: str | None
    size: int | None
    mtime_ns: int | None
    dev: int | None
    ino: int | None


@dataclass(frozen=True)
class SampledFile:
    candidate: Candidate
    reason: str  # the part of the sample (review_sample.PARTS)

    @property
    def path(self) -> str:
        return self.candidate.path

    def record(self):
        """The file's record as the scan wrote it, with its review cell."""
        from ...reports.records import ScanRecord

        c = self.candidate
        return ScanRecord(c.path, data.OK, c.predicted, c.nearest, c.score, size=c.size, mtime_ns=c.mtime_ns,
                          dev=c.dev, ino=c.ino, review=self.reason)


class SampleCandidates:
    """A record sink keeping the review sample's candidates (see the module docstring)."""

    def __init__(self, n: int, classes: int = 1, seed: int = 0):
        self.n = max(0, int(n))
        self.per_class = max(POOL, min(POOL * self.n, MAX_BOUNDARY_ROWS // max(1, classes)))
        self.reservoir_size = RANDOM_POOL * self.n
        self.seen = 0  # accepted files offered
        self._near: dict[str | None, list] = {}  # predicted class -> min-heap of (score, seq, Candidate)
        self._reservoir: list[Candidate] = []
        self._rng = random.Random(seed)

    def __call__(self, record) -> None:
        if record.status == data.OK:
            self._offer(record.score, record.predicted, record.nearest, lambda: record.path, record)

    def write_block(self, block) -> None:
        """A block of records (reports.record_blocks.RecordBlock), from its entries: no record built."""
        rel, cut = block.rel, getattr(block.rel, "cut", None)
        for entry, outcome in zip(block.entries, block.outcomes, strict=True):
            if outcome[0] == data.OK:
                self._offer(outcome[3], outcome[1], outcome[2], lambda e=entry: e.fspath[cut:] if cut else rel(e.fspath),
                            entry)

    def _offer(self, score, predicted, nearest, path_of, source) -> None:
        if not self.n or score is None or not math.isfinite(score) or not source.size or source.ino is None:
            return
        self.seen += 1
        made = None

        def made_now() -> Candidate:
            nonlocal made
            if made is None:
                made = Candidate(os.fsdecode(path_of()), float(score), predicted, nearest, source.size, source.mtime_ns,
                                 source.dev, source.ino)
            return made

        heap = self._near.setdefault(predicted, [])
        if len(heap) < self.per_class:
            heapq.heappush(heap, (score, self.seen, made_now()))
        elif score > heap[0][0]:
            heapq.heapreplace(heap, (score, self.seen, made_now()))
        if len(self._reservoir) < self.reservoir_size:
            self._reservoir.append(made_now())
        else:
            j = self._rng.randrange(self.seen)
            if j < self.reservoir_size:
                self._reservoir[j] = made_now()

    def pool(self) -> tuple[list[Candidate], list[int]]:
        """(the candidates, without repeats: the POOL * n nearest the threshold dealt over the
        classes by rank, then the reservoir; the rows of the reservoir's)."""
        ranked = {c: sorted(h, key=lambda e: (-e[0], e[1])) for c, h in self._near.items()}
        near: list[Candidate] = []
        depth = 0
        while len(near) < POOL * self.n and any(depth < len(r) for r in ranked.values()):
            # at each rank, the classes' files in order of score: the best of every class first
            near += [r[depth][2] for r in sorted((r for r in ranked.values() if depth < len(r)), key=lambda r: -r[depth][0])]
            depth += 1
        near = near[: POOL * self.n]
        rows = {c.path: i for i, c in enumerate(near)}
        out, random_rows = list(near), []
        for c in self._reservoir:
            if c.path not in rows:
                rows[c.path] = len(out)
                out.append(c)
            random_rows.append(rows[c.path])
        return out, sorted(set(random_rows))


def open_beneath(root_fd: int, relative: str) -> int:
    """A descriptor of the regular file `relative` (below the folder `root_fd`), each step opened
    without following a link; OSError otherwise."""
    parts = relative.split("/")
    if not relative or any(p in ("", ".", "..") for p in parts):
        raise OSError(f"not a plain relative path: {relative!r}")
    fd = root_fd
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd = nxt
        out = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        if fd != root_fd:
            os.close(fd)
    if not stat.S_ISREG(os.fstat(out).st_mode):
        os.close(out)
        raise OSError(f"not a regular file: {relative!r}")
    return out


def _same(st: os.stat_result, c: Candidate) -> bool:
    return (st.st_size, st.st_mtime_ns, st.st_ino) == (c.size, c.mtime_ns, c.ino) and c.dev in (None, st.st_dev)


def read_candidate(root_fd: int, c: Candidate, settings):
    """The decoded image of a candidate still as its record says (else None)."""
    try:
        fd = open_beneath(root_fd, c.path)
    except OSError:
        return None
    try:
        if not _same(os.fstat(fd), c):
            return None
        image = data.decode_image(f"/proc/self/fd/{fd}", settings.size, settings.channels, settings.interpolation,
                                  settings.crop_pct)
        return image if _same(os.fstat(fd), c) else None  # (not changed while it was read)
    except Exception as exc:  # a file that no longer decodes is no sample: the scan's verdict stands
        log.debug("review sample: %s left out (%s)", c.path, exc)
        return None
    finally:
        os.close(fd)


def choose_sample(bundle, root, candidates: SampleCandidates, device: str = "cpu", seed: int = 0) -> list[SampledFile]:
    """The review sample of a scan of `root` (n of the candidates, in the order to show them)."""
    import numpy as np

    from ..decode import DecodeSettings
    from ..fit.headfit import embed
    from .review_sample import review_sample

    pool, random_rows = candidates.pool()
    if not pool or not candidates.n:
        return []
    settings = DecodeSettings.from_model(bundle)
    root_fd = os.open(os.path.realpath(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # (as run_scan resolves it)
    try:
        images = [read_candidate(root_fd, c, settings) for c in pool]
    finally:
        os.close(root_fd)
    kept = [i for i, image in enumerate(images) if image is not None]
    if not kept:
        return []
    where = {old: new for new, old in enumerate(kept)}
    from ...nn.runtime import prepare_for_inference

    prepare_for_inference(bundle.model, device, bundle.config.get("arch", ""), bundle.input_size)
    features = embed(bundle, np.stack([images[i] for i in kept]), device)
    scores = np.array([pool[i].score for i in kept])
    chosen = review_sample(bundle, features, scores, candidates.n, rng=seed,
                           random_rows=[where[i] for i in random_rows if i in where])
    return [SampledFile(pool[kept[row]], part) for row, part in zip(chosen.indices.tolist(), chosen.parts)]
