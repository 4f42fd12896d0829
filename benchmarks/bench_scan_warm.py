"""Cold scan against warm (cached) rescan, whole process, for one or more checkouts in one run.

    python benchmarks/bench_scan_warm.py                                 # this checkout, 60,000 PNGs
    python benchmarks/bench_scan_warm.py --code /work/main --code .     # before and after, interleaved
    python benchmarks/bench_scan_warm.py --files 10000 --repeats 1      # quicker
    python benchmarks/bench_scan_warm.py --format csv --format jsonl    # report formats, interleaved

The (b) cold / warm part of benchmarks/bench_scan.py alone, so a change to the scan cache (its
identity check, say) can be weighed against the code before it on the same files, back to back:
the first Fashion-MNIST training images as flat 28x28 PNGs with old mtimes, a lenet fitted on
the Fashion-MNIST test images with the first checkout's CLI, then per repeat and per checkout:
a cold `imgclean scan FOLDER --report r.csv --json --quiet --cache-dir C` into an empty cache
(best of 2) and three warm rescans into the best cold scan's cache (best of 3; each must answer
every file from the cache). With several `--format`s (a report extension, or `none`: no
report) the cold scans write the first, and the warm rescans of each try go through the
formats in turn, each to a new report file (removed after). The files' ctimes are waited past
the cache's racy window (2 s) before the cold scans. Prints a Markdown table: wall and CPU
seconds (the process and its children), cold / warm, and each format's warm rescan against the
first format's (wall, CPU). Needs Fashion-MNIST (benchmarks/datasets.py), nothing downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from datasets import load_fashion_mnist  # noqa: E402

OLD_NS = 1_600_000_000 * 10**9
COLD_TRIES, WARM_TRIES = 2, 3


def write_pngs(folder: Path, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def save(i: int) -> None:
        path = folder / f"{i:06d}.png"
        Image.fromarray(images[i]).save(path, optimize=False)
        os.utime(path, ns=(OLD_NS, OLD_NS))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(save, range(len(images))))


def timed(cmd: list[str], code: Path) -> tuple[float, float, dict]:
    """(wall s, CPU s of the command, its --json summary)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=code,
                          env={**os.environ, "PYTHONPATH": os.fspath(code)})  # cwd: `python -m` looks there first
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stderr[-1500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(proc.stdout) if proc.stdout.strip() else {}


def scan_cmd(folder: Path, model: Path, report: Path | None, cache: Path) -> list[str]:
    out = [] if report is None else ["--report", os.fspath(report)]
    return [sys.executable, "-m", "imgclean", "scan", os.fspath(folder), "-m", os.fspath(model), *out,
            "--json", "--quiet", "--cache-dir", os.fspath(cache)]


def report_path(work: Path, name: str, fmt: str) -> Path | None:
    """A report file that does not exist yet (reports are never overwritten), or None: no report."""
    if fmt == "none":
        return None
    path = work / f"{name}.{fmt}"
    path.unlink(missing_ok=True)
    return path


def timed_scan(folder: Path, model: Path, work: Path, name: str, fmt: str, cache: Path, code: Path):
    report = report_path(work, name, fmt)
    try:
        return timed(scan_cmd(folder, model, report, cache), code)
    finally:
        if report is not None:
            report.unlink(missing_ok=True)


def fit(work: Path, code: Path) -> Path:
    x, y = load_fashion_mnist("test")
    train = work / "train"
    for c in range(10):
        write_pngs(train / str(c), x[y == c][:300])
    model = work / "lenet"
    proc = subprocess.run([sys.executable, "-m", "imgclean", "fit", os.fspath(train), "-o", os.fspath(model),
                           "--epochs", "2", "--json", "-q"], capture_output=True, text=True, cwd=code,
                          env={**os.environ, "PYTHONPATH": os.fspath(code)})
    if proc.returncode:
        raise RuntimeError(f"fit failed: {proc.stderr[-1500:]}")
    return model


def measure(folder: Path, model: Path, work: Path, code: Path, tag: str, formats: list[str]) -> dict:
    colds = []
    for k in range(COLD_TRIES):
        cache = work / f"cache-{tag}-{k}"
        shutil.rmtree(cache, ignore_errors=True)
        colds.append((*timed_scan(folder, model, work, "cold", formats[0], cache, code), cache))
    cold, cold_cpu, _, cache = min(colds, key=lambda c: c[0])
    warms: dict[str, list] = {fmt: [] for fmt in formats}
    for _ in range(WARM_TRIES):
        for fmt in formats:  # interleaved: a moment of load falls on every format alike
            warms[fmt].append(timed_scan(folder, model, work, "warm", fmt, cache, code))
    rows = {}
    for fmt, runs in warms.items():
        warm, warm_cpu, summary = min(runs, key=lambda w: w[0])
        if summary.get("decoded") != 0:
            raise RuntimeError(f"the warm rescan decoded files: {summary}")
        rows[fmt] = dict(cold=cold, cold_cpu=cold_cpu, warm=warm, warm_cpu=warm_cpu,
                         least_cpu=min(w[1] for w in runs), cached=summary.get("cached"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, action="append", help="a checkout to run (PYTHONPATH); repeatable [default: this one]")
    ap.add_argument("--files", type=int, default=60000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--format", action="append", dest="formats",
                    help="the --report extension of the scans (csv, jsonl, tsv...), or none; repeatable [default: csv]")
    ap.add_argument("--warm-tries", type=int, default=WARM_TRIES, help=f"warm rescans per format and repeat [{WARM_TRIES}]")
    args = ap.parse_args()
    formats = args.formats or ["csv"]
    globals()["WARM_TRIES"] = args.warm_tries
    codes = [Path(os.path.realpath(c)) for c in (args.code or [HERE.parent])]
    work = Path(tempfile.mkdtemp(prefix="imgclean-bench-warm-"))
    try:
        x, _ = load_fashion_mnist("train")
        folder = work / "fashion"
        write_pngs(folder, x[: args.files])
        model = fit(work, codes[0])
        time.sleep(2.5)  # every file's ctime out of the cache's racy window
        lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPUs, "
                 f"{args.files:,} Fashion-MNIST PNGs, lenet; load at start {os.getloadavg()[0]:.1f}.",
                 f"Warm: best of {WARM_TRIES} by wall (its CPU), and the least CPU of the {WARM_TRIES}; "
                 f"/ {formats[0]}: the warm rescan against the one writing {formats[0]}, wall and least CPU.",
                 "", "| repeat | code | report | cold s (CPU s) | warm s (CPU s) | warm least CPU s | cold / warm | "
                 f"cold / warm, CPU | warm / {formats[0]} | warm CPU / {formats[0]} |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in range(args.repeats):
            for i, code in enumerate(codes):
                rows = measure(folder, model, work, code, f"{r}-{i}", formats)
                first = rows[formats[0]]
                for fmt, row in rows.items():
                    lines.append(f"| {r + 1} | {code} | {fmt} | {row['cold']:.2f} ({row['cold_cpu']:.2f}) | {row['warm']:.3f} "
                                 f"({row['warm_cpu']:.3f}) | {row['least_cpu']:.3f} | {row['cold'] / row['warm']:.1f} | "
                                 f"{row['cold_cpu'] / row['warm_cpu']:.1f} | {row['warm'] / first['warm']:.2f} | "
                                 f"{row['least_cpu'] / first['least_cpu']:.2f} |")
                    print(lines[-1], file=sys.stderr, flush=True)
        lines.append(f"\nLoad at end {os.getloadavg()[0]:.1f}.")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
