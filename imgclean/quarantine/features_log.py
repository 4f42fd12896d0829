"""``imgclean-features.bin``: what learning needs of each moved file, kept in its quarantine.

An append-only binary log beside the journal. Per record a fixed little-endian header

    magic b"ICFT" | version u16 | reserved u16 | journal move id (32 bytes, ASCII, NUL-padded)
    | model fingerprint, first 16 bytes | n_features u32 | n_logits u32 | CRC32 u32

followed by (n_features + n_logits) float32 values. The CRC covers the header before it and the
payload. One write per record; the caller (holding the quarantine's lock) fsyncs per batch.

Reading never trusts the file: it is opened through the quarantine folder's descriptor with
O_NOFOLLOW (a link is refused), must be a regular file owned by you, root or the quarantine's
owner and not group/other-writable (quarantine/decisions.distrust), at most MAX_LOG_BYTES. A
short or CRC-bad *last* record is a torn append (ignored; truncated before the next append). A
record with a bad magic or length stops the read (the rest is reported); a CRC-bad record
inside, an id the journal does not know, or a non-finite value is reported and never used.
"""
from __future__ import annotations

import errno
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .decisions import distrust
from .journal import FEATURES_NAME


MAGIC = b"ICFT"
VERSION = 1
HEADER = struct.Struct("<4sHH32s16sIII")
MAX_LOG_BYTES = 256 << 20  # a features file larger than this is refused, not read
MAX_FLOATS = 1 << 20  # per record: more is a damaged length, not a feature vector


class FeaturesLogError(OSError):
    """The features file cannot be used or appended to; str() is one line."""


@dataclass(frozen=True)
class FeatureRecord:
    move_id: str
    fingerprint: bytes  # the model fingerprint's first 16 bytes (fingerprint_key)
    features: np.ndarray  # float32 (n_features,)
    logits: np.ndarray  # float32 (n_logits,), may be empty


@dataclass
class FeaturesLog:
    records: dict[tuple[str, bytes], FeatureRecord] = field(default_factory=dict)  # (move id, fp key) -> newest
    problems: list[str] = field(default_factory=list)
    valid_end: int = 0  # bytes up to the end of the last whole record
    torn_tail: bool = False  # bytes after valid_end are a torn/CRC-bad last record
    damaged: bool = False  # a bad magic/length inside: the rest could not be read

    def get(self, move_id: str, fingerprint: str | None) -> FeatureRecord | None:
        key = fingerprint_key(fingerprint)
        return None if key is None else self.records.get((move_id, key))


def fingerprint_key(fingerprint: str | None) -> bytes | None:
    """The 16 bytes a record keeps of a model's fingerprint (its text, NUL-padded); None for none."""
    if not isinstance(fingerprint, str) or not fingerprint or not fingerprint.isascii() or "\x00" in fingerprint:
        return None
    return fingerprint.encode("ascii")[:16].ljust(16, b"\x00")


