"""What a walk finds: image-like formats, quarantines, a root reached through `..`, deep trees.

Issue 9 items 5-6 and issue 10 items 4, 7 and 14: every image-like file ends in a status, a
quarantine is never scanned as data (found by its manifest, or an excluded folder by device and
inode), the root is resolved once, and depth or path length never drops a file silently.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import class_image, write_png
from imgclean import data
from imgclean.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("FORCE_COLOR", None)


def junk(path: Path, seed: int = 0) -> Path:
    """Unique undecodable bytes: always 'unreadable', so always rejected."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"NOTANIMAGE" + np.random.default_rng(seed).integers(0, 256, 64, dtype=np.uint8).tobytes())
    return path


def scan(folder, model_dir, tmp_path, *extra, code=0) -> tuple[dict, dict[str, dict]]:
    report = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.jsonl"
    result = runner.invoke(app, ["scan", os.fspath(folder), "-m", os.fspath(model_dir), "--json", "--report", os.fspath(report), *map(os.fspath, extra)])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    rows = {r["path"]: r for r in map(json.loads, report.read_text().splitlines())}
    return json.loads(result.stdout), rows


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# ----------------------------------------------------------------------------- issue 9 item 5
def test_every_image_like_file_is_accounted_for(model_dir, tmp_path):
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    digit = Image.fromarray(class_image("checker", rng), "L")
    write_png(folder / "one.png", class_image("checker", rng))
    (folder / "photo.jfif").write_bytes(encode(digit, "JPEG"))
    (folder / "photo2.jpe").write_bytes(encode(digit, "JPEG"))
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    (folder / "web.avif").write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64))
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>\n')
    (folder / "camera.nef").write_bytes(b"not a tiff at all" * 4)
    (folder / "next.jxl").write_bytes(b"\xff\x0a" + bytes(40))
    (folder / "notes.txt").write_text("not an image")  # not image-like: still ignored
    summary, rows = scan(folder, model_dir, tmp_path, "--keep-unreadable")
    assert summary["scanned"] == 8, summary
    assert summary["unsupported"] == 5, summary
    assert set(rows) == {"one.png", "photo.jfif", "photo2.jpe", "phone.heic", "web.avif", "logo.svg", "camera.nef", "next.jxl"}
    for name in ("one.png", "photo.jfif", "photo2.jpe"):
        assert rows[name]["status"] in ("ok", "ood") and rows[name]["score"] is not None, rows[name]
    expected = {"phone.heic": "HEIF", "web.avif": "AVIF", "logo.svg": "SVG", "camera.nef": "camera raw (NEF)", "next.jxl": "JPEG XL"}
    for name, kind in expected.items():
        assert rows[name]["status"] == "unsupported", rows[name]
        assert rows[name]["message"].startswith(kind), rows[name]


def test_eps_named_like_an_image_is_still_never_decoded(tmp_path):
    path = tmp_path / "a.tga"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(data.DecodeError) as exc:
        data.decode_image(path, 16, 1)
    assert exc.value.status == data.UNSUPPORTED and "EPS" in str(exc.value)
    assert "EPS" not in data.ALLOWED_FORMATS and "PDF" not in data.ALLOWED_FORMATS


# ----------------------------------------------------------------------------- quarantines
def test_a_quarantine_inside_the_folder_is_never_scanned(model_dir, tmp_path):
    folder = tmp_path / "demo"
    junk(folder / "a" / "bad.png", 1)
    write_png(folder / "good.png", class_image("checker", np.random.default_rng(1)))
    summary, _ = scan(folder, model_dir, tmp_path, "--move-to", folder / "rejected")
    assert summary["moved"] == 1, summary
    assert (folder / "rejected" / "a" / "bad.png").exists()
    # The next scan, without --move-to, must not count the quarantined file again.
    summary, rows = scan(folder, model_dir, tmp_path)
    assert summary["scanned"] == 1 and list(rows) == ["good.png"], (summary, rows)


def test_a_plain_folder_with_a_manifest_is_skipped_and_said_with_verbose(model_dir, tmp_path):
    folder = tmp_path / "in"
    write_png(folder / "good.png", class_image("checker", np.random.default_rng(2)))
    junk(folder / "old-rejects" / "x.png", 2)
    (folder / "old-rejects" / "imgclean-manifest.jsonl").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "imgclean", "scan", folder, "-m", model_dir, "--json", "-v"],
        env=ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["scanned"] == 1
    assert f"skipping quarantine folder {folder / 'old-rejects'}" in proc.stderr
    entries = list(data.walk_images(folder))
    assert [e.path.name for e in entries] == ["good.png"]


