"""The decisions file: its records, the bounded reader, validation, trust and crash-safe appends
(imgclean/quarantine/decision_records.py and decisions.py)."""
import json
import multiprocessing
import os
import stat

import pytest

from imgclean.quarantine import decision_records as records
from imgclean.quarantine import decisions
from imgclean.quarantine.decision_check import AcceptedFiles
from imgclean.quarantine.decision_records import DECISIONS_NAME, read_decision_lines
from imgclean.quarantine.decisions import DecisionError, DecisionWriter, new_decision, read_folder

SHA = "a" * 64


def good(**changes) -> dict:
    rec = new_decision("accepted", "/data", "x.png", 3, SHA, "accept").to_dict()
    rec.update(changes)
    return rec


def write_lines(folder, *lines) -> None:
    (folder / DECISIONS_NAME).write_bytes(b"".join(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode() for line in lines))


def accept_file(folder, name="x.png", data=b"abc"):
    """A real file and a written acceptance of its content; returns (path, stat)."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    import hashlib

    with DecisionWriter(folder) as w:
        w.append(new_decision("accepted", folder, name, len(data), hashlib.sha256(data).hexdigest(), "accept"))
    return path, path.stat()


def asked(folder, name="x.png"):
    st = (folder / name).stat()
    return AcceptedFiles(folder).accepted(name, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


# ----------------------------------------------------------------------------- records


def test_a_record_round_trips_as_one_ascii_line_whatever_the_name(tmp_path):
    name = "we\nird \udcff näme.png"  # a newline and an undecodable byte in a file name
    d = new_decision("accepted", tmp_path, name, 5, SHA, "accept", journal=("/q", "abc123"))
    line = d.to_line()
    assert line.count(b"\n") == 1 and line.endswith(b"\n") and line.isascii()
    with DecisionWriter(tmp_path) as w:
        w.append(d)
    log = read_folder(tmp_path).log
    assert log.invalid == [] and len(log.records) == 1
    assert log.records[0] == d and log.records[0].path == name


@pytest.mark.parametrize("changes, reason", [
    ({"size": "3"}, "size"),
    ({"size": -1}, "size is negative"),
    ({"size": 3.0}, "size"),
    ({"uid": True}, "uid"),
    ({"sha256": "A" * 64}, "sha256"),
    ({"kind": "maybe"}, "kind"),
    ({"source": "cron"}, "source"),
    ({"format": 2}, "format"),
    ({"id": "../x"}, "id"),
    ({"path": "../outside.png"}, "not a plain relative path"),
    ({"path": "/etc/passwd"}, "not a plain relative path"),
    ({"path": "a/./b.png"}, "not a plain relative path"),
    ({"path": "a//b.png"}, "not a plain relative path"),
    ({"path": "a\x00b"}, "NUL"),
    ({"path": ""}, "path"),
    ({"path": ["x.png"]}, "path"),
    ({"root": "relative/root"}, "root"),
    ({"root": "/data/../etc"}, "root"),
    ({"time": "yesterday"}, "time"),
    ({"time": "2024-01-01T00:00:00"}, "time zone"),
    ({"journal": "q"}, "journal"),
    ({"journal": {"quarantine": "q", "id": "x"}}, "journal quarantine"),
    ({"withdraws": "abc"}, "withdraws"),
    ({"user": "x" * 1000}, "user"),
])  # fmt: skip
def test_records_with_wrong_fields_are_reported_and_never_used(tmp_path, changes, reason):
    path, st = accept_file(tmp_path)
    rec = {**good(path="x.png", size=st.st_size, sha256=read_folder(tmp_path).log.records[0].sha256), **changes}
    (tmp_path / DECISIONS_NAME).unlink()
    write_lines(tmp_path, rec)
    log = read_folder(tmp_path).log
    assert log.records == [] and len(log.invalid) == 1
    assert reason in log.invalid[0].reason
    assert asked(tmp_path) is None


def test_a_withdrawal_must_name_a_decision_in_force_in_the_same_file(tmp_path):
    first = good()
    lines = [first, good(kind="withdrawn", source="withdraw", withdraws="nope"),
             good(kind="withdrawn", source="withdraw", withdraws=first["id"], path="other.png"),
             good(id=first["id"])]  # the same id again
    write_lines(tmp_path, *lines)
    log = read_folder(tmp_path).log
    assert [r.id for r in log.records] == [first["id"]]
    assert [b.line for b in log.invalid] == [2, 3, 4]
    assert "no decision in force" in log.invalid[0].reason
    assert "another file" in log.invalid[1].reason
    assert "used twice" in log.invalid[2].reason


def test_the_latest_decision_about_a_picture_is_the_one_in_force(tmp_path):
    path, st = accept_file(tmp_path)
    sha = read_folder(tmp_path).log.records[0].sha256
    with DecisionWriter(tmp_path) as w:
        rejected = w.append(new_decision("rejected", tmp_path, "x.png", st.st_size, sha, "reject"))
    assert read_folder(tmp_path).log.current[(st.st_size, sha)] == rejected
    assert asked(tmp_path) is None  # rejected after it was accepted
    with DecisionWriter(tmp_path) as w:
        w.append(new_decision("withdrawn", tmp_path, "x.png", st.st_size, sha, "withdraw", withdraws=rejected.id))
    assert asked(tmp_path) is not None  # the rejection withdrawn: the acceptance before it stands again


# ----------------------------------------------------------------------------- the bounded reader


@pytest.mark.parametrize("line, reason", [
    (b"[" * 8000 + b"]" * 8000, "nested deeper"),
    (b'{"journal": ' + b"[" * 8000 + b"1" + b"]" * 8000 + b"}", "nested deeper"),
    (b"[" * 100_000 + b"]" * 100_000, "longer than"),
    (b'{"a": {"b": {"c": {"d": 1}}}}', "nested deeper"),
    (b'{"path": "' + b"x" * 20_000 + b'"}', "longer than"),
    (b'{"path": "a\x00b"}', "control character"),
    (b'{"path": "\xff\xfe"}', "utf-8"),
    (b"\x00\x00\x00", "JSON"),
    (b"not json at all", "JSON"),
    (b"1" * 5000, "JSON"),  # an integer too long to convert
    (b"[[[[[" + b'"\\' * 7000, "JSON"),  # quadratic for a regular expression of strings; one pass here
])  # fmt: skip
def test_hostile_lines_become_one_line_reports(tmp_path, line, reason):
    write_lines(tmp_path, good(), line + b"\n", good())
    log = read_folder(tmp_path).log
    assert len(log.records) == 2 and len(log.invalid) == 1
    message = log.invalid[0].message(DECISIONS_NAME)
    assert "\n" not in message and len(message) < 400
    assert reason.lower() in message.lower()


def test_brackets_inside_names_do_not_count_as_nesting(tmp_path):
    write_lines(tmp_path, good(path="[[[[[[{{{{ odd ]]]] name.png"))
    log = read_folder(tmp_path).log
    assert log.invalid == [] and log.records[0].path.startswith("[[[[")


def test_a_torn_last_line_is_dropped_and_closed_before_the_next_record(tmp_path):
    torn = (json.dumps(good()) + "\n").encode()[:-20]
    write_lines(tmp_path, good(), torn)
    log = read_folder(tmp_path).log
    assert len(log.records) == 1 and log.invalid == []  # a crash mid-append: not damage
    with DecisionWriter(tmp_path) as w:
        w.append(new_decision("accepted", tmp_path, "y.png", 1, SHA, "accept"))
    lines = (tmp_path / DECISIONS_NAME).read_bytes().split(b"\n")
    assert lines[1] == torn  # kept, on a line of its own, and reported from now on
    log = read_folder(tmp_path).log
    assert [r.path for r in log.records] == ["x.png", "y.png"] and [b.line for b in log.invalid] == [2]


def test_a_file_over_the_size_bound_is_refused_whole(tmp_path, monkeypatch):
    path, _ = accept_file(tmp_path)
    monkeypatch.setattr(records, "MAX_FILE_BYTES", 100)
    found = read_folder(tmp_path)
    assert found.log.records == [] and "larger than" in found.problem
    assert asked(tmp_path) is None
    with pytest.raises(DecisionError, match="larger than"):
        DecisionWriter(tmp_path).__enter__()


def test_the_reader_reads_through_the_descriptor_in_one_place(tmp_path):
    write_lines(tmp_path, good(), b"{broken\n")
    fd = os.open(tmp_path / DECISIONS_NAME, os.O_RDONLY)
    try:
        lines = read_decision_lines(fd)
    finally:
        os.close(fd)
    assert lines[0][0] == 1 and isinstance(lines[0][1], dict)
    assert lines[1][0] == 2 and isinstance(lines[1][1], ValueError)


# ----------------------------------------------------------------------------- trust


def test_a_group_writable_file_is_refused_with_one_warning_and_never_written(tmp_path, caplog):
    path, _ = accept_file(tmp_path)
    os.chmod(tmp_path / DECISIONS_NAME, 0o664)
    before = (tmp_path / DECISIONS_NAME).read_bytes()
    with caplog.at_level("WARNING"):
        files = AcceptedFiles(tmp_path)
    refusals = [r for r in caplog.records if "writable by group or others" in r.getMessage()]
    assert len(refusals) == 1
    st = path.stat()
    assert files.accepted("x.png", st.st_size, st.st_mtime_ns) is None
    with pytest.raises(DecisionError, match="writable by group or others"):
        DecisionWriter(tmp_path).__enter__()
    assert (tmp_path / DECISIONS_NAME).read_bytes() == before


def test_a_symlinked_decisions_file_is_refused_and_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    accept_file(elsewhere)
    root = tmp_path / "root"
    root.mkdir()
    (root / "x.png").write_bytes(b"abc")
    (root / DECISIONS_NAME).symlink_to(elsewhere / DECISIONS_NAME)
    found = read_folder(root)
    assert "symbolic link" in found.problem and found.log.records == []
    assert asked(root) is None
    with pytest.raises(DecisionError, match="symbolic link"):
        DecisionWriter(root).__enter__()


def test_a_fifo_in_its_place_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / DECISIONS_NAME)
    assert "not a regular file" in read_folder(tmp_path).problem
    with pytest.raises(DecisionError, match="not a regular file"):
        DecisionWriter(tmp_path).__enter__()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


@needs_root
def test_a_file_planted_by_another_user_is_refused(tmp_path):
    accept_file(tmp_path)
    os.chown(tmp_path / DECISIONS_NAME, 54321, 54321)  # a stranger's file in our folder
    found = read_folder(tmp_path)
    assert "not by you, root or the folder's owner" in found.problem
    assert asked(tmp_path) is None
    with pytest.raises(DecisionError, match="not by you"):
        DecisionWriter(tmp_path).__enter__()


@needs_root
def test_the_folder_owners_file_is_trusted(tmp_path):
    accept_file(tmp_path)
    os.chown(tmp_path, 54321, 54321)
    os.chown(tmp_path / DECISIONS_NAME, 54321, 54321)  # whoever owns the folder owns its files
    assert read_folder(tmp_path).problem is None
    assert asked(tmp_path) is not None


# ----------------------------------------------------------------------------- writing


def test_a_crash_before_the_write_leaves_every_earlier_record_valid(tmp_path, monkeypatch):
    from imgclean import fileops

    accept_file(tmp_path)

    def crash(step):
        if step == "decision":
            raise KeyboardInterrupt

    monkeypatch.setattr(fileops, "fault_hook", crash)
    with pytest.raises(KeyboardInterrupt), DecisionWriter(tmp_path) as w:
        w.append(new_decision("accepted", tmp_path, "y.png", 1, SHA, "accept"))
    monkeypatch.setattr(fileops, "fault_hook", None)
    log = read_folder(tmp_path).log
    assert [r.path for r in log.records] == ["x.png"] and log.invalid == []


def test_a_new_file_is_not_writable_by_group_or_others_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        with DecisionWriter(tmp_path) as w:
            w.append(new_decision("accepted", tmp_path, "y.png", 1, SHA, "accept"))
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / DECISIONS_NAME).stat().st_mode)
    assert mode & (stat.S_IWGRP | stat.S_IWOTH) == 0
    assert read_folder(tmp_path).problem is None


def _append_many(folder: str, tag: int, n: int) -> None:
    for i in range(n):
        with DecisionWriter(folder) as w:
            w.append(new_decision("accepted", folder, f"p{tag}/{i}.png", i, SHA, "accept"))


def test_concurrent_writers_lose_no_record_and_tear_no_line(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), tag, 15)) for tag in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    log = read_folder(tmp_path).log
    assert log.invalid == []
    assert sorted(r.path for r in log.records) == sorted(f"p{t}/{i}.png" for t in range(4) for i in range(15))


def test_a_writer_waits_for_the_files_lock_then_gives_up_with_one_line(tmp_path):
    import fcntl

    accept_file(tmp_path)
    fd = os.open(tmp_path / DECISIONS_NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(DecisionError, match="being written by another imgclean run"):
            DecisionWriter(tmp_path, wait_s=0.2).__enter__()
    finally:
        os.close(fd)
    with DecisionWriter(tmp_path, wait_s=0.2) as w:  # free again
        assert len(w.log.records) == 1


def test_an_invalid_record_is_never_written(tmp_path):
    bad = new_decision("accepted", tmp_path, "y.png", 1, SHA, "accept")
    bad = records.Decision(**{**bad.__dict__, "size": -5})
    with DecisionWriter(tmp_path) as w, pytest.raises(DecisionError, match="size is negative"):
        w.append(bad)
    assert (tmp_path / DECISIONS_NAME).read_bytes() == b""
    assert decisions.read_folder(tmp_path).log.records == []


def test_records_appended_after_a_torn_line_know_their_line_numbers(tmp_path):
    torn = (json.dumps(good()) + "\n").encode()[:-20]
    write_lines(tmp_path, good(), b"\n", torn)
    with DecisionWriter(tmp_path) as w:
        appended = w.append(new_decision("accepted", tmp_path, "y.png", 1, SHA, "accept"))
    log = read_folder(tmp_path).log
    assert appended.line == 4 and log.records[-1].line == 4 and log.records[-1] == appended
    assert [b.line for b in log.invalid] == [3]


def test_a_failed_write_leaves_the_writer_as_the_file_is(tmp_path, monkeypatch):
    from imgclean import fileops

    def full(step):
        raise OSError(28, "No space left on device")

    with DecisionWriter(tmp_path) as w:
        decision = new_decision("accepted", tmp_path, "y.png", 1, SHA, "accept")
        monkeypatch.setattr(fileops, "fault_hook", full)
        with pytest.raises(DecisionError, match="No space left"):
            w.append(decision)
        monkeypatch.setattr(fileops, "fault_hook", None)
        assert w.log.records == [] and w.log.current == {}  # nothing on disk, nothing believed
        assert w.append(decision) == decision  # a retry writes it
    assert read_folder(tmp_path).log.records == [decision]


def test_a_write_torn_by_a_full_disk_is_closed_by_the_retry(tmp_path, monkeypatch):
    real_write = os.write

    def half(fd, data):  # the first write stops halfway, then the disk is full
        monkeypatch.setattr(decisions, "write_all", records_write_all)
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    from imgclean.fileops import write_all as records_write_all

    with DecisionWriter(tmp_path) as w:
        w.append(new_decision("accepted", tmp_path, "x.png", 1, SHA, "accept"))
        monkeypatch.setattr(decisions, "write_all", half)
        second = new_decision("accepted", tmp_path, "y.png", 1, "b" * 64, "accept")
        with pytest.raises(DecisionError, match="No space left"):
            w.append(second)
        assert w.append(second).line == 3  # the torn half is line 2, closed first
    log = read_folder(tmp_path).log
    assert [r.path for r in log.records] == ["x.png", "y.png"] and [b.line for b in log.invalid] == [2]
    assert log.records[1].line == 3
