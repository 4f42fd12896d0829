"""After a run that moved files: keep what learning needs of each (quarantine/features_log.py).

`imgclean learn` learns from the files a reviewer left, restored and deleted. A deleted file
cannot be read again, so right after a moving run (scan --move-to, reject --move-to -m MODEL)
each file the run moved is read back from the quarantine (through a descriptor, only when it
still has the size and sha256 its journal record holds), embedded with the run's model, and its
deep features and logits appended to the quarantine's ``imgclean-features.bin``, keyed by the
journal's move id and the model's fingerprint.

It is a post-pass: it never moves or changes a picture, and whatever goes wrong here is a
warning in the result, never a failed run. The caller holds the quarantine open (its lock).
Never prints.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

BATCH = 64  # files decoded, embedded and appended (then fsynced) at a time
HELD = ("done", "kept_both")  # journal states of a move whose file is in the quarantine


@dataclass
class MoveFeatures:
    """What the post-pass did: records written, moved files it could not use, and why not."""

    written: int = 0
    unreadable: int = 0  # moved files gone or changed by the time it read them
    undecodable: int = 0  # moved files that are not pictures it can decode (a broken file): nothing to keep
    warnings: list[str] = field(default_factory=list)


def moves_now(quarantine) -> frozenset[str]:
    """The move ids an open quarantine's journal knows now (before a run); empty for none/dry runs."""
    journal = getattr(quarantine, "journal", None)
    if journal is None:
        return frozenset()
    return frozenset(jid for jid, op in journal.ops.items() if op["op"] == "move")


def _new_moves(quarantine, before: frozenset[str]) -> list[dict]:
    journal = quarantine.journal
    return [op for jid, op in journal.ops.items()
            if op["op"] == "move" and jid not in before and op["state"] in HELD]


def _read_images(bundle, ops: list[dict], result: MoveFeatures) -> tuple[list[str], list]:
    from ..learn.review_rows import ReviewItem, read_verified
    from ..learn.step import decode_bytes

    ids, images = [], []
    for op in ops:
        blob = read_verified(ReviewItem("left", int(op["size"]), op["sha256"], Path(op["destination"])))
        if blob is None:
            result.unreadable += 1
            continue
        image = decode_bytes(blob, bundle)
        if image is None:
            result.undecodable += 1
            continue
        ids.append(op["id"])
        images.append(image)
    return ids, images


def _embed_batch(bundle, ops: list[dict], device: str, fingerprint: str, result: MoveFeatures) -> list[bytes]:
    import numpy as np

    from ...nn.runtime import predict_arrays
    from ...quarantine.features_log import encode

    ids, images = _read_images(bundle, ops, result)
    if not images:
        return []
    cfg = bundle.config
    logits, feats = predict_arrays(bundle.model, np.stack(images), cfg["mean"], cfg["std"], device)
    records = []
    for jid, f, lg in zip(ids, feats, logits):
        try:
            records.append(encode(jid, fingerprint, f, lg))
        except ValueError as exc:  # e.g. non-finite features of a broken network: never written
            log.info("%s", exc)
            result.undecodable += 1
    return records


def record_moves(quarantine, bundle, before: frozenset[str], device: str = "cpu",
                 stop: Callable[[], bool] | None = None) -> MoveFeatures:
    """Append the features of the files moved into the open ``quarantine`` since ``before``
    (moves_now() taken before the run). ``stop()`` True (SIGINT/SIGTERM/SIGHUP) ends it early."""
    result = MoveFeatures()
    if getattr(quarantine, "journal", None) is None:
        return result
    ops = _new_moves(quarantine, before)
    fingerprint = bundle.config.get("fingerprint")
    if not ops:
        return result  # (a cached rescan that moved nothing imports no numpy here)
    from ...quarantine.features_log import FEATURES_NAME, append_records

    where = os.fsdecode(Path(quarantine.root) / FEATURES_NAME)
    if not isinstance(fingerprint, str):
        result.warnings.append(f"the model has no fingerprint; no features written to {where}")
        return result
    try:
        for start in range(0, len(ops), BATCH):
            if stop is not None and stop():
                result.warnings.append(f"interrupted: features of {len(ops) - start} moved file(s) not written to {where}")
                break
            records = _embed_batch(bundle, ops[start:start + BATCH], device, fingerprint, result)
            result.written += append_records(quarantine.root, records)
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:
        result.warnings.append(f"features of the moved files not written to {where}: {exc}")
    if result.unreadable:
        result.warnings.append(f"{result.unreadable} moved file(s) could not be read back for {where}; "
                               "`imgclean learn` cannot use them once deleted")
    return result


def record_after_run(quarantine_root: Path, bundle, before: frozenset[str], device: str = "cpu") -> MoveFeatures:
    """record_moves for a run that has closed its quarantine (reject): open it again (its lock)."""
    from ...quarantine.locking import LockError
    from ...quarantine.moves import Quarantine, QuarantineError

    try:
        with Quarantine(quarantine_root) as q:
            return record_moves(q, bundle, before, device)
    except (LockError, QuarantineError, OSError) as exc:
        return MoveFeatures(warnings=[f"features of the moved files not written: {exc}"])


def journal_moves(quarantine_root: Path) -> frozenset[str]:
    """moves_now for a quarantine not open here (read once from its journal)."""
    from ...fileops import is_quarantine
    from ...quarantine.journal import fold

    root = Path(os.path.abspath(quarantine_root))
    if not root.is_dir() or not is_quarantine(root):
        return frozenset()
    return frozenset(jid for jid, op in fold(root).ops.items() if op["op"] == "move")
