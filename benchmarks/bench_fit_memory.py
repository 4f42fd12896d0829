"""Peak memory of `fit` against the number of training images, and epoch time cached vs streamed.

Generates N 96-px RGB JPEGs in 10 class folders (once, into --work, reused), then runs

    imgclean fit DIR --arch lenet --input-size 96 --channels 3 --epochs 1 --min-steps 0

in a fresh child per measurement and reads the peak resident memory (ru_maxrss of the largest
process: the fit itself; DataLoader workers are separate, smaller processes). With --cache-memory 0
(always stream) and with the automatic budget. Then the epoch time with the decode-once cache vs
streaming on the smallest size: (time of 3 epochs - time of 1 epoch) / 2, for each.

    python benchmarks/bench_fit_memory.py --sizes 10000 40000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--arch", "lenet", "--input-size", "96", "--channels", "3", "--min-steps", "0", "--device", "cpu", "-q",
         "--force", "--val-fraction", "0.1"]

CHILD = """
import resource, subprocess, sys, time
t = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(code, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def make_folder(root: Path, n: int, size: int = 96, classes: int = 10) -> Path:
    from PIL import Image

    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(n)
    for i in range(n):
        c = i % classes
        folder = root / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros((size, size, 3), np.float32) + rng.random(3) * 80 + c * 15
        noise = rng.random((size // 8, size // 8, 3)) * 120
        img = np.clip(base + np.kron(noise, np.ones((8, 8, 1))), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:06d}.jpg", quality=85)
    done.touch()
    return root


def run_fit(folder: Path, out: Path, epochs: int, extra: list[str]) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "imgclean", "fit", str(folder), "-o", str(out), "--epochs", str(epochs), *FLAGS, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", CHILD, *cmd], env=env, capture_output=True, text=True, timeout=7200)
    code, seconds, maxrss_kb = res.stdout.split()
    if code != "0":
        raise SystemExit(f"fit failed ({code}): {res.stderr[-2000:]}")
    return float(seconds), int(maxrss_kb) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgclean-fitmem"))
    parser.add_argument("--no-epoch-times", action="store_true")
    args = parser.parse_args()
    results: dict = {"peak_mb": {}, "fit_seconds": {}}
    for n in args.sizes:
        t = time.perf_counter()
        folder = make_folder(args.work / f"n{n}", n)
        results.setdefault("generate_seconds", {})[n] = round(time.perf_counter() - t, 1)
        for mode, extra in (("stream", ["--cache-memory", "0"]), ("auto", [])):
            seconds, peak = run_fit(folder, args.work / "model", 1, extra)
            results["peak_mb"][f"{n} {mode}"] = round(peak)
            results["fit_seconds"][f"{n} {mode}"] = round(seconds, 1)
    small, large = min(args.sizes), max(args.sizes)
    for mode in ("stream", "auto"):
        results[f"peak_ratio_{mode}"] = round(results["peak_mb"][f"{large} {mode}"] / results["peak_mb"][f"{small} {mode}"], 3)
    if not args.no_epoch_times:
        folder = args.work / f"n{small}"
        for mode, extra in (("cached", ["--cache-memory", "8G"]), ("stream", ["--cache-memory", "0"])):
            t1, _ = run_fit(folder, args.work / "model", 1, extra)
            t3, _ = run_fit(folder, args.work / "model", 3, extra)
            results.setdefault("epoch_seconds", {})[f"{small} {mode}"] = round((t3 - t1) / 2, 2)
    results["cpus"] = len(os.sched_getaffinity(0))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