def encode(move_id: str, fingerprint: str, features: np.ndarray, logits: np.ndarray | None = None) -> bytes:
    """One record's bytes; ValueError for an id or fingerprint that cannot be keyed, or bad values."""
    key = fingerprint_key(fingerprint)
    raw_id = move_id.encode("ascii", "strict") if move_id.isascii() else b""
    if key is None or not raw_id or len(raw_id) > 32 or b"\x00" in raw_id:
        raise ValueError(f"move {move_id!r} / fingerprint cannot be keyed in {FEATURES_NAME}")
    feats = np.ascontiguousarray(features, dtype="<f4").ravel()
    lg = np.ascontiguousarray(logits if logits is not None else np.zeros(0), dtype="<f4").ravel()
    if feats.size == 0 or feats.size + lg.size > MAX_FLOATS or not (np.isfinite(feats).all() and np.isfinite(lg).all()):
        raise ValueError(f"move {move_id}: features are empty, too long or not finite")
    payload = feats.tobytes() + lg.tobytes()
    head = HEADER.pack(MAGIC, VERSION, 0, raw_id, key, feats.size, lg.size, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def _parse(blob: bytes, where: str, known_ids: set[str] | None) -> FeaturesLog:
    out = FeaturesLog()
    pos, number = 0, 0
    while pos < len(blob):
        number += 1
        if len(blob) - pos < HEADER.size:
            out.torn_tail = True
            break
        magic, version, _, raw_id, key, n_feat, n_logit, crc = HEADER.unpack_from(blob, pos)
        if magic != MAGIC or version != VERSION or n_feat == 0 or n_feat + n_logit > MAX_FLOATS:
            out.problems.append(f"{where}: record {number} has a bad magic, version or length; it and the rest are not used")
            out.damaged = True
            break
        end = pos + HEADER.size + 4 * (n_feat + n_logit)
        if end > len(blob):
            out.torn_tail = True
            break
        payload = blob[pos + HEADER.size:end]
        if zlib.crc32(payload, zlib.crc32(blob[pos:pos + HEADER.size - 4])) != crc:
            if end == len(blob):
                out.torn_tail = True  # a torn last append
                break
            out.problems.append(f"{where}: record {number} fails its CRC; not used")
        else:
            _add(out, where, number, raw_id, key, np.frombuffer(payload, dtype="<f4").astype(np.float32), n_feat, known_ids)
        pos = end
        out.valid_end = pos
    return out


def _add(out: FeaturesLog, where: str, number: int, raw_id: bytes, key: bytes, values: np.ndarray,
         n_feat: int, known_ids: set[str] | None) -> None:
    move_id = raw_id.rstrip(b"\x00").decode("ascii", "replace")
    if known_ids is not None and move_id not in known_ids:
        out.problems.append(f"{where}: record {number} names move {move_id!r}, which the journal does not know; not used")
    elif not np.isfinite(values).all():
        out.problems.append(f"{where}: record {number} (move {move_id}) holds non-finite values; not used")
    else:
        out.records[(move_id, key)] = FeatureRecord(move_id, key, values[:n_feat], values[n_feat:])


def _open_dir(quarantine: Path) -> int:
    return os.open(quarantine, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _checked(fd: int, dir_fd: int, where: str) -> os.stat_result:
    st = os.fstat(fd)
    why = distrust(st, os.fstat(dir_fd))
    if why:
        raise FeaturesLogError(f"{where}: {why}; its features are not used")
    if st.st_size > MAX_LOG_BYTES:
        raise FeaturesLogError(f"{where} is larger than {MAX_LOG_BYTES >> 20} MiB; its features are not used")
    return st


def _open_file(dir_fd: int, flags: int, where: str) -> int:
    try:
        return os.open(FEATURES_NAME, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FeaturesLogError(f"{where} is a symbolic link; refusing to follow it") from None
        if isinstance(e, FileNotFoundError):
            raise
        raise FeaturesLogError(f"{where} cannot be opened ({e.strerror or e})") from None


def _read_fd(fd: int, size: int) -> bytes:
    chunks, total = [], 0
    while total < size and (chunk := os.read(fd, min(1 << 20, size - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_log(quarantine: str | os.PathLike, known_ids: set[str] | None = None) -> FeaturesLog:
    """The usable records of ``quarantine``'s features file (none when it is absent). Never
    raises for a damaged, refused or unreadable file: that is the result's ``problems``."""
    where = os.fsdecode(Path(quarantine) / FEATURES_NAME)
    try:
        dir_fd = _open_dir(Path(quarantine))
    except OSError:
        return FeaturesLog()
    try:
        try:
            fd = _open_file(dir_fd, os.O_RDONLY, where)
        except FileNotFoundError:
            return FeaturesLog()
        try:
            st = _checked(fd, dir_fd, where)
            return _parse(_read_fd(fd, st.st_size), where, known_ids)
        finally:
            os.close(fd)
    except OSError as e:
        return FeaturesLog(problems=[str(e) if isinstance(e, FeaturesLogError) else f"{where}: {e.strerror or e}"])
    finally:
        os.close(dir_fd)


def append_records(quarantine: str | os.PathLike, records: list[bytes]) -> int:
    """Append encoded records (encode()) to ``quarantine``'s features file, one write each, then
    fsync. The caller holds the quarantine's lock. A torn last record is truncated first; a file
    damaged inside, a link, or one not trusted is refused (FeaturesLogError). Returns the count."""
    where = os.fsdecode(Path(quarantine) / FEATURES_NAME)
    if not records:
        return 0
    dir_fd = _open_dir(Path(quarantine))
    try:
        fd = _open_file(dir_fd, os.O_RDWR | os.O_CREAT, where)
        try:
            st = _checked(fd, dir_fd, where)
            state = _parse(_read_fd(fd, st.st_size), where, None)
            if state.damaged:
                raise FeaturesLogError(f"{where} is damaged ({state.problems[0]}); move it aside to record features again")
            if state.valid_end != st.st_size:
                os.ftruncate(fd, state.valid_end)
            os.lseek(fd, state.valid_end, os.SEEK_SET)
            for record in records:
                view = memoryview(record)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
    return len(records)

