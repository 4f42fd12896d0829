"""What a scan engine is: the one Protocol the local and Ray engines implement, and what a
third one (Dask, Spark, ...) must implement to be chosen by `scan --engine NAME`.

The scanning process keeps the walk, the lock, the cache, the records and every move
(pipeline/scan/scanner.py); an engine only turns file entries into Outcomes. Both engines share
one worker: a file is decoded by `pipeline/decode.py` (decode_one, or a Decoder pool of it) and
scored by `engines/scoring.outcomes`, so a status means the same whatever engine made it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ...data import FileEntry


class Outcome(NamedTuple):
    """What an engine says of one file: its status (data.OK, reports.records.OOD, or a decode
    status), a message, the predicted and nearest class indices (-1: none) and the normalised
    score (None when not scored; > 1 rejects)."""

    status: str
    message: str
    predicted: int
    nearest: int
    score: float | None


@runtime_checkable
class Engine(Protocol):
    """An engine, made by its factory in engines/registry.py from a scan's Scorer and options.

    Used as a context manager around one scan. Between enter and exit the scanner calls:
    - `submit(entries)`: start decoding and scoring a batch (a list of data.FileEntry, each an
      image file the cache could not answer); returns a handle, immediately or soon;
    - `collect(entries, handle)`: the batch's Outcomes, one per entry, in the entries' order,
      whatever order the work finished in; an error here stops the scan;
    - `cancel(handle)`: a batch whose outcomes will never be collected (the scan stopped);
    - `ahead()`: how many submitted batches may be in flight before the next collect.
    An engine never writes, caches or moves anything: its outcomes come back to the scanner,
    which applies them as the local engine's.
    """

    def __enter__(self) -> "Engine": ...

    def __exit__(self, *exc) -> None: ...

    def submit(self, entries: "list[FileEntry]") -> object: ...

    def collect(self, entries: "list[FileEntry]", handle: object) -> list[Outcome]: ...

    def cancel(self, handle: object) -> None: ...

    def ahead(self) -> int: ...
