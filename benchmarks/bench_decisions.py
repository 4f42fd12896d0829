"""What a person's decisions cost a scan: AcceptedFiles (imgclean/quarantine/decision_check.py).

A folder of N small files in 100 subfolders, every one of them asked about as a rejected record
would be (the worst case: a night where everything is rejected), in four settings:

- none: no decisions file anywhere (the common case: must cost next to nothing, no hashing);
- other sizes: a decisions file of D acceptances, none about a picture of any scanned file's size;
- same size: D acceptances with the scanned files' sizes but other contents (every file hashed);
- accepted: every scanned file accepted (every file hashed and answered yes).

Also the time to load (read, validate, fold) a decisions file of D records, and of one at the
64 MiB bound. Prints one table; figures are per run on this machine, ratios within one run.

    nice -n 10 python benchmarks/bench_decisions.py [--files 20000] [--decisions 20000]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imgclean.quarantine.decision_check import AcceptedFiles  # noqa: E402
from imgclean.quarantine.decision_records import MAX_FILE_BYTES  # noqa: E402
from imgclean.quarantine.decisions import DECISIONS_NAME, new_decision, read_folder  # noqa: E402


def make_folder(root: Path, n: int) -> list[tuple[str, os.stat_result]]:
    """n files of 2,000-2,999 bytes (so sizes repeat), as a scan's records would name them."""
    out = []
    for i in range(n):
        rel = f"d{i % 100:02d}/f{i:06d}.png"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(4, "big") * (500 + i % 250))
        out.append((rel, path.stat()))
    return out


def write_decisions(root: Path, decisions) -> None:
    """Written in one go (the store appends one fsynced record at a time; this is set-up only)."""
    with open(root / DECISIONS_NAME, "wb") as fh:
        for d in decisions:
            fh.write(d.to_line())


def ask_all(root: Path, files) -> tuple[float, int, int]:
    started = time.perf_counter()
    checker = AcceptedFiles(root)
    yes = sum(checker.accepted(rel, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino) is not None for rel, st in files)
    return time.perf_counter() - started, checker.hashed, yes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgclean-bench-decisions-"))
    try:
        root = work / "incoming"
        files = make_folder(root, args.files)
        rows = []
        seconds, hashed, yes = ask_all(root, files)
        rows.append(("none", seconds, hashed, yes))

        other = [new_decision("accepted", root, f"gone/{i}.png", 10_000 + i, "0" * 64, "accept") for i in range(args.decisions)]
        write_decisions(root, other)
        rows.append(("other sizes", *ask_all(root, files)))

        sizes = sorted({st.st_size for _, st in files})
        same = [new_decision("accepted", root, f"gone/{i}.png", sizes[i % len(sizes)], f"{i:064x}", "accept")
                for i in range(args.decisions)]
        write_decisions(root, same)
        rows.append(("same size", *ask_all(root, files)))

        mine = [new_decision("accepted", root, rel, st.st_size, hashlib.sha256((root / rel).read_bytes()).hexdigest(), "accept")
                for rel, st in files]
        write_decisions(root, mine)
        rows.append(("accepted", *ask_all(root, files)))

        print(f"{args.files} records asked about (every file rejected), {args.decisions} decisions")
        print(f"{'setting':<12} {'seconds':>8} {'us/record':>10} {'hashed':>7} {'accepted':>9}")
        for name, s, h, y in rows:
            print(f"{name:<12} {s:8.3f} {s / len(files) * 1e6:10.1f} {h:7d} {y:9d}")

        write_decisions(root, same)
        started = time.perf_counter()
        loaded = read_folder(root).log
        print(f"load {len(loaded.records)} records ({(root / DECISIONS_NAME).stat().st_size / 2**20:.1f} MiB): "
              f"{time.perf_counter() - started:.3f} s")
        per_record = len(same[0].to_line())
        bound = MAX_FILE_BYTES // per_record
        write_decisions(root, (new_decision("accepted", root, f"gone/{i}.png", i, f"{i:064x}", "accept") for i in range(bound)))
        started = time.perf_counter()
        loaded = read_folder(root).log
        print(f"load {len(loaded.records)} records ({(root / DECISIONS_NAME).stat().st_size / 2**20:.1f} MiB, "
              f"the size bound): {time.perf_counter() - started:.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
