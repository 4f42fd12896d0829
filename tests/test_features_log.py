"""imgclean-features.bin (quarantine/features_log.py): format, damage, hostile files."""
import os
import struct

import numpy as np
import pytest

from imgclean.quarantine import features_log as fl

FP = "3322bea0661b5b07"


def vec(seed: int, n: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n).astype(np.float32)


@pytest.fixture
def q(tmp_path):
    root = tmp_path / "q"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    return root


def test_round_trip_keeps_features_logits_and_keys(q):
    records = [fl.encode(f"id{i}", FP, vec(i), vec(i + 10, 3)) for i in range(3)]
    assert fl.append_records(q, records[:2]) == 2 and fl.append_records(q, records[2:]) == 1
    log = fl.read_log(q, {"id0", "id1", "id2"})
    assert log.problems == [] and len(log.records) == 3
    got = log.get("id1", FP)
    assert np.array_equal(got.features, vec(1)) and np.array_equal(got.logits, vec(11, 3))
    assert log.get("id1", "another-model") is None  # another fingerprint: never used
    assert (q / fl.FEATURES_NAME).stat().st_size == 3 * (fl.HEADER.size + 4 * 11)


def test_torn_tail_is_ignored_and_truncated_before_the_next_append(q):
    fl.append_records(q, [fl.encode("a", FP, vec(0))])
    path = q / fl.FEATURES_NAME
    whole = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(fl.encode("b", FP, vec(1))[:-5])  # a crash mid-append
    log = fl.read_log(q, {"a", "b"})
    assert log.problems == [] and list(log.records) == [("a", fl.fingerprint_key(FP))] and log.torn_tail
    fl.append_records(q, [fl.encode("c", FP, vec(2))])
    assert path.stat().st_size == 2 * whole
    assert set(jid for jid, _ in fl.read_log(q, {"a", "b", "c"}).records) == {"a", "c"}


def test_crc_bad_record_inside_is_reported_and_skipped(q):
    fl.append_records(q, [fl.encode(i, FP, vec(n)) for n, i in enumerate(("a", "b", "c"))])
    path = q / fl.FEATURES_NAME
    blob = bytearray(path.read_bytes())
    size = len(blob) // 3
    blob[size + fl.HEADER.size + 2] ^= 0xFF  # a payload byte of record 2
    path.write_bytes(bytes(blob))
    log = fl.read_log(q, {"a", "b", "c"})
    assert {jid for jid, _ in log.records} == {"a", "c"}
    assert len(log.problems) == 1 and "record 2 fails its CRC" in log.problems[0]


def test_unknown_id_and_non_finite_values_are_reported_never_used(q):
    good = fl.encode("known", FP, vec(0))
    # a non-finite record with a valid CRC (as a buggy or hostile writer would make it)
    payload = np.array([1.0, np.nan], dtype="<f4").tobytes()
    head = fl.HEADER.pack(fl.MAGIC, fl.VERSION, 0, b"nan", fl.fingerprint_key(FP), 2, 0, 0)[:-4]
    import zlib

    nan = head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload
    fl.append_records(q, [good, fl.encode("stranger", FP, vec(1)), nan])
    log = fl.read_log(q, {"known", "nan"})
    assert {jid for jid, _ in log.records} == {"known"}
    assert any("'stranger', which the journal does not know" in p for p in log.problems)
    assert any("non-finite" in p for p in log.problems)
    with pytest.raises(ValueError):
        fl.encode("x", FP, np.array([np.inf], dtype=np.float32))


def test_bad_magic_stops_reading_and_refuses_appends(q):
    fl.append_records(q, [fl.encode("a", FP, vec(0)), fl.encode("b", FP, vec(1))])
    path = q / fl.FEATURES_NAME
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] = ord("X")  # record 2's magic
    path.write_bytes(bytes(blob))
    log = fl.read_log(q, {"a", "b"})
    assert set(jid for jid, _ in log.records) == {"a"} and log.damaged and "bad magic" in log.problems[0]
    with pytest.raises(fl.FeaturesLogError, match="damaged"):
        fl.append_records(q, [fl.encode("c", FP, vec(2))])
    assert path.read_bytes() == bytes(blob)  # never truncated past a record it cannot read


def test_a_link_in_place_of_the_file_is_refused(q, tmp_path):
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(fl.encode("a", FP, vec(0)))
    (q / fl.FEATURES_NAME).symlink_to(elsewhere)
    log = fl.read_log(q, {"a"})
    assert log.records == {} and "symbolic link" in log.problems[0]
    with pytest.raises(fl.FeaturesLogError, match="symbolic link"):
        fl.append_records(q, [fl.encode("b", FP, vec(1))])
    assert elsewhere.read_bytes() == fl.encode("a", FP, vec(0))


def test_oversized_file_is_refused_with_one_line(q, monkeypatch):
    fl.append_records(q, [fl.encode("a", FP, vec(0))])
    monkeypatch.setattr(fl, "MAX_LOG_BYTES", 64)
    log = fl.read_log(q, {"a"})
    assert log.records == {} and len(log.problems) == 1 and "larger than" in log.problems[0]


def test_group_writable_file_is_not_trusted(q):
    fl.append_records(q, [fl.encode("a", FP, vec(0))])
    os.chmod(q / fl.FEATURES_NAME, 0o664)
    log = fl.read_log(q, {"a"})
    assert log.records == {} and "writable by group or others" in log.problems[0]
    with pytest.raises(fl.FeaturesLogError):
        fl.append_records(q, [fl.encode("b", FP, vec(1))])


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_another_users_file_is_not_trusted(q):
    fl.append_records(q, [fl.encode("a", FP, vec(0))])
    os.chown(q / fl.FEATURES_NAME, 12345, 12345)
    log = fl.read_log(q, {"a"})
    assert log.records == {} and "owned by" in log.problems[0]


def test_a_fifo_in_place_of_the_file_does_not_hang(q):
    os.mkfifo(q / fl.FEATURES_NAME)
    log = fl.read_log(q, {"a"})
    assert log.records == {} and "not a regular file" in log.problems[0]


def test_restore_does_not_take_the_features_file_for_a_user_file(tmp_path):
    from imgclean.quarantine.moves import MoveRequest, Quarantine, restore

    folder, root = tmp_path / "in", tmp_path / "q"
    folder.mkdir()
    src = folder / "a.png"
    src.write_bytes(b"picture")
    with Quarantine(root) as q:
        st = src.stat()
        assert q.move(MoveRequest(source=src, scan_root=folder, reason="ood", size=st.st_size,
                                  mtime_ns=st.st_mtime_ns)).status == "moved"
        jid = next(iter(q.journal.ops))
    fl.append_records(root, [fl.encode(jid, FP, vec(0))])
    results = restore(root)
    assert [r.status for r in results] == ["restored"], results
    assert src.read_bytes() == b"picture" and (root / fl.FEATURES_NAME).exists()
