"""Every Decoding case of RELIABILITY.md: data.decode_image, and `imgclean scan` where it matters.

Each bad file must end in a status (unreadable / too_large / unsupported), never a traceback;
odd but legitimate images must be converted and get a finite score.
"""
from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image, ImageFile, features
from typer.testing import CliRunner

from conftest import class_image, ood_image, tree_snapshot
from imgclean import data
from imgclean.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


# ----------------------------------------------------------------------------- helpers
def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth colour image with some detail (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) % 256)], -1)
    arr = np.clip(arr + rng.normal(0, 8, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, with a few bytes of pixel data (no allocation)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_with_header(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 frame header patched to declare width x height."""
    raw = bytearray(encode(photo(16, 16), "JPEG"))
    sof = raw.index(b"\xff\xc0")
    # FFC0, length(2), precision(1), height(2), width(2)
    raw[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


def decode(path: Path, size: int = 16, channels: int = 1):
    """(status, array or None) from decode_image, for compact assertions."""
    try:
        return data.OK, data.decode_image(path, size, channels)
    except data.DecodeError as exc:
        return exc.status, None


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def scan_report(folder: Path, model_dir: Path, tmp_path: Path, *extra) -> tuple[dict, dict[str, dict]]:
    report = tmp_path / "report.jsonl"
    result = runner.invoke(app, ["scan", str(folder), "-m", str(model_dir), "--json", "--report", str(report), *map(str, extra)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    rows = {r["path"]: r for r in map(json.loads, report.read_text().splitlines())}
    return json.loads(result.stdout), rows


def assert_scored(row: dict) -> None:
    assert row["status"] in ("ok", "ood"), row
    assert row["score"] is not None and math.isfinite(row["score"]), row


# ----------------------------------------------------------------------------- broken files
def test_truncated_images_are_not_padded():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_zero_byte_file_is_unreadable(tmp_path):
    assert decode(write(tmp_path / "empty.jpg", b""))[0] == data.UNREADABLE


@pytest.mark.parametrize("content", [
    b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
    b"just some text that someone saved as a picture\n" * 20,
    b"\xff\xd8",  # a JPEG marker and nothing else
])
def test_text_and_html_named_jpg_are_unreadable(tmp_path, content):
    assert decode(write(tmp_path / "page.jpg", content))[0] == data.UNREADABLE


def test_truncated_jpeg_opens_but_fails_at_load(tmp_path):
    full = encode(photo(64, 48), "JPEG", quality=90)
    path = write(tmp_path / "cut.jpg", full[: len(full) // 2])
    with Image.open(path) as img:  # the header is intact: open alone would accept it
        assert img.size == (64, 48)
    assert decode(path)[0] == data.UNREADABLE
    assert decode(path, 16, 3)[0] == data.UNREADABLE


def test_truncated_png_is_unreadable(tmp_path):
    full = encode(photo(64, 48), "PNG")
    path = write(tmp_path / "cut.png", full[: len(full) * 2 // 3])
    assert decode(path)[0] == data.UNREADABLE


@pytest.mark.parametrize("keep", [True, False])
def test_truncated_png_through_scan_kept_or_quarantined_and_reported(model_dir, tmp_path, keep):
    folder = tmp_path / "in"
    full = encode(Image.fromarray(class_image("checker", np.random.default_rng(0)), "L"), "PNG")
    cut = full[: len(full) // 2]  # cut inside the pixel data
    write(folder / "cut.png", cut)
    write(folder / "good.png", full)
    quarantine = tmp_path / "q"
    summary, rows = scan_report(folder, model_dir, tmp_path, "--move-to", quarantine, *(["--keep-unreadable"] if keep else []))
    assert rows["cut.png"]["status"] == "unreadable" and summary["unreadable"] == 1
    assert rows["cut.png"]["message"]
    if keep:
        assert (folder / "cut.png").exists() and not (quarantine / "cut.png").exists()
        assert rows["cut.png"]["action"] == "" and summary["moved"] == (rows["good.png"]["status"] == "ood")
    else:
        assert not (folder / "cut.png").exists()
        assert (quarantine / "cut.png").read_bytes() == cut
        assert rows["cut.png"]["action"] == "moved"
    assert_scored(rows["good.png"])


# ----------------------------------------------------------------------------- huge headers
BOMB_SCRIPT = r"""
import json, sys, time
from pathlib import Path
from imgclean import data
out = {}
for p in sys.argv[1:]:
    t = time.perf_counter()
    try:
        data.decode_image(Path(p), 16, 3)
        status = "ok"
    except data.DecodeError as e:
        status = e.status
    out[Path(p).name] = [status, time.perf_counter() - t]
# VmHWM: peak RSS of this process image (ru_maxrss would include the forking parent's)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
out["maxrss_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


def test_declared_huge_images_are_too_large_fast_and_in_bounded_memory(tmp_path, monkeypatch):
    files = []
    for side in (20000, 60000):
        files.append(write(tmp_path / f"png_{side}.png", png_with_header(side, side)))
        files.append(write(tmp_path / f"jpg_{side}.jpg", jpeg_with_header(side, side)))
        files.append(write(tmp_path / f"png_as_jpg_{side}.jpg", png_with_header(side, side)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # only to read the headers back here
    for f in files:  # headers really declare the size
        with Image.open(f) as img:
            assert img.size[0] in (20000, 60000)
    # A child process, so its peak memory is its own (a 20000x20000 RGB image is 1.2 GB).
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, *map(str, files)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for f in files:
        status, seconds = out[f.name]
        assert status == data.TOO_LARGE, (f.name, status)
        assert seconds < 1.0, (f.name, seconds)
    assert out["maxrss_mb"] < 300, out["maxrss_mb"]


def test_pillow_decompression_bomb_is_too_large(tmp_path, monkeypatch):
    # Above Pillow's own limit (but under ours) its warning must count as too_large, not pass.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = write(tmp_path / "a.png", encode(photo(12, 12), "PNG"))  # 144 px: a warning, not an error
    assert decode(path)[0] == data.TOO_LARGE


def test_extreme_aspect_ratio_decodes_in_bounded_memory(tmp_path):
    # 1 x 3,000,000 is under the pixel limit; resizing the whole strip to 16 px wide first
    # would allocate 48M x 16 pixels.
    img = Image.new("L", (1, 3_000_000), 128)
    path = write(tmp_path / "strip.png", encode(img, "PNG"))
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, str(path)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["strip.png"][0] == data.OK
    assert out["maxrss_mb"] < 300, out["maxrss_mb"]


def test_legitimate_large_photo_is_scored(model_dir, tmp_path):
    folder = tmp_path / "in"
    write(folder / "big.jpg", encode(photo(3000, 2000), "JPEG", quality=85))
    status, arr = decode(folder / "big.jpg", 224, 3)
    assert status == data.OK and arr.shape == (224, 224, 3) and arr.dtype == np.uint8
    _, rows = scan_report(folder, model_dir, tmp_path)
    assert_scored(rows["big.jpg"])


# ----------------------------------------------------------------------------- format vs name
def test_png_bytes_named_jpg_are_scored(model_dir, tmp_path):
    folder = tmp_path / "in"
    img = Image.fromarray(class_image("stripes_h", np.random.default_rng(3)), "L")
    write(folder / "really_png.jpg", encode(img, "PNG"))
    write(folder / "really_png.png", encode(img, "PNG"))
    a, b = decode(folder / "really_png.jpg")[1], decode(folder / "really_png.png")[1]
    assert a is not None and np.array_equal(a, b)
    _, rows = scan_report(folder, model_dir, tmp_path)
    assert_scored(rows["really_png.jpg"])
    assert rows["really_png.jpg"]["score"] == rows["really_png.png"]["score"]


def hostile_postscript(marker: Path) -> bytes:
    # If Ghostscript ever ran this, it would create `marker`.
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
        + f"({marker}) (w) file dup (pwned) writestring closefile\n".encode()
        + b"showpage\n%%EOF\n"
    )


@pytest.mark.parametrize("kind", ["eps", "eps_binary", "pdf"])
def test_eps_and_pdf_named_jpg_are_unsupported(tmp_path, kind):
    marker = tmp_path / "marker"
    ps = hostile_postscript(marker)
    content = {
        "eps": ps,
        # DOS EPS binary header: magic, offset and length of the PostScript section.
        "eps_binary": b"\xc5\xd0\xd3\xc6" + struct.pack("<II", 30, len(ps)) + b"\x00" * 18 + ps,
        "pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    }[kind]
    path = write(tmp_path / "doc.jpg", content)
    assert decode(path)[0] == data.UNSUPPORTED
    assert decode(path, 16, 3)[0] == data.UNSUPPORTED
    assert not marker.exists()


def test_unsupported_through_scan_is_reported_and_quarantined(model_dir, tmp_path):
    folder = tmp_path / "in"
    write(folder / "doc.jpg", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    summary, rows = scan_report(folder, model_dir, tmp_path, "--move-to", tmp_path / "q")
    assert rows["doc.jpg"]["status"] == "unsupported" and summary["unsupported"] == 1
    assert rows["doc.jpg"]["action"] == "moved" and (tmp_path / "q" / "doc.jpg").exists()


# ----------------------------------------------------------------------------- EXIF orientation
def asymmetric(w: int = 40, h: int = 24) -> Image.Image:
    """An image that looks different under every rotation and flip."""
    arr = np.zeros((h, w), np.uint8)
    arr[: h // 3, : w // 4] = 255  # bright block top-left
    arr[:, -3:] = 120  # grey band on the right
    arr[-2:, :] = 60  # dark line at the bottom
    return Image.fromarray(arr, "L")


# EXIF orientation -> how the stored pixels relate to the upright image
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def with_orientation(img: Image.Image, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img.transpose(STORED[orientation]), fmt, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = asymmetric()
    up = write(tmp_path / "upright.png", encode(upright, "PNG"))
    rotated = write(tmp_path / "rotated.png", with_orientation(upright, orientation, "PNG"))
    with Image.open(rotated) as raw:  # the stored pixels really differ
        assert np.asarray(raw).shape != np.asarray(upright).shape or not np.array_equal(np.asarray(raw), np.asarray(upright))
    for size, channels in ((16, 1), (32, 3)):
        a, b = decode(up, size, channels)[1], decode(rotated, size, channels)[1]
        assert a is not None and np.array_equal(a, b)


def test_exif_orientation_on_jpeg(tmp_path):
    upright = asymmetric(80, 48).convert("RGB")
    up = write(tmp_path / "upright.jpg", encode(upright, "JPEG", quality=95))
    rotated = write(tmp_path / "rotated.jpg", with_orientation(upright, 6, "JPEG"))
    a, b = decode(up, 24, 1)[1].astype(int), decode(rotated, 24, 1)[1].astype(int)
    assert np.abs(a - b).mean() < 6  # JPEG is lossy; a wrong rotation differs by far more
    wrong = np.rot90(a[:, :, 0])
    assert np.abs(wrong - b[:, :, 0]).mean() > 12


def test_fit_and_scan_decode_orientation_alike(tmp_path, model_dir):
    """fit's decoder and scan's decoder see the same upright pixels."""
    from imgclean.pipeline.fit.fit_model import decode_classes
    from imgclean.pipeline.decode import DecodeSettings, decode_one

    upright = asymmetric()
    up = write(tmp_path / "a" / "upright.png", encode(upright, "PNG"))
    rotated = write(tmp_path / "b" / "rotated.png", with_orientation(upright, 8, "PNG"))
    entries = [[data.FileEntry(up, 0, 0)], [data.FileEntry(rotated, 0, 0)]]
    images, labels, skipped = decode_classes(["a", "b"], entries, 16, 1)
    assert not skipped and np.array_equal(images[0], images[1])
    decoded = decode_one(rotated, DecodeSettings(16, 1))
    assert decoded.status == data.OK and np.array_equal(decoded.array, images[0])


# ----------------------------------------------------------------------------- pixel modes
def mode_images() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    base = class_image("checker", rng).astype(np.float64)
    rgb = Image.fromarray(np.stack([base] * 3, -1).astype(np.uint8), "RGB")
    p_trans = Image.fromarray(base.astype(np.uint8), "L").convert("P")
    p_trans.info["transparency"] = 0
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(base > 100, 255, 40).astype(np.uint8), "L"))
    la = Image.fromarray(base.astype(np.uint8), "L").convert("LA")
    f32 = base.astype(np.float32) / 255.0
    f32[0, 0] = np.nan  # a NaN pixel must not make the score NaN
    return {
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "cmyk.tif": encode(rgb.convert("CMYK"), "TIFF"),
        "i16.png": encode(Image.fromarray((base * 257).astype(np.uint16)), "PNG"),
        "i32.tif": encode(Image.fromarray((base * 1000 - 50000).astype(np.int32), "I"), "TIFF"),
        "float.tif": encode(Image.fromarray(f32, "F"), "TIFF"),
        "palette.png": encode(Image.fromarray(base.astype(np.uint8), "L").convert("P"), "PNG"),
        "palette_transparent.png": encode(p_trans, "PNG", transparency=0),
        "palette.gif": encode(rgb.convert("P"), "GIF"),
        "la.png": encode(la, "PNG"),
        "rgba.png": encode(rgba, "PNG"),
        "bilevel.png": encode(Image.fromarray(base > 100), "PNG"),
        "bilevel.tif": encode(Image.fromarray(base > 100).convert("1"), "TIFF"),
        "gray.pgm": encode(Image.fromarray(base.astype(np.uint8), "L"), "PPM"),
        "rgb.bmp": encode(rgb, "BMP"),
    }


EXPECTED_MODES = {
    "cmyk.jpg": "CMYK", "cmyk.tif": "CMYK", "i16.png": "I;16", "i32.tif": "I", "float.tif": "F",
    "palette.png": "P", "palette_transparent.png": "P", "palette.gif": "P", "la.png": "LA",
    "rgba.png": "RGBA", "bilevel.png": "1", "bilevel.tif": "1", "gray.pgm": "L", "rgb.bmp": "RGB",
}


def test_every_mode_is_converted(tmp_path):
    for name, content in mode_images().items():
        path = write(tmp_path / name, content)
        with Image.open(path) as img:
            assert img.mode == EXPECTED_MODES[name], (name, img.mode)
        for channels in (1, 3):
            status, arr = decode(path, 16, channels)
            assert status == data.OK, (name, status)
            assert arr.shape == (16, 16, channels) and arr.dtype == np.uint8
            assert arr.std() > 0, name  # the pattern survived conversion


def test_every_mode_gets_a_finite_score(model_dir, tmp_path):
    folder = tmp_path / "in"
    for name, content in mode_images().items():
        write(folder / name, content)
    summary, rows = scan_report(folder, model_dir, tmp_path)
    assert set(rows) == set(EXPECTED_MODES)
    for row in rows.values():
        assert_scored(row)


# ----------------------------------------------------------------------------- animations
def frames(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(9)
    return [Image.fromarray(np.stack([class_image(c, rng)] * 3, -1), "RGB") for c in ("stripes_h", "stripes_v", "checker")[:n]]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_uses_first_frame(tmp_path, fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    fr = frames()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    anim = write(tmp_path / f"anim.{fmt.lower()}", encode(fr[0], fmt, save_all=True, append_images=fr[1:], duration=100, loop=0, **kw))
    first = write(tmp_path / f"first.{fmt.lower()}", encode(fr[0], fmt, **kw))
    with Image.open(anim) as img:
        assert getattr(img, "n_frames", 1) == 3
    a, b = decode(anim, 16, 1)[1], decode(first, 16, 1)[1]
    assert a is not None and np.array_equal(a, b)
    other = decode(write(tmp_path / f"second.{fmt.lower()}", encode(fr[1], fmt, **kw)), 16, 1)[1]
    assert not np.array_equal(a, other)


# ----------------------------------------------------------------------------- degenerate sizes
def test_tiny_thin_and_flat_images_get_finite_scores(model_dir, tmp_path):
    folder = tmp_path / "in"
    cases = {
        "one_pixel.png": Image.new("L", (1, 1), 200),
        "one_pixel_rgb.jpg": Image.new("RGB", (1, 1), (10, 200, 30)),
        "tall.png": Image.fromarray((np.arange(10000) % 256).astype(np.uint8).reshape(10000, 1), "L"),
        "wide.png": Image.fromarray((np.arange(10000) % 256).astype(np.uint8).reshape(1, 10000), "L"),
        "black.png": Image.new("L", (16, 16), 0),
        "white.png": Image.new("L", (64, 64), 255),
        "uniform_rgb.png": Image.new("RGB", (30, 20), (120, 40, 200)),
    }
    for name, img in cases.items():
        write(folder / name, encode(img, "JPEG" if name.endswith(".jpg") else "PNG"))
        for channels in (1, 3):
            status, arr = decode(folder / name, 16, channels)
            assert status == data.OK and arr.shape == (16, 16, channels), name
    summary, rows = scan_report(folder, model_dir, tmp_path)
    assert set(rows) == set(cases)
    for row in rows.values():
        assert_scored(row)


# ----------------------------------------------------------------------------- fuzzing
def seed_files() -> list[bytes]:
    img = photo(12, 10, seed=1)
    out = [encode(img, f) for f in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "PPM")]
    if features.check("webp"):
        out.append(encode(img, "WEBP"))
    return out


SEEDS = seed_files()
HEADERS = [s[:16] for s in SEEDS] + [b"%PDF-", b"%!PS", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00", b"MM\x00*", b""]


def check_always_a_status(path: Path) -> None:
    for size, channels in ((16, 1), (16, 3)):
        try:
            arr = data.decode_image(path, size, channels)
        except data.DecodeError as exc:
            assert exc.status in (data.UNREADABLE, data.TOO_LARGE, data.UNSUPPORTED)
        else:
            assert arr.shape == (size, size, channels) and arr.dtype == np.uint8


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=400), ext=st.sampled_from([".jpg", ".png", ".gif", ".tif", ".webp", ".bmp"]))
def test_random_bytes_always_end_in_a_status(tmp_path, header, body, ext):
    path = tmp_path / f"fuzz{ext}"
    path.write_bytes(header + body)
    check_always_a_status(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, len(SEEDS) - 1), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_mutated_real_images_always_end_in_a_status(tmp_path, seed, flips, cut):
    raw = bytearray(SEEDS[seed])
    for pos, value in flips:
        raw[pos % len(raw)] = value
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    path = tmp_path / "mutant.img.png"
    path.write_bytes(bytes(raw))
    check_always_a_status(path)


def test_a_folder_of_garbage_scans_without_traceback(model_dir, tmp_path):
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i, header in enumerate(HEADERS):
        write(folder / f"g{i:02d}.jpg", header + rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    write(folder / "fine.png", encode(Image.fromarray(ood_image(rng), "L"), "PNG"))
    before = tree_snapshot(folder)
    summary, rows = scan_report(folder, model_dir, tmp_path)
    assert len(rows) == len(HEADERS) + 1
    assert all(r["status"] in ("ok", "ood", "unreadable", "too_large", "unsupported") for r in rows.values())
    assert tree_snapshot(folder) == before
