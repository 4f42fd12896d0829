"""listing() of one large folder, stat'ed in this process alone and split with a forked child
(imgclean/listing.py), wall-clock milliseconds, best of --repeats (the two alternate; a busy
machine makes the split gain less: its child needs a CPU of its own).

    python benchmarks/bench_listing.py [--folder FOLDER] [--files 60000] [--repeats 15]

Without --folder, a temp folder of --files empty files is generated (and removed after).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgclean import listing as L  # noqa: E402


def timed(folder: str, split: bool):
    os.environ["IMGCLEAN_SPLIT_STAT"] = "1" if split else "0"
    start = time.perf_counter()
    result = L.listing(folder)
    return time.perf_counter() - start, result


def fingerprint(listing: L.Listing) -> int:
    return hash(tuple(map(tuple, listing)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=None, help="[default: a generated temp folder]")
    ap.add_argument("--files", type=int, default=60000, help="files in the generated folder")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    work = None
    if args.folder is None:
        work = tempfile.mkdtemp(prefix="imgclean-listing-")
        for i in range(args.files):
            os.close(os.open(os.path.join(work, f"img_{i:06d}.png"), os.O_CREAT | os.O_WRONLY, 0o644))
    folder = os.fspath(args.folder or work)
    try:
        reference = timed(folder, False)[1]  # (and the caches warm)
        n = len(reference.names)
        reference = fingerprint(reference)  # not the listing itself: its lists would slow the gc
        os.environ.pop("IMGCLEAN_SPLIT_STAT")
        print(f"{folder}: {n} names, SPLIT_FROM {L.SPLIT_FROM}, CHILD_SHARE {L.CHILD_SHARE}, "
              f"split possible here: {L._may_split(n)}")
        times = {False: [], True: []}
        for _ in range(args.repeats):
            for split in (False, True):
                seconds, result = timed(folder, split)
                times[split].append(seconds * 1e3)
                assert fingerprint(result) == reference, "split and in-process listings differ"
                del result
        one, two = min(times[False]), min(times[True])
        print(f"in-process {one:.1f} ms, split {two:.1f} ms, ratio {one / two:.2f} (best of {args.repeats}; "
              f"medians {statistics.median(times[False]):.1f} and {statistics.median(times[True]):.1f} ms)")
    finally:
        os.environ.pop("IMGCLEAN_SPLIT_STAT", None)
        if work:
            shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
