"""The long reliability campaign: kill -9 mid-move, recovery, dry runs, hostile models, disk full.

Not part of the default test suite. Run it on its own:

    python benchmarks/fault_campaign.py                      # 100 kill -9 runs, a few minutes
    python benchmarks/fault_campaign.py --runs 20 --junit /tmp/junit.xml

What it does, all against the real CLI:

* builds a folder of many tiny images (in-distribution, out-of-distribution and undecodable
  ones, a few large enough that a cross-device copy takes a moment) and a tiny model
  (`imgclean fit --epochs 1`);
* `--runs` times: copies the folder afresh, starts `python -m imgclean scan FOLDER --move-to Q`
  as a subprocess, watches Q's manifest for the first "started" record (so the kill timer starts
  only once moving has begun), waits a random delay within the measured moving time and sends
  SIGKILL; then checks the wreck (no partial file under a final name, even before recovery),
  reruns the scan (which recovers the journal and finishes the job) and checks that every input
  exists exactly once, that nothing under a final name is partial, and that no temporary file or
  unfinished journal record is left. Every other run quarantines to /dev/shm when that is
  another filesystem, so the copy-verify-link path is killed too;
* dry runs: snapshots (path, size, mtime, mode, sha256) before and after; any difference is a
  side effect;
* hostile models: pickles that would write a marker file, as --weights .pt/.pth, as
  weights.safetensors and inside detector.npz; a marker that appears is a payload executed;
* disk full: a small tmpfs (needs root and mount rights; skipped with the reason otherwise);
* per-category case counts from a pytest JUnit XML (run here, or given with --junit).

Figures go to docs/reliability.json and docs/reliability.md, and are printed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ENV.pop("FORCE_COLOR", None)
MANIFEST = "imgclean-manifest.jsonl"
CATEGORIES = {
    "test_decoding": "decoding",
    "test_filesystem": "filesystem",
    "test_model_files": "models",
    "test_moves": "moves",
    "test_locking": "locking",
}


# ----------------------------------------------------------------------------- data
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import class_image, ood_image  # noqa: E402  (the test suite's own tiny images)


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L").save(path)


def make_train(root: Path, per_class: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for kind in ("stripes_h", "stripes_v", "checker"):
        for i in range(per_class):
            save_png(root / kind / f"{i:03d}.png", class_image(kind, rng))
    return root


def make_incoming(root: Path, files: int, seed: int = 1) -> None:
    """A folder of unique files: a third in-distribution, a third OOD, a third undecodable
    (a few of those large), in two sub-folders and at the top, some with awkward names."""
    rng = np.random.default_rng(seed)
    kinds = ("stripes_h", "stripes_v", "checker")
    subdirs = ("", "a", "b/c")
    for i in range(files):
        folder = root / subdirs[i % 3]
        name = f"{'odd name ' if i % 7 == 0 else ''}f{i:03d}.png"
        if i % 3 == 0:
            save_png(folder / name, class_image(kinds[i % 9 // 3], rng))
        elif i % 3 == 1:
            save_png(folder / name, ood_image(rng))
        else:
            n = 2_000_000 if i % 10 == 2 else int(rng.integers(100, 5000))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"JUNK" + rng.integers(0, 256, n, dtype=np.uint8).tobytes())


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def user_files(*roots: Path) -> list[Path]:
    """Regular, non-hidden files (journal and lock left out) below the roots."""
    out = []
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = Path(dirpath) / n
                if n.startswith(".") or n == MANIFEST or p.is_symlink() or not p.is_file():
                    continue
                out.append(p)
    return out


def tmp_leftovers(root: Path) -> int:
    return sum(1 for _ in root.rglob(".imgclean-tmp-*")) if root.exists() else 0


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, names in os.walk(root):
        for n in names + dirnames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            out[os.fsdecode(p.relative_to(root))] = (
                st.st_mode, st.st_size, st.st_mtime_ns, sha(p) if p.is_file() and not p.is_symlink() else None,
            )
    return out


def unfinished_ops(quarantine: Path) -> int:
    from imgclean.moves import _unfinished, read_manifest

    return len(_unfinished(read_manifest(quarantine)))


# ----------------------------------------------------------------------------- the CLI
def cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgclean", *map(os.fspath, args)], env=ENV, capture_output=True,
        stdin=subprocess.DEVNULL, timeout=timeout,
    )


class Counter:
    """Counts runs and the tracebacks in their output; keeps the tail of each traceback seen."""

    def __init__(self):
        self.tracebacks = 0
        self.processes = 0
        self.samples: list[dict] = []

    def check(self, *outputs, label: str = "") -> None:
        self.processes += 1
        for o in outputs:
            text = o.decode("utf-8", "replace") if isinstance(o, bytes) else (o or "")
            if "Traceback" in text:
                self.tracebacks += 1
                self.samples.append({"run": label, "output_tail": text[-3000:]})


def invoke_inprocess(args: list) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from imgclean.cli import app

    result = CliRunner().invoke(app, [os.fspath(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return -1, result.stdout, f"uncaught {type(result.exception).__name__}: {result.exception}\nTraceback"
    return result.exit_code, result.stdout, result.output


# ----------------------------------------------------------------------------- kill -9 campaign
def watch_for_first_move(quarantine: Path, proc: subprocess.Popen, timeout: float = 120, count: int = 1,
                         poll: float = 0.001) -> float | None:
    """Poll the manifest until `count` "started" records are in it; the time seen, or None."""
    manifest = quarantine / MANIFEST
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if manifest.read_bytes().count(b'"state": "started"') >= count:
                return time.monotonic()
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            return None
        time.sleep(poll)
    return None


def scan_args(folder: Path, model: Path, quarantine: Path) -> list:
    return ["scan", folder, "-m", model, "--move-to", quarantine, "--json", "-q", "--batch-size", "8"]


def start_scan(folder: Path, model: Path, quarantine: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "imgclean", *map(os.fspath, scan_args(folder, model, quarantine))],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )


def measure_moving_time(pristine: Path, model: Path, work: Path, quarantine_parent: Path, counter: Counter) -> float:
    folder, quarantine = work / "calib_in", quarantine_parent / f"calib_q_{os.getpid()}"
    shutil.copytree(pristine, folder)
    proc = start_scan(folder, model, quarantine)
    seen = watch_for_first_move(quarantine, proc)
    out, err = proc.communicate(timeout=300)
    end = time.monotonic()
    counter.check(out, err, label="calibration")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(quarantine, ignore_errors=True)
    if proc.returncode != 0 or seen is None:
        raise SystemExit(f"calibration scan failed ({proc.returncode}): {err.decode(errors='replace')}")
    return end - seen


def kill_run(i: int, pristine: Path, originals: set[str], model: Path, work: Path, quarantine_parent: Path,
             max_delay: float, rejected: int, strategy: str, rng: random.Random, counter: Counter,
             rerun_subprocess: bool) -> dict:
    """One scan killed with SIGKILL, then a rerun and the checks.

    strategy "uniform": kill a random delay (uniform in [0, max_delay]) after the first
    "started" record; "kth-move": kill 0-2 ms after the k-th "started" record (k random), i.e.
    while that move is under way.
    """
    folder = work / f"run{i:03d}_in"
    quarantine = quarantine_parent / f"imgclean-campaign-{os.getpid()}-{i:03d}_q"
    shutil.copytree(pristine, folder)
    proc = start_scan(folder, model, quarantine)
    if strategy == "uniform":
        seen = watch_for_first_move(quarantine, proc)
        delay = rng.uniform(0, max_delay)
    else:
        seen = watch_for_first_move(quarantine, proc, count=rng.randint(1, max(1, rejected)), poll=0.0002)
        delay = rng.uniform(0, 0.002)
    if seen is not None:
        time.sleep(max(0.0, seen + delay - time.monotonic()))
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    counter.check(err, label=f"kill run {i} (stderr of the killed scan, rc {proc.returncode})")
    killed = proc.returncode == -signal.SIGKILL
    wreck = {
        "unfinished_ops": unfinished_ops(quarantine) if quarantine.exists() else 0,
        "tmp_files": tmp_leftovers(quarantine),
        "partial_final": sum(sha(p) not in originals for p in user_files(quarantine)),
    }
    # the rerun: recovers the journal, then finishes the scan
    if rerun_subprocess:
        rr = cli(*scan_args(folder, model, quarantine))
        counter.check(rr.stdout, rr.stderr, label=f"rerun {i}")
        rerun_code = rr.returncode
    else:
        rerun_code, stdout, output = invoke_inprocess(scan_args(folder, model, quarantine))
        counter.check(output, label=f"rerun {i}")
    found: dict[str, int] = {}
    partial = 0
    for p in user_files(folder, quarantine):
        digest = sha(p)
        if digest in originals:
            found[digest] = found.get(digest, 0) + 1
        else:
            partial += 1
    result = {
        "run": i,
        "target": "other-fs" if os.stat(quarantine_parent).st_dev != os.stat(work).st_dev else "same-fs",
        "strategy": strategy,
        "delay_s": round(delay, 4),
        "killed": killed,
        "mid_move": killed and wreck["unfinished_ops"] > 0,
        "wreck_partial_final": wreck["partial_final"],
        "wreck_tmp_files": wreck["tmp_files"],
        "rerun_exit": rerun_code,
        "lost": sum(1 for d in originals if found.get(d, 0) == 0),
        "duplicates": sum(1 for d in originals if found.get(d, 0) > 1),
        "partial_final": partial,
        "tmp_left": tmp_leftovers(quarantine),
        "unfinished_left": unfinished_ops(quarantine) if quarantine.exists() else 0,
    }
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(quarantine, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- other campaigns
def dry_run_campaign(pristine: Path, model: Path, work: Path, runs: int, counter: Counter) -> dict:
    side_effects = 0
    for i in range(runs):
        folder, quarantine = work / f"dry{i}_in", work / f"dry{i}_q"
        shutil.copytree(pristine, folder)
        if i % 2:  # a quarantine with history: an earlier real run filled it
            code, _, output = invoke_inprocess(scan_args(folder, model, quarantine))
            counter.check(output, label=f"dry-run history {i}")
            shutil.rmtree(folder)
            shutil.copytree(pristine, folder)
        before = (snapshot(folder), snapshot(quarantine))
        code, stdout, output = invoke_inprocess(["scan", folder, "-m", model, "--move-to", quarantine, "--dry-run", "--json"])
        counter.check(output, label=f"dry run {i}")
        after = (snapshot(folder), snapshot(quarantine))
        for b, a in zip(before, after):
            side_effects += len(set(b.items()) ^ set(a.items()))
        if code != 0 or not json.loads(stdout)["plan"]:
            side_effects += 1  # a dry run that fails or plans nothing did not show the plan
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(quarantine, ignore_errors=True)
    return {"runs": runs, "side_effects": side_effects}


class Payload:
    def __init__(self, marker: Path):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def payload_campaign(train: Path, model: Path, incoming: Path, work: Path, counter: Counter) -> dict:
    import torch

    tried = executed = refused = 0
    control = work / "control_marker"
    pickle.loads(pickle.dumps(Payload(control)))  # the payload is live when unpickled
    live = control.exists()
    cases = []
    for name in ("evil.pt", "evil.pth"):
        marker = work / f"marker_{name}"
        torch.save({"features.0.weight": torch.zeros(6, 1, 5, 5), "x": Payload(marker)}, work / name)
        cases.append((marker, ["fit", train, "-o", work / f"m_{name}", "--epochs", "1", "--weights", work / name]))
    # a pickle disguised as the model's weights
    m1 = work / "model_evil_weights"
    shutil.copytree(model, m1)
    marker = work / "marker_weights"
    torch.save({"x": Payload(marker)}, m1 / "weights.safetensors")
    cases.append((marker, ["scan", incoming, "-m", m1]))
    # object arrays inside detector.npz
    m2 = work / "model_evil_detector"
    shutil.copytree(model, m2)
    marker = work / "marker_detector"
    with np.load(m2 / "detector.npz") as arrays:
        fields = dict(arrays)
    for key in ("means", "thresholds"):
        fields[key] = np.array([Payload(marker)], dtype=object)
    np.savez(m2 / "detector.npz", **fields)
    cases.append((marker, ["scan", incoming, "-m", m2]))
    cases.append((marker, ["info", m2]))
    for marker, args in cases:
        proc = cli(*args)
        counter.check(proc.stdout, proc.stderr, label=" ".join(map(os.fspath, args[:1])))
        tried += 1
        executed += marker.exists()
        refused += proc.returncode == 1
    return {"payloads_tried": tried, "payloads_executed": executed, "refused_with_exit_1": refused, "payload_is_live_when_unpickled": live}


def disk_full_campaign(pristine: Path, model: Path, work: Path, originals: set[str], counter: Counter) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "needs root to mount a small tmpfs"}
    results = {"runs": 0, "move_errors": 0, "lost": 0, "duplicates": 0, "partial_final": 0, "tmp_left": 0, "source_changed": 0}
    for i, size in enumerate(("200k", "500k", "1m")):
        mnt = work / f"small{i}"
        mnt.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
        if proc.returncode != 0:
            return {"skipped": f"cannot mount a tmpfs here: {proc.stderr.strip()}"}
        folder, quarantine = work / f"full{i}_in", mnt / "q"
        try:
            shutil.copytree(pristine, folder)
            before = {os.fsdecode(p.relative_to(folder)): sha(p) for p in user_files(folder)}
            code, stdout, output = invoke_inprocess(scan_args(folder, model, quarantine))
            counter.check(output, label=f"disk full {i}")
            summary = json.loads(stdout) if stdout.strip() else {}
            results["runs"] += 1
            results["move_errors"] += summary.get("move_errors", 0)
            found: dict[str, int] = {}
            for p in user_files(folder, quarantine):
                d = sha(p)
                if d in originals:
                    found[d] = found.get(d, 0) + 1
                else:
                    results["partial_final"] += 1
            results["lost"] += sum(found.get(d, 0) == 0 for d in originals)
            results["duplicates"] += sum(found.get(d, 0) > 1 for d in originals)
            results["tmp_left"] += tmp_leftovers(quarantine)
            for p in user_files(folder):  # whatever stayed is unchanged
                results["source_changed"] += before.get(os.fsdecode(p.relative_to(folder))) != sha(p)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            shutil.rmtree(folder, ignore_errors=True)
    return results


def pytest_counts(junit: Path | None, skip: bool) -> dict:
    if junit is None:
        if skip:
            return {"skipped": "--skip-pytest"}
        junit = Path(tempfile.mkdtemp()) / "junit.xml"
        files = [f"tests/{name}.py" for name in CATEGORIES if (REPO / "tests" / f"{name}.py").exists()]
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *files],
                       cwd=REPO, env=ENV, capture_output=True, timeout=1800)
    counts: dict[str, dict[str, int]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        cat = CATEGORIES.get(module, module)
        c = counts.setdefault(cat, {"tried": 0, "passed": 0, "failed": 0, "skipped": 0})
        c["tried"] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            c["failed"] += 1
        elif case.find("skipped") is not None:
            c["skipped"] += 1
            c.setdefault("skip_reasons", []).append(f"{case.get('name')}: {case.find('skipped').get('message', '')}")
        else:
            c["passed"] += 1
    return {"source": os.fspath(junit), "categories": counts}


# ----------------------------------------------------------------------------- report
def write_docs(figures: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "reliability.json").write_text(json.dumps(figures, indent=2) + "\n")
    k = figures["kill9"]
    lines = [
        "# Reliability figures",
        "",
        f"Measured by `{figures['command']}` on {figures['date']} ({figures['seconds']:.0f} s, "
        f"{figures['cpus']} CPU cores shared with other jobs). Raw numbers: `reliability.json`.",
        "",
        "| figure | value | target |",
        "| --- | ---: | ---: |",
        f"| kill -9 runs | {k['runs']} | >= 100 |",
        f"| ... killed while a move was journaled but unfinished | {k['mid_move']} | |",
        f"| ... of those into another filesystem (/dev/shm) | {k['mid_move_other_fs']} | |",
        f"| ... killed between moves | {k['killed'] - k['mid_move']} | |",
        f"| ... finished before the kill landed | {k['runs'] - k['killed']} | |",
        f"| files lost | {k['lost']} | 0 |",
        f"| partial files under final names, right after the kill | {k['wreck_partial_final']} | 0 |",
        f"| partial files under final names, after the rerun | {k['partial_final']} | 0 |",
        f"| duplicates after the rerun | {k['duplicates']} | 0 |",
        f"| temp files / unfinished journal records after the rerun | {k['tmp_left']} / {k['unfinished_left']} | 0 / 0 |",
        f"| reruns that did not exit 0 | {k['rerun_failed']} | 0 |",
        f"| dry-run side effects ({figures['dry_run']['runs']} dry runs) | {figures['dry_run']['side_effects']} | 0 |",
        f"| malicious payloads executed ({figures['payloads']['payloads_tried']} tried) | {figures['payloads']['payloads_executed']} | 0 |",
        f"| uncaught exceptions (tracebacks in {figures['uncaught']['processes']} runs) | {figures['uncaught']['tracebacks']} | 0 |",
    ]
    d = figures["disk_full"]
    if "skipped" in d:
        lines.append(f"| disk full on a small tmpfs | skipped: {d['skipped']} | |")
    else:
        lines.append(
            f"| disk full on a small tmpfs ({d['runs']} runs, {d['move_errors']} moves refused) | lost {d['lost']}, "
            f"partial {d['partial_final']}, temp left {d['tmp_left']}, sources changed {d['source_changed']} | 0 |"
        )
    rs, ms = k["runs_by_strategy"], k["mid_move_by_strategy"]
    lines += ["", f"Kill timing, always counted from the child's first journaled `started` record: half the runs "
              f"({rs['uniform']}) wait uniform in [0, {k['max_delay_s']:.3f}] s (0.9 x the moving time of an "
              f"uninterrupted run, {k['moving_time_s']:.3f} s; {ms['uniform']} of them landed mid-move); the other "
              f"half ({rs['kth-move']}) wait for the k-th `started` record (k random) and kill 0-2 ms later "
              f"({ms['kth-move']} landed mid-move). A kill is mid-move when the journal holds a move that was "
              f"started and not finished. {k['files']} files per run, {k['rejected_per_run']} of them moved by "
              f"a complete run; {k['other_fs_runs']} runs quarantined to /dev/shm (another filesystem).", ""]
    tests = figures["tests"]
    if "categories" in tests:
        lines += ["## Cases tried and passed per category (pytest)", "", "| category | tried | passed | failed | skipped |", "| --- | ---: | ---: | ---: | ---: |"]
        for cat, c in sorted(tests["categories"].items()):
            lines.append(f"| {cat} | {c['tried']} | {c['passed']} | {c['failed']} | {c['skipped']} |")
        lines.append("")
        for cat, c in sorted(tests["categories"].items()):
            for reason in c.get("skip_reasons", []):
                lines.append(f"- skipped ({cat}) {reason}")
        lines.append("")
    (out / "reliability.md").write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=100, help="kill -9 runs")
    ap.add_argument("--files", type=int, default=60, help="files in the scanned folder")
    ap.add_argument("--dry-runs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--junit", type=Path, help="reuse this pytest JUnit XML for the per-category counts")
    ap.add_argument("--skip-pytest", action="store_true", help="no per-category counts")
    ap.add_argument("--rerun-subprocess", action="store_true", help="rerun each killed scan as a subprocess too (slower)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    rng = random.Random(args.seed)
    counter = Counter()
    work = Path(tempfile.mkdtemp(prefix="imgclean-campaign-"))
    shm = Path("/dev/shm")
    other_fs = shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(work).st_dev
    if not other_fs:
        print("note: /dev/shm is not another writable filesystem here; all moves stay on one filesystem")
    try:
        train, model, pristine = work / "train", work / "model", work / "pristine"
        make_train(train)
        proc = cli("fit", train, "-o", model, "--epochs", "1", "--json", "-q")
        counter.check(proc.stdout, proc.stderr, label="fit")
        if proc.returncode != 0:
            raise SystemExit(f"fit failed: {proc.stderr.decode(errors='replace')}")
        make_incoming(pristine, args.files)
        originals = {sha(p) for p in user_files(pristine)}
        assert len(originals) == args.files, "files must be unique"
        code, stdout, output = invoke_inprocess(["scan", pristine, "-m", model, "--json"])
        rejected = json.loads(stdout)["rejected"]

        moving = measure_moving_time(pristine, model, work, work, counter)
        max_delay = 0.9 * moving
        print(f"{args.files} files, {rejected} rejected per complete run; moving takes {moving:.3f} s; "
              f"kill delay uniform in [0, {max_delay:.3f}] s")
        runs = []
        for i in range(args.runs):
            parent = shm if other_fs and i % 2 else work
            strategy = "kth-move" if (i // 2) % 2 else "uniform"
            r = kill_run(i, pristine, originals, model, work, parent, max_delay, rejected, strategy, rng, counter,
                         args.rerun_subprocess)
            runs.append(r)
            bad = r["lost"] or r["duplicates"] or r["partial_final"] or r["wreck_partial_final"] or r["tmp_left"] or r["unfinished_left"] or r["rerun_exit"] != 0
            if bad or (i + 1) % 10 == 0:
                print(f"run {i + 1}/{args.runs}: {'PROBLEM ' if bad else ''}{r}", flush=True)
        kill = {
            "runs": len(runs),
            "files": args.files,
            "rejected_per_run": rejected,
            "moving_time_s": round(moving, 4),
            "max_delay_s": round(max_delay, 4),
            "killed": sum(r["killed"] for r in runs),
            "mid_move": sum(r["mid_move"] for r in runs),
            "mid_move_by_strategy": {st: sum(r["mid_move"] for r in runs if r["strategy"] == st) for st in ("uniform", "kth-move")},
            "runs_by_strategy": {st: sum(r["strategy"] == st for r in runs) for st in ("uniform", "kth-move")},
            "mid_move_other_fs": sum(r["mid_move"] and r["target"] == "other-fs" for r in runs),
            "other_fs_runs": sum(r["target"] == "other-fs" for r in runs),
            "wreck_partial_final": sum(r["wreck_partial_final"] for r in runs),
            "wreck_tmp_files": sum(r["wreck_tmp_files"] for r in runs),
            "lost": sum(r["lost"] for r in runs),
            "duplicates": sum(r["duplicates"] for r in runs),
            "partial_final": sum(r["partial_final"] for r in runs),
            "tmp_left": sum(r["tmp_left"] for r in runs),
            "unfinished_left": sum(r["unfinished_left"] for r in runs),
            "rerun_failed": sum(r["rerun_exit"] != 0 for r in runs),
            "per_run": runs,
        }
        print("dry runs ...", flush=True)
        dry = dry_run_campaign(pristine, model, work, args.dry_runs, counter)
        print("hostile models ...", flush=True)
        incoming = work / "payload_in"
        shutil.copytree(pristine, incoming)
        payloads = payload_campaign(train, model, incoming, work, counter)
        print("disk full ...", flush=True)
        full = disk_full_campaign(pristine, model, work, originals, counter)
        if "skipped" in full:
            print(f"disk full skipped: {full['skipped']}")
        print("pytest cases ...", flush=True)
        tests = pytest_counts(args.junit, args.skip_pytest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for p in shm.glob(f"imgclean-campaign-{os.getpid()}-*"):
            shutil.rmtree(p, ignore_errors=True)

    figures = {
        "command": "python benchmarks/fault_campaign.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "cpus": os.cpu_count(),
        "cross_filesystem": bool(other_fs),
        "kill9": kill,
        "dry_run": dry,
        "payloads": payloads,
        "disk_full": full,
        "uncaught": {"tracebacks": counter.tracebacks, "processes": counter.processes, "samples": counter.samples},
        "tests": tests,
    }
    write_docs(figures, args.out)
    summary = {k: v for k, v in kill.items() if k != "per_run"}
    print(json.dumps({**figures, "kill9": summary}, indent=2))
    failed = (kill["lost"] or kill["duplicates"] or kill["partial_final"] or kill["wreck_partial_final"]
              or dry["side_effects"] or payloads["payloads_executed"] or counter.tracebacks)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