def test_a_folder_or_link_named_like_the_manifest_does_not_make_a_quarantine(tmp_path):
    # Only a regular manifest file makes a quarantine (as moves.is_quarantine says): a folder or
    # a symlink of that name is user data, and its neighbours are walked.
    folder = tmp_path / "in"
    junk(folder / "a" / "imgclean-manifest.jsonl" / "inside.png", 1)
    junk(folder / "a" / "x.png", 2)
    junk(folder / "b" / "y.png", 3)
    (folder / "b" / "imgclean-manifest.jsonl").symlink_to(tmp_path / "nowhere")
    names = sorted(e.path.name for e in data.walk_images(folder) if not e.skip_reason)
    assert names == ["inside.png", "x.png", "y.png"]


def test_scanning_a_quarantine_itself_is_refused(model_dir, tmp_path):
    q = tmp_path / "q"
    junk(q / "x.png", 3)
    (q / "imgclean-manifest.jsonl").write_text("")
    result = runner.invoke(app, ["scan", os.fspath(q), "-m", os.fspath(model_dir), "--json"])
    assert result.exit_code == 2, result.output  # a usage error, before the model is loaded
    assert "quarantine" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in q.iterdir()) == ["imgclean-manifest.jsonl", "x.png"]


def test_a_quarantine_is_never_a_training_class(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        write_png(tmp_path / "train" / name / "x.png", class_image("checker", rng))
    write_png(tmp_path / "train" / "rejected" / "y.png", class_image("checker", rng))
    (tmp_path / "train" / "rejected" / "imgclean-manifest.jsonl").write_text("")
    names, files = data.list_image_folder(tmp_path / "train")
    assert names == ["a", "b"] and all(len(f) == 1 for f in files)


def _bind(source: Path, target: Path) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("bind mounts need root and mount(8)")
    target.mkdir(parents=True)
    proc = subprocess.run(["mount", "--bind", os.fspath(source), os.fspath(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount --bind is not permitted here: {proc.stderr.strip()}")


@pytest.fixture
def bound(tmp_path):
    mounts: list[Path] = []

    def bind(source: Path, target: Path) -> None:
        _bind(source, target)
        mounts.append(target)

    yield bind
    for target in reversed(mounts):
        subprocess.run(["umount", os.fspath(target)], capture_output=True)


def test_an_excluded_folder_reached_through_a_bind_mount_is_skipped_by_identity(tmp_path, bound):
    """No manifest here: only device and inode say that root/mnt is the excluded folder."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_png(root / "good.png", class_image("checker", np.random.default_rng(4)))
    junk(outside / "x.png", 4)
    bound(outside, root / "mnt")
    assert [e.path.name for e in data.walk_images(root)] == ["good.png", "x.png"]  # the mount is walkable
    assert [e.path.name for e in data.walk_images(root, (outside,))] == ["good.png"]


def test_a_quarantine_bind_mounted_inside_the_folder_is_not_rescanned(model_dir, tmp_path, bound):
    root, q = tmp_path / "root", tmp_path / "q"
    junk(root / "bad.png", 5)
    write_png(root / "good.png", class_image("checker", np.random.default_rng(5)))
    q.mkdir()
    bound(q, root / "qview")
    summary, _ = scan(root, model_dir, tmp_path, "--move-to", q)
    assert summary["moved"] == 1 and summary["scanned"] == 2, summary
    before = digest(q / "bad.png")
    summary, rows = scan(root, model_dir, tmp_path, "--move-to", q)
    assert summary["scanned"] == 1 and summary["moved"] == 0 and list(rows) == ["good.png"], (summary, rows)
    assert digest(q / "bad.png") == before and not (q / "qview").exists()


# ----------------------------------------------------------------------------- issue 10 item 4
def test_dotdot_after_a_symlink_acts_on_the_resolved_folder_only(model_dir, tmp_path):
    real = tmp_path / "real"
    (real / "x").mkdir(parents=True)
    rejects = [junk(real / "data" / f"r{i}.png", 10 + i) for i in range(3)]
    (tmp_path / "sub").symlink_to(real / "x")
    # A backup at the lexical place of sub/../data: same names, bytes and times.
    decoy = tmp_path / "data"
    decoy.mkdir()
    for f in rejects:
        shutil.copy2(f, decoy / f.name)
    decoy_before = {f.name: digest(f) for f in decoy.iterdir()}
    folder = os.path.join(os.fspath(tmp_path), "sub", "..", "data")
    summary, rows = scan(folder, model_dir, tmp_path, "--move-to", tmp_path / "q")
    assert summary["moved"] == 3 and summary["changed"] == 0, summary
    assert {f.name: digest(f) for f in decoy.iterdir()} == decoy_before  # the backup is untouched
    assert not any(f.exists() for f in rejects)  # the real rejects moved
    assert sorted(p.name for p in (tmp_path / "q").glob("*.png")) == ["r0.png", "r1.png", "r2.png"]
    assert summary["root"] == os.fspath(real / "data")


def test_a_file_replaced_by_one_of_the_same_size_and_time_after_scoring_stays(model_dir, tmp_path, monkeypatch):
    # Another program swaps in a new file with the same size and mtime after the scan scored the
    # old one and before the move looks at it: only the inode tells them apart, so the walk's
    # inode must reach the move.
    from imgclean.quarantine import moves

    folder = tmp_path / "in"
    victim = junk(folder / "a.png", 1)
    st = victim.stat()
    new_bytes = b"NOTANIMAGE" + bytes(st.st_size - 10)  # same size, other content
    original_move = moves.Quarantine.move

    def swap_then_move(self, request):
        tmp = folder / ".swap"
        tmp.write_bytes(new_bytes)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, victim)
        return original_move(self, request)

    monkeypatch.setattr(moves.Quarantine, "move", swap_then_move)
    summary, rows = scan(folder, model_dir, tmp_path, "--move-to", tmp_path / "q", "--no-cache")
    assert summary["moved"] == 0 and rows["a.png"]["status"] == "changed", (summary, rows)
    assert victim.read_bytes() == new_bytes
    assert not list((tmp_path / "q").glob("*.png"))


# ----------------------------------------------------------------------------- issue 10 item 14
def remove_tree(top: Path) -> None:
    """rmtree without recursion: pytest's own clean-up (shutil.rmtree, recursive) would overflow."""
    stack = [os.fspath(top)]
    while stack:
        subs = []
        with os.scandir(stack[-1]) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    subs.append(e.path)
                else:
                    os.unlink(e.path)
        if subs:
            stack.extend(subs)
        else:
            os.rmdir(stack.pop())


@pytest.fixture
def deep_folder(tmp_path):
    folder = tmp_path / "deep"
    yield folder
    if folder.exists():
        remove_tree(folder)


def test_a_thousand_nested_folders_are_scanned(model_dir, tmp_path, deep_folder):
    folder = deep_folder
    deepest = os.fspath(folder)
    os.mkdir(deepest)
    for _ in range(1000):  # pathlib's and os.makedirs' parents=True recurse themselves
        deepest += "/d"
        os.mkdir(deepest)
    deepest = Path(deepest)
    write_png(deepest / "x.png", class_image("checker", np.random.default_rng(6)))
    write_png(folder / "top.png", class_image("checker", np.random.default_rng(7)))
    summary, rows = scan(folder, model_dir, tmp_path)
    assert summary["scanned"] == 2, summary
    assert rows["d/" * 1000 + "x.png"]["status"] in ("ok", "ood")
    # Same sorted depth-first order as before: the sub-folder 'd' sorts before 'top.png'.
    assert list(rows) == ["d/" * 1000 + "x.png", "top.png"]


def make_beyond_path_max(folder: Path) -> str:
    """A file whose absolute path exceeds PATH_MAX, built one directory descriptor at a time."""
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    parts = []
    try:
        while len(os.fsencode(os.fspath(folder))) + sum(len(p) + 1 for p in parts) < os.pathconf("/", "PC_PATH_MAX") + 100:
            name = f"{len(parts):03d}" + "n" * 200
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            parts.append(name)
        out = os.open("far.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
        os.close(out)
    finally:
        os.close(fd)
    return "/".join(parts + ["far.png"])


def test_a_file_beyond_path_max_is_skipped_with_the_reason(model_dir, tmp_path):
    folder = tmp_path / "long"
    rel = make_beyond_path_max(folder)
    junk(folder / "near.png", 8)
    summary, rows = scan(folder, model_dir, tmp_path, "--move-to", tmp_path / "q")
    assert summary["scanned"] == 2 and summary["skipped"] == 1, summary
    assert rows[rel]["status"] == "skipped" and "PATH_MAX" in rows[rel]["message"], rows[rel]
    assert summary["moved"] == 1  # near.png; the far file stays where it is
    with pytest.raises(OSError):
        os.stat(os.path.join(folder, rel))  # really beyond what a path can reach


# ----------------------------------------------------------------------------- contract 4
def test_scan_decodes_with_the_models_interpolation_and_crop(tmp_path, monkeypatch):
    from imgclean.pipeline.decode import DecodeSettings, decode_one

    calls = []
    monkeypatch.setattr(data, "decode_image", lambda *a, **k: calls.append((a, k)) or np.zeros((16, 16, 1), np.uint8))
    entry = data.FileEntry(tmp_path / "a.png", 0, 0)
    bundle = SimpleNamespace(input_size=16, channels=1, config={"interpolation": "bicubic", "crop_pct": 0.875})
    decode_one(entry.path, DecodeSettings.from_model(bundle))
    old = SimpleNamespace(input_size=16, channels=1, config={})  # a model from before the keys
    decode_one(entry.path, DecodeSettings.from_model(old))
    assert [a[1:] for a, _ in calls] == [(16, 1, "bicubic", 0.875), (16, 1, "bilinear", 1.0)]
