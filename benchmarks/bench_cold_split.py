"""Where a cold scan's CPU goes: the scanning process (and within it the network and detector)
against the decode workers, in-process, per image.

    python benchmarks/bench_cold_split.py --folder FOLDER --model MODEL_DIR [--cache-dir DIR]

Runs one cold scan (no cache, or an empty --cache-dir) with a CSV report, as the CLI does, and
prints its wall time, the CPU time of this process (the walk, records, report, cache and the
model, plus one-time imports such as torch) with the model's own thread time, and the CPU time
of the decode worker processes.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgclean.cli.runs import Printer, feed  # noqa: E402
from imgclean.pipeline.scan import scanner as scan_module  # noqa: E402
from imgclean.pipeline.scan.scanner import ScanOptions, run_scan  # noqa: E402
from imgclean.reports.records import RecordWriter  # noqa: E402
from imgclean.store.artifact import load_model  # noqa: E402


def cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, default=None, help="an empty folder: a cold scan that fills the cache [default: no cache]")
    args = ap.parse_args()
    bundle = load_model(args.model, lazy=True)
    model_seconds = [0.0]
    score_arrays = scan_module.Scorer.score_arrays

    def timed(self, images):
        t = time.thread_time()
        try:
            return score_arrays(self, images)
        finally:
            model_seconds[0] += time.thread_time() - t

    scan_module.Scorer.score_arrays = timed
    printer = Printer(dry_run=False, json_out=True, verbose=False, keep_unreadable=False)
    options = ScanOptions(use_cache=args.cache_dir is not None, cache_dir=args.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        own, workers, t, main = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter(), time.thread_time()
        with RecordWriter(Path(tmp) / "r.csv", args.folder) as writer:
            summary = run_scan(args.folder, bundle, options, on_record=feed([writer, printer]))
        wall, main = time.perf_counter() - t, time.thread_time() - main
        own, workers = cpu(resource.RUSAGE_SELF) - own, cpu(resource.RUSAGE_CHILDREN) - workers
    n = max(summary.scanned, 1)
    print(f"{summary.scanned:,} files, {summary.decoded:,} decoded, wall {wall:.2f} s", flush=True)
    print(f"this process: {own:.2f} s CPU, {own / n * 1e6:.1f} us/img (one-time imports and model load included)")
    print(f"  of which the network + detector (thread time): {model_seconds[0]:.2f} s, {model_seconds[0] / n * 1e6:.1f} us/img")
    print(f"  of which the scanning thread (walk, records, report, cache; the network's share when it scores inline): {main:.2f} s, {main / n * 1e6:.1f} us/img")
    print(f"decode workers: {workers:.2f} s CPU, {workers / n * 1e6:.1f} us/img")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
