"""Where a warm rescan's time goes, in-process: the listing alone (scandir, sort, one fstatat a
name), the walk building every entry, the walk matching each run against its snapshot (what a
rescan does), the snapshot look-ups and comparison of the file-by-file walk's runs, and the
whole scan loop with a report (one part per --format: csv, jsonl, ... or none), in CPU
microseconds per file (best of --repeats).

    python benchmarks/bench_rescan_parts.py --folder FOLDER --model MODEL_DIR [--cache-dir DIR] [--format jsonl ...]

The folder is scanned once first (filling the cache: run snapshots and per-file rows), so every
repeat is a rescan of an unchanged folder. Prints one line per part.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgclean.cli.runs import Printer, feed  # noqa: E402
from imgclean.listing import listing  # noqa: E402
from imgclean.pipeline.scan.run_snapshots import SNAPSHOT_STATUSES  # noqa: E402
from imgclean.pipeline.scan.scanner import ScanOptions, fewer_collections, run_scan  # noqa: E402
from imgclean.reports.records import RecordWriter  # noqa: E402
from imgclean.store.artifact import load_model  # noqa: E402
from imgclean.store.cache import ScanCache, model_key  # noqa: E402
from imgclean.walk import walk_runs  # noqa: E402


def scan_once(root: Path, bundle, cache_dir: Path, report: Path | None):
    """One scan into `report` (a new file, removed after; None: no report)."""
    printer = Printer(dry_run=False, json_out=True, verbose=False, keep_unreadable=False)
    options = ScanOptions(use_cache=True, cache_dir=cache_dir)
    if report is None:
        return run_scan(root, bundle, options, on_record=feed([printer]))
    report.unlink(missing_ok=True)
    try:
        with RecordWriter(report, root) as writer:
            return run_scan(root, bundle, options, on_record=feed([writer, printer]))
    finally:
        report.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, default=None, help="[default: a temp dir]")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--format", action="append", dest="formats", help="the report's extension, or none; repeatable [csv]")
    args = ap.parse_args()
    formats = args.formats or ["csv"]
    root = Path(os.path.realpath(args.folder))
    bundle = load_model(args.model, lazy=True)
    work = Path(tempfile.mkdtemp(prefix="imgclean-rescan-"))
    cache_dir = args.cache_dir or work / "cache"
    first = scan_once(root, bundle, cache_dir, work / "r.csv")
    n = first.scanned
    loops = {fmt: f"whole scan loop, {fmt} report" if fmt != "none" else "whole scan loop, no report" for fmt in formats}
    parts = ("listing of the scanned folder alone", "walk, every entry built", "walk matching the runs' snapshots (a rescan)",
             "snapshot look-ups, entries compared", *loops.values())
    best: dict[str, list[float]] = {part: [] for part in parts}
    for _ in range(args.repeats):
        with fewer_collections():
            c = time.process_time()
            listing(os.fspath(root))
            best[parts[0]].append(time.process_time() - c)
            c = time.process_time()
            runs = [(r.folder, r.ordinal, r.entries) for r in walk_runs(os.fspath(root))]
            best[parts[1]].append(time.process_time() - c)
            with ScanCache(cache_dir, model_key(bundle.config, extra="mahalanobis")) as cache:
                c = time.process_time()
                matched = sum(r.matched for r in walk_runs(os.fspath(root), known=cache.snapshot))
                best[parts[2]].append(time.process_time() - c)
                c = time.process_time()
                answered = sum(cache.get_run(f, o, run, SNAPSHOT_STATUSES) is not None for f, o, run in runs)
                best[parts[3]].append(time.process_time() - c)
        for fmt, part in loops.items():  # interleaved
            c = time.process_time()
            summary = scan_once(root, bundle, cache_dir, None if fmt == "none" else work / f"r.{fmt}")
            best[part].append(time.process_time() - c)
    print(f"{n:,} files, {len(runs)} runs, {matched} matched from the listing, {answered} answered by their snapshot; "
          f"cached {summary.cached:,}, decoded {summary.decoded}")
    for part, seconds in best.items():
        print(f"{part}: {min(seconds) / n * 1e6:.2f} us/file (CPU, best of {args.repeats})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
