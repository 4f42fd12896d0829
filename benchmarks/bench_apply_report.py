"""The cost of reading a report: `imgclean apply --dry-run` of a 60,000-row report, and one pass of
reports.records.read_report over it, for two source trees in one run (e.g. before and after a
change to the reader), alternating, each run a fresh process.

    python benchmarks/bench_apply_report.py --before /tmp/base --after . [--rows 60000] [--repeat 3]

`--before`/`--after` are folders holding an `imgclean` package (a checkout, or `git archive` of a
commit). A folder of `--rows` empty image-named files is made (one in `--rejected-every` rows is
recorded as rejected, with the file's real identity, so the dry run plans its move), and a
report of it in each format. Prints JSON: seconds per tree, format and step (best and median of
`--repeat`), and the ratio after/before of the best times.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READ_ONE_PASS = """
import sys, time
from imgclean.reports.records import read_report
t = time.perf_counter()
n = sum(1 for row in read_report(sys.argv[1]) if row.record is not None)
print(n, time.perf_counter() - t)
"""


def make_folder(root: Path, rows: int, per_folder: int = 1000) -> None:
    for i in range(rows):
        folder = root / f"d{i // per_folder:03d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True)
        open(folder / f"img_{i:06d}.png", "wb").close()


def write_reports(root: Path, out: Path, rejected_every: int, after: Path) -> dict[str, Path]:
    """One report per format, written by the `after` tree's RecordWriter (what a scan writes)."""
    code = f"""
import os, sys
from pathlib import Path
from imgclean.reports.records import RecordWriter, ScanRecord
root = Path({os.fspath(root)!r})
names = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
for fmt in ("jsonl", "csv"):
    with RecordWriter(Path({os.fspath(out)!r}) / ("report." + fmt), root) as w:
        for i, rel in enumerate(names):
            st = os.lstat(root / rel)
            rejected = i % {rejected_every} == 0
            w.write(ScanRecord(path=rel, status="ood" if rejected else "ok", predicted="3", nearest="3",
                               score=1.7 if rejected else 0.4, size=st.st_size, mtime_ns=st.st_mtime_ns,
                               dev=st.st_dev, ino=st.st_ino))
"""
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.fspath(after)})
    return {fmt: out / f"report.{fmt}" for fmt in ("jsonl", "csv")}


def timed(tree: Path, args: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": os.fspath(tree), "COLUMNS": "120"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{tree}: {' '.join(args[:4])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--rejected-every", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    with tempfile.TemporaryDirectory(prefix="imgclean-bench-apply-") as tmp:
        work = Path(tmp)
        root = work / "folder"
        make_folder(root, args.rows)
        reports = write_reports(root, work, args.rejected_every, trees["after"])
        times: dict[str, dict[str, list[float]]] = {}
        for _ in range(args.repeat):
            for name, tree in trees.items():
                for fmt, report in reports.items():
                    apply_args = ["-m", "imgclean", "apply", os.fspath(report), "--move-to", os.fspath(work / "q"),
                                  "--dry-run", "--json", "-q"]
                    seconds, stdout = timed(tree, apply_args, work)
                    summary = json.loads(stdout)
                    assert summary["would_move"] == -(-args.rows // args.rejected_every), summary
                    times.setdefault(f"{name} {fmt} apply --dry-run", {}).setdefault("s", []).append(seconds)
                    _, stdout = timed(tree, ["-c", READ_ONE_PASS, os.fspath(report)], work)
                    rows, read_seconds = stdout.split()
                    assert int(rows) == args.rows
                    times.setdefault(f"{name} {fmt} read_report", {}).setdefault("s", []).append(float(read_seconds))
    figures = {key: {"best_s": round(min(v["s"]), 3), "median_s": round(statistics.median(v["s"]), 3)}
               for key, v in times.items()}
    ratios = {}
    for key in figures:
        if key.startswith("after "):
            step = key[len("after "):]
            ratios[step] = round(figures[key]["best_s"] / figures["before " + step]["best_s"], 3)
    print(json.dumps({"rows": args.rows, "rejected_every": args.rejected_every, "repeat": args.repeat,
                      "seconds": figures, "ratio_after_over_before": ratios}, indent=2))


if __name__ == "__main__":
    main()
