"""Memory bombs under the pixel limit (issue 10 item 13): bounded memory per decode and in total.

A float TIFF or 16-bit PNG under MAX_PIXELS used to go through several whole-image float64
arrays, and a tiny WebP declaring a huge canvas made libwebp allocate canvases worth 1 GB. Peak
memory is measured in a child process (VmHWM), with bounds far from both the old and new figures.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclean import data

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_decode_memory", ROOT / "benchmarks" / "bench_decode_memory.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

PEAK_SCRIPT = r"""
import json, sys
from pathlib import Path
from imgclean import data
out = {}
for p in sys.argv[1:]:
    try:
        arr = data.decode_image(Path(p), 32, 1)
        out[Path(p).name] = ["ok", "", float(arr.mean())]
    except data.DecodeError as e:
        out[Path(p).name] = [e.status, str(e), None]
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
out["peak_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


def peak(*files: Path) -> dict:
    """Decode files in a fresh process; its statuses and peak RSS (cwd elsewhere: PYTHONPATH decides)."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, *map(str, files)], capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(ROOT), **os.environ}, cwd=files[0].parent,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    return {name: make(folder / name) for name, make in bench.BUILDERS.items()}


def test_a_float_tiff_under_the_pixel_limit_decodes_in_bounded_memory(bombs):
    # 7999 x 7999 float32 is 256 MB decoded; the old float64 conversion peaked near 1.8 GB.
    out = peak(bombs["float.tif"])
    assert out["float.tif"][0] == data.OK, out
    assert out["peak_mb"] < 1000, out


def test_a_16_bit_png_under_the_pixel_limit_decodes_in_bounded_memory(bombs):
    out = peak(bombs["deep.png"])
    assert out["deep.png"][0] == data.OK, out
    assert abs(out["deep.png"][2] - 1234 / 65535 * 255) < 1.5, out  # scaled by the 16-bit range
    assert out["peak_mb"] < 800, out


def test_a_tiny_webp_declaring_a_huge_canvas_is_refused_before_decoding(bombs):
    assert bombs["canvas.webp"].stat().st_size < 4096
    out = peak(bombs["canvas.webp"])
    status, message, _ = out["canvas.webp"]
    assert status == data.TOO_LARGE and "MB" in message, out
    assert out["peak_mb"] < 500, out


def test_banded_conversion_equals_the_whole_image_conversion(monkeypatch):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(37, 53)).astype(np.float32)
    f[3, 4], f[5, 6] = np.nan, np.inf
    rgba = Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), "RGBA")
    images = [Image.fromarray(f), rgba, rgba.convert("P"), Image.fromarray(rng.integers(0, 65535, (37, 53), dtype=np.uint16))]
    assert [img.mode for img in images] == ["F", "RGBA", "P", "I;16"]
    whole = [np.asarray(data.to_mode(img, c)) for img in images for c in (1, 3)]
    monkeypatch.setattr(data, "_BAND_PIXELS", 53 * 4)  # 4 rows a band, the last one short
    banded = [np.asarray(data.to_mode(img, c)) for img in images for c in (1, 3)]
    for a, b in zip(whole, banded):
        assert np.array_equal(a, b)
    lo, hi = np.nanmin(f[np.isfinite(f)]), np.nanmax(f[np.isfinite(f)])
    expected = np.clip((np.nan_to_num(f.astype(np.float64), nan=0, posinf=0, neginf=0) - min(lo, 0)) / (hi - min(lo, 0)) * 255, 0, 255).astype(np.uint8)
    assert np.array_equal(whole[0], expected)


def test_the_estimate_refuses_what_the_mode_makes_too_big(tmp_path, monkeypatch):
    small = Image.new("F", (10, 10))
    small.format = "TIFF"
    assert data.decode_memory(small, 1) == 100 * 4 * 2 + 2 * 100  # float, libtiff strip, L result + a copy
    small.format = "WEBP"
    assert data.decode_memory(small, 3) == 100 * 4 * 4 + 2 * 100 * 4
    path = tmp_path / "f.tif"
    Image.new("F", (100, 100)).save(path, compression="tiff_adobe_deflate")
    assert data.decode_image(path, 16, 1).shape == (16, 16, 1)
    monkeypatch.setattr(data, "DECODE_MEMORY_LIMIT", 100 * 100 * 8)
    with pytest.raises(data.DecodeError) as exc:
        data.decode_image(path, 16, 1)
    assert exc.value.status == data.TOO_LARGE and "limit for one image" in str(exc.value)


def test_concurrent_decodes_share_one_budget():
    budget = data.DecodeBudget(100)
    holding, release, entered = threading.Event(), threading.Event(), threading.Event()

    def first():
        with budget.reserve(80):
            holding.set()
            release.wait(30)

    def second():
        with budget.reserve(50):
            entered.set()

    a = threading.Thread(target=first)
    a.start()
    assert holding.wait(30)
    b = threading.Thread(target=second)
    b.start()
    assert not entered.wait(0.3)  # 80 + 50 > 100: the second decode waits
    release.set()
    a.join(30)
    b.join(30)
    assert entered.is_set() and budget.used == 0 and budget.peak == 80
    with budget.reserve(10**9):  # larger than the whole budget: runs alone, never deadlocks
        assert budget.used == 100


def test_decode_threads_stay_within_the_budget(tmp_path, monkeypatch):
    from imgclean.pipeline.scan import scanner as scan

    budget = data.DecodeBudget(3 * 2**20)
    monkeypatch.setattr(data, "DECODE_BUDGET", budget)
    files = []
    for i in range(12):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGBA", (400, 400), (i, 2, 3, 128)).save(files[-1])  # about 1.9 MB each to decode
    from imgclean.pipeline.decode import DecodeSettings, Decoder

    with Decoder(DecodeSettings(16, 3), workers=6) as decoder:  # 6 chunks of one file each, in parallel
        results = decoder.decode([data.FileEntry(f, 0, 0) for f in files])
    assert all(d.status == data.OK for d in results)
    assert 0 < budget.peak <= budget.total and budget.used == 0
