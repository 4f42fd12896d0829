"""Small plain PNGs skip Image.open (pipeline/decode.py's _simple_png): the same pixels, statuses
and messages as data.decode_image, for every kind of PNG and every kind of damage."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from imgclean import data
from imgclean.pipeline import decode
from imgclean.pipeline.decode import Decoded, DecodeSettings, decode_one
from imgclean.walk import walk_images


def reference(path, settings) -> Decoded:
    try:
        return Decoded(data.decode_image(path, settings.size, settings.channels, settings.interpolation, settings.crop_pct), data.OK)
    except data.DecodeError as exc:
        return Decoded(None, exc.status, str(exc))


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def make_files(root: Path) -> dict[str, bool]:
    """name -> whether the fast path should take it."""
    rng = np.random.default_rng(0)
    out = {}

    def save(name, img, fast, **kw):
        img.save(root / name, **kw)
        out[name] = fast

    g = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    c = rng.integers(0, 256, (20, 33, 3), dtype=np.uint8)
    save("grey.png", Image.fromarray(g), True)
    save("grey_opt.png", Image.fromarray(g), True, optimize=True)
    save("grey_odd.png", Image.fromarray(g[:17, :23]), True)
    save("rgb.png", Image.fromarray(c), True)
    save("flat.png", Image.new("L", (28, 28), 7), True)
    save("rgb_square.png", Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)), True)
    for name, colour, channels in (("filters.png", 0, 1), ("filters_rgb.png", 2, 3)):
        # every PNG row filter (none, sub, up, average, paeth) over random bytes, as other encoders write
        rows = [bytes([i % 5]) + rng.integers(0, 256, 28 * channels, dtype=np.uint8).tobytes() for i in range(28)]
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, colour, 0, 0, 0))
                                  + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
        out[name] = True
    save("big.png", Image.fromarray(np.zeros((300, 300), np.uint8)), False)  # over SIMPLE_PNG_PIXELS
    save("la.png", Image.fromarray(np.dstack([g, g])), False)
    save("rgba.png", Image.fromarray(np.dstack([c, c[:, :, :1]])), False)
    save("palette.png", Image.fromarray(c).convert("P"), False)
    save("bits1.png", Image.fromarray(g > 128), False)
    save("i16.png", Image.fromarray(g.astype(np.uint16) * 200), False)
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "hello")
    save("text.png", Image.fromarray(g), False, pnginfo=info)
    save("dpi.png", Image.fromarray(g), False, dpi=(72, 72))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the EXIF chunk sends it the Pillow way
    save("exif.png", Image.fromarray(c), False, exif=exif)
    good = (root / "grey.png").read_bytes()
    sig, ihdr_end = good[:8], 8 + 25
    idat_at = good.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", good[idat_at : idat_at + 4])
    idat = good[idat_at + 8 : idat_at + 8 + length]
    variants = {
        "truncated.png": good[: len(good) // 2],
        "no_iend.png": good[: -12],
        "bad_crc.png": good[: idat_at + 20] + bytes([good[idat_at + 20] ^ 1]) + good[idat_at + 21 :],
        "short_data.png": sig + good[8:ihdr_end] + chunk(b"IDAT", zlib.compress(zlib.decompress(idat)[:-40])) + chunk(b"IEND", b""),
        "garbage_data.png": sig + good[8:ihdr_end] + chunk(b"IDAT", b"not zlib at all") + chunk(b"IEND", b""),
        "bad_filter.png": sig + good[8:ihdr_end] + chunk(b"IDAT", zlib.compress(b"\x09" * (29 * 28))) + chunk(b"IEND", b""),
        "split_idat.png": sig + good[8:ihdr_end] + chunk(b"IDAT", idat[:10]) + chunk(b"IDAT", idat[10:]) + chunk(b"IEND", b""),
        "extra_after.png": sig + good[8:ihdr_end] + chunk(b"IDAT", idat + b"junk") + chunk(b"IEND", b""),
        "interlace_flag.png": sig + chunk(b"IHDR", good[16 : 16 + 12] + b"\x01") + chunk(b"IDAT", idat) + chunk(b"IEND", b""),
        "zero_size.png": sig + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 28, 8, 0, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b""),
        "not_png.png": b"hello, I am text",
        "empty.png": b"",
        "jpeg.png": b"",
    }
    for name, blob in variants.items():
        (root / name).write_bytes(blob)
        out[name] = name in ("split_idat.png", "extra_after.png")
    Image.fromarray(c).save(root / "jpeg.png", format="JPEG")  # a JPEG named .png
    return out


@pytest.mark.parametrize("settings", [DecodeSettings(28, 1), DecodeSettings(28, 3), DecodeSettings(16, 1, "bicubic", 0.875),
                                      DecodeSettings(40, 3, "lanczos")])
def test_same_as_decode_image(tmp_path, settings):
    expected_fast = make_files(tmp_path)
    entries = {os.path.basename(e.fspath): e for e in walk_images(tmp_path)}
    assert set(entries) == set(expected_fast)
    for name, entry in sorted(entries.items()):
        want = reference(entry.fspath, settings)
        assert (decode._simple_png(entry.fspath, settings) is not None) == expected_fast[name], name
        for item in (entry, entry.fspath, os.fsencode(entry.fspath)):  # a bare path is looked at the same way
            got = decode_one(item, settings)
            assert (got.status, got.message) == (want.status, want.message), name
            if want.ok:
                assert got.array.dtype == np.uint8 and np.array_equal(got.array, want.array), name


def test_a_replaced_decode_image_sees_every_file(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    (entry,) = walk_images(tmp_path)
    calls = []
    monkeypatch.setattr(data, "decode_image", lambda *a, **k: calls.append(a) or np.ones((28, 28, 1), np.uint8))
    assert decode_one(entry, DecodeSettings(28, 1)).array.max() == 1 and len(calls) == 1


def test_switched_off_every_file_goes_through_decode_image(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    (entry,) = walk_images(tmp_path)
    monkeypatch.setattr(decode, "SIMPLE_PNG", False)
    monkeypatch.setattr(decode, "_simple_png", lambda *a: pytest.fail("the simple path was taken"))
    assert decode_one(entry, DecodeSettings(28, 1)).ok


def test_a_file_larger_than_its_walk_said_goes_the_pillow_way(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    (entry,) = walk_images(tmp_path)
    monkeypatch.setattr(decode, "SIMPLE_PNG_BYTES", 20)
    assert decode._simple_png(entry.fspath, DecodeSettings(28, 1)) is None
