"""Peak memory of decoding a folder of memory bombs under the pixel limit (issue 10 item 13).

Builds small files that declare about 64 megapixels (7999 x 7999, just under data.MAX_PIXELS):
a float32 TIFF, a 16-bit greyscale PNG, and an animated WebP of one tiny frame on a huge canvas.
Then a child process decodes them the way a scan does (pipeline.decode.Decoder, a pool of decode
threads) and prints each file's status and its peak RSS (VmHWM; ru_maxrss for the child).

    PYTHONPATH=. python benchmarks/bench_decode_memory.py --workers 6 --copies 2
    PYTHONPATH=/path/to/old/checkout python benchmarks/bench_decode_memory.py ...   # before

Nothing here is a test; tests/test_walk_memory.py checks one decode with generous bounds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDE = 7999


def float_tiff(path: Path, side: int = SIDE) -> Path:
    from PIL import Image

    img = Image.linear_gradient("L").resize((side, side)).convert("F")
    img.save(path, compression="tiff_adobe_deflate")
    return path


def png16(path: Path, side: int = SIDE) -> Path:
    from PIL import Image

    Image.new("I;16", (side, side), 1234).save(path, compress_level=9)
    return path


def webp_canvas(path: Path, side: int = SIDE) -> Path:
    """An animated WebP of two 16x16 frames whose VP8X header declares a side x side canvas."""
    import io

    from PIL import Image

    frames = [Image.new("RGBA", (16, 16), (i * 90, 20, 200, 255)) for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    raw = bytearray(buf.getvalue())
    at = raw.index(b"VP8X") + 8 + 4  # chunk header, then flags (1) + reserved (3)
    raw[at : at + 6] = struct.pack("<I", side - 1)[:3] + struct.pack("<I", side - 1)[:3]
    path.write_bytes(bytes(raw))
    return path


BUILDERS = {"float.tif": float_tiff, "deep.png": png16, "canvas.webp": webp_canvas}


def build(folder: Path, copies: int = 1, side: int = SIDE) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, make in BUILDERS.items():
        first = make(folder / f"0-{name}", side)
        out.append(first)
        for i in range(1, copies):
            dst = folder / f"{i}-{name}"
            dst.write_bytes(first.read_bytes())
            out.append(dst)
    return out


CHILD = r"""
import json, sys, time
from pathlib import Path
from imgclean import data
from imgclean.pipeline.decode import DecodeSettings, Decoder

workers, files = int(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
t = time.perf_counter()
with Decoder(DecodeSettings(32, 1), workers) as decoder:
    results = [r for _, batch in decoder.batches(files, 256) for r in batch]
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
import imgclean
print(json.dumps({
    "imgclean": imgclean.__file__,
    "seconds": round(time.perf_counter() - t, 2),
    "statuses": {f.name: [d.status, d.message[:120]] for f, d in zip(files, results, strict=True)},
    "peak_rss_mb": round(int(hwm.split()[1]) / 1024),
}))
"""


def measure(files: list[Path], workers: int) -> dict:
    # cwd: the folder of files, so `python -c` imports imgclean from PYTHONPATH, not from the cwd.
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(workers), *map(str, files)], capture_output=True, text=True, cwd=files[0].parent,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "returncode": proc.returncode}
    out = json.loads(proc.stdout)
    out["ru_maxrss_children_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--copies", type=int, default=2, help="copies of each kind of file")
    ap.add_argument("--side", type=int, default=SIDE)
    ap.add_argument("--folder", type=Path, default=None, help="build here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "bombs"
        t = time.perf_counter()
        files = build(folder, args.copies, args.side)
        size = sum(f.stat().st_size for f in files)
        result = measure(files, args.workers)
        import imgclean

        print(json.dumps({
            "imgclean": os.path.dirname(imgclean.__file__), "files": len(files), "bytes_on_disk": size,
            "child_imgclean": result.pop("imgclean", None), "side": args.side, "workers": args.workers, "build_seconds": round(time.perf_counter() - t - result.get("seconds", 0), 1),
            **result,
        }, indent=2))


if __name__ == "__main__":
    main()
