"""Fault campaign for the scan cache: files replaced or edited between scans with their size and
mtime kept, many rounds on a real folder with the real CLI; counts stale verdicts (target 0).

    python benchmarks/fault_cache.py              # 20 rounds, a few minutes
    python benchmarks/fault_cache.py --quick      # 4 rounds
    python benchmarks/fault_cache.py --code /path/to/another/checkout   # the same against other code

Each round, on one folder of fixed-size BMP images (in-distribution and out-of-distribution
pictures of the same dimensions, so one can stand in for the other byte for byte in length):

1. `imgclean scan FOLDER --cache-dir C --report R` (the cache learns the folder);
2. k files change their picture (an in-distribution one becomes out-of-distribution or back),
   keeping their size and mtime, half of them each way:
   - replaced: a new file under the name, as `rsync -t` or a restore from backup leave it (a
     temporary file given the old mtime, then renamed over the name: a new inode);
   - edited in place: the same inode rewritten and its mtime put back, as `cp
     --preserve=timestamps` onto an existing file (used when `cp` is there) or `exiftool -P` do;
3. the same scan again (cached), and `--no-cache`: every file whose cached verdict differs from
   the --no-cache one is a stale verdict.
Rounds vary how the cache would answer the changed files: from the runs' snapshots (nothing
else changed), from the folder's other snapshots (a file also added), or from the per-file rows
(a racy file, modified "now", keeps the runs from being snapshot). A file whose ctime is within
the cache's racy window is never stored, so each round first waits that window out: the changed
files of the last round are then cacheable again.

Prints one JSON object (figures); `campaign()` is what benchmarks/fault_campaign.py calls.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from synthetic import class_image, ood_image  # noqa: E402  (the test suite's own tiny images)

OLD_NS = 1_600_000_000 * 10**9
RACY_WAIT_S = 2.2  # the cache's RACY_SECONDS (2.0) and a margin
KINDS = ("stripes_h", "stripes_v", "checker")
WAYS = ("snapshots", "folder snapshots", "per-file rows")


def bmp_bytes(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray(array, "L").save(out, format="BMP")
    return out.getvalue()


def make_folder(root: Path, files: int, rng: np.random.Generator) -> dict[str, bytes]:
    """`files` BMPs in two folders (a third out-of-distribution) with old mtimes; returns, per
    file, the picture it would change to (the other kind, the same length)."""
    other: dict[str, bytes] = {}
    for i in range(files):
        rel = f"{'' if i % 2 else 'sub/'}f{i:04d}.bmp"
        normal = bmp_bytes(class_image(KINDS[i % 3], rng))
        odd = bmp_bytes(ood_image(rng))
        assert len(normal) == len(odd)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        mine, swap = (odd, normal) if i % 3 == 0 else (normal, odd)
        (root / rel).write_bytes(mine)
        os.utime(root / rel, ns=(OLD_NS + i, OLD_NS + i))
        other[rel] = swap
    return other


def replace_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """A new inode under the name, the old size and mtime (rsync -t, a restore from backup)."""
    st = path.stat()
    tmp = path.with_name(f".{path.name}.incoming")
    tmp.write_bytes(data)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)


def edit_in_place_keeping_mtime(path: Path, data: bytes, pool: Path) -> None:
    """The same inode rewritten, its mtime put back: `cp --preserve=timestamps` onto the file
    (the source given the target's times first) where cp exists, else the same by hand."""
    st = path.stat()
    if shutil.which("cp"):
        source = pool / path.name
        source.write_bytes(data)
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
        subprocess.run(["cp", "--preserve=timestamps", os.fspath(source), os.fspath(path)], check=True)
        source.unlink()
    else:
        with open(path, "r+b") as fh:
            fh.write(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def scan(code: Path, folder: Path, model: Path, cache: Path | None, report: Path) -> tuple[dict, dict, str]:
    """(summary, {path: status}, stderr) of one CLI scan."""
    args = [sys.executable, "-m", "imgclean", "scan", os.fspath(folder), "-m", os.fspath(model), "--json", "--quiet",
            "--report", os.fspath(report), *(["--cache-dir", os.fspath(cache)] if cache else ["--no-cache"])]
    env = {**os.environ, "PYTHONPATH": os.fspath(code)}
    # cwd: `python -m` puts the working folder first on sys.path, before PYTHONPATH
    proc = subprocess.run(args, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=1200, cwd=code)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"scan exited {proc.returncode}: {proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    return json.loads(proc.stdout), {r["path"]: r["status"] for r in rows}, proc.stderr


def campaign(model: Path, work: Path, rounds: int, files: int = 60, changes: int = 6, seed: int = 0,
             code: Path = REPO, log=print) -> dict:
    """The rounds described above; returns the figures."""
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    folder, cache, pool, reports = work / "folder", work / "cache", work / "pool", work / "reports"
    for p in (folder, cache, pool, reports):
        shutil.rmtree(p, ignore_errors=True)
    pool.mkdir(parents=True)
    reports.mkdir()
    other = make_folder(folder, files, rng)
    figures = {"rounds": 0, "files": files, "replaced": 0, "edited": 0, "verdicts_changed": 0, "stale_verdicts": 0,
               "cached_answers_in_rescans": 0, "rescans_answered_by": dict.fromkeys(WAYS, 0), "stale_examples": [],
               "tracebacks": 0}
    started = time.monotonic()
    for r in range(rounds):
        way = WAYS[r % len(WAYS)]
        racy = folder / "racy.bmp"
        if racy.exists():
            racy.unlink()
        time.sleep(RACY_WAIT_S)  # the last round's changes are now old enough to be cached
        if way == "per-file rows":  # a file modified "now" for the next ten minutes: no run snapshot
            racy.write_bytes(bmp_bytes(class_image(KINDS[0], rng)))
            soon = time.time_ns() + 600 * 10**9
            os.utime(racy, ns=(soon, soon))
        _, before, err1 = scan(code, folder, model, cache, reports / "before.jsonl")
        victims = pick.sample(sorted(other), changes)
        for j, rel in enumerate(victims):
            path = folder / rel
            old = path.read_bytes()
            if j % 2:
                edit_in_place_keeping_mtime(path, other[rel], pool)
                figures["edited"] += 1
            else:
                replace_keeping_size_and_mtime(path, other[rel])
                figures["replaced"] += 1
            other[rel] = old
        if way == "folder snapshots":
            added = folder / f"added-{r:03d}.bmp"
            added.write_bytes(bmp_bytes(ood_image(rng)))
            os.utime(added, ns=(OLD_NS, OLD_NS))
        summary, cached, err2 = scan(code, folder, model, cache, reports / "cached.jsonl")
        _, truth, err3 = scan(code, folder, model, None, reports / "truth.jsonl")
        figures["rounds"] += 1
        figures["cached_answers_in_rescans"] += summary.get("cached", 0)
        figures["rescans_answered_by"][way] += 1
        figures["tracebacks"] += sum("Traceback" in e for e in (err1, err2, err3))
        stale = sorted(p for p in truth if cached.get(p) != truth[p])
        figures["stale_verdicts"] += len(stale)
        figures["verdicts_changed"] += sum(before.get(v) != truth.get(v) for v in victims)
        for p in stale[: 5 - len(figures["stale_examples"])]:
            figures["stale_examples"].append({"round": r, "path": p, "cached": cached.get(p), "no_cache": truth[p]})
        log(f"round {r + 1}/{rounds} ({way}): {len(victims)} changed, {summary.get('cached', 0)} cached answers, "
            f"{len(stale)} stale")
    figures["seconds"] = round(time.monotonic() - started, 1)
    return figures


def fit_model(work: Path, code: Path) -> Path:
    """A tiny lenet (the test suite's classes), fitted with the real CLI."""
    train, model = work / "train", work / "model"
    rng = np.random.default_rng(0)
    for kind in KINDS:
        for i in range(16):
            (train / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(class_image(kind, rng), "L").save(train / kind / f"{i:03d}.png")
    proc = subprocess.run([sys.executable, "-m", "imgclean", "fit", os.fspath(train), "-o", os.fspath(model), "--epochs", "1",
                           "--json", "-q"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.fspath(code)},
                          cwd=code)
    if proc.returncode != 0:
        raise RuntimeError(f"fit failed: {proc.stderr[-2000:]}")
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="rounds")
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--changes", type=int, default=6, help="files changed a round")
    ap.add_argument("--quick", action="store_true", help="4 rounds")
    ap.add_argument("--model", type=Path, help="a model directory (default: fit a tiny one)")
    ap.add_argument("--code", type=Path, default=REPO, help="the imgclean checkout to run (PYTHONPATH)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.code = Path(os.path.realpath(args.code))
    rounds = min(args.runs, 4) if args.quick else args.runs
    work = Path(os.path.realpath(tempfile.mkdtemp(prefix="imgclean-fault-cache-")))
    try:
        model = args.model or fit_model(work, args.code)
        figures = campaign(model, work, rounds, args.files, args.changes, args.seed, args.code,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    return 0 if figures["stale_verdicts"] == 0 and figures["tracebacks"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
