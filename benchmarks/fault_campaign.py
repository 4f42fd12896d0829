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

The kinds of fault added by issue 10 (each reports files lost, duplicated and touched outside the
given folders, and tracebacks); every run has a sentinel folder "outside" beside the scanned one
(a backup copy of it plus victim files) whose snapshot must not change:

* replace: another program replaces each source (write temp + rename) as soon as its move is
  journaled, in a watcher thread; counts new versions lost;
* crash-edit: kill -9 at the k-th "capture" step (the fault hook, in a real process: the
  quarantine copy is complete and the source still at its name, not yet taken away), then the user edits the source
  (same filesystem: replaced; other filesystem: appended), then the rerun recovers; counts
  new versions and originals lost;
* overlap: `scan P --move-to Q1` and `scan P/C --move-to Q2` started together (all files are
  below P/C, so both walk the same files at the same time; one quarantine on /dev/shm when that is
  another filesystem); counts files in
  both quarantines, in the folder and a quarantine, lost, and runs where both exited 0;
* apply: `scan --report` (nothing moves), then `imgclean apply REPORT --move-to Q` killed with
  SIGKILL 0-2 ms after its k-th journaled move, then the same apply again (it recovers the journal
  and finishes; the files already moved are "missing"); counts lost, duplicated, touched outside,
  rejected files not quarantined, and partial, temporary or unfinished leftovers;
* journal: a real quarantine whose manifest is then damaged (wrong types, an id escaping the
  quarantine, a destination or source outside, a scan_root outside, garbage), followed by a
  scan (recovery), `restore --dry-run` and `restore`.

`--quick` runs a few of each (minutes); `--kinds` picks parts; `--max-minutes` bounds the time
(no new run starts after it). This file is one script on purpose (run as is, no package), so
it is longer than the ~400-line guideline.

Figures go to docs/reliability.json and the marked block of docs/reliability.md (the promises
above the block are written by hand and kept), and are printed.
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
import stat
import subprocess
import sys
import tempfile
import threading
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
EXIT_LOCKED = 4
KINDS = ("kill9", "dry", "payloads", "disk", "replace", "crash-edit", "overlap", "journal", "apply", "locks", "inputs",
         "cache", "pytest")
# Parts run by their own scripts (each prints its figures as one JSON document and exits non-zero on a miss).
COMPANIONS = {"locks": "fault_locks.py", "inputs": "fault_inputs.py", "cache": "fault_cache.py"}
NEW_KINDS = ("replace", "crash-edit", "overlap", "journal", "apply")
FIGURES_BEGIN = "<!-- BEGIN FIGURES: written by benchmarks/fault_campaign.py; edit above this line only -->"
FIGURES_END = "<!-- END FIGURES -->"
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


def journal_ops(quarantine: Path) -> list[dict]:
    """Started records (merged with later destinations) whose op never reached a final state."""
    try:
        data = (quarantine / MANIFEST).read_bytes()
    except OSError:
        return []
    ops: dict = {}
    for line in data.split(b"\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
            continue
        if rec.get("state") == "started":
            ops[rec["id"]] = dict(rec)
        elif rec["id"] in ops:
            ops[rec["id"]]["state"] = rec.get("state")
            if "destination" in rec:
                ops[rec["id"]]["destination"] = rec["destination"]
    return [op for op in ops.values() if op.get("state") in ("started", "retarget")]


def unfinished_ops(quarantine: Path) -> int:
    return len(journal_ops(quarantine))


# ----------------------------------------------------------------------------- the CLI
def cli(*args, timeout: float = 1200) -> subprocess.CompletedProcess:
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


# Extra scan options: `--engine ray` sets ["--engine", "ray", ...] (main()).
SCAN_ENGINE: list = []


def scan_args(folder: Path, model: Path, quarantine: Path) -> list:
    return ["scan", folder, "-m", model, "--move-to", quarantine, "--json", "-q", "--batch-size", "8", *SCAN_ENGINE]


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
    out, err = proc.communicate(timeout=900)
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


# ----------------------------------------------------------------------------- issue 10: new kinds of fault
KILL_AT_STEP = """
import os, signal, sys
import importlib
step, at = os.environ["CAMPAIGN_KILL_STEP"], int(os.environ["CAMPAIGN_KILL_AT"])
seen = [0]
def hook(name):
    if name == step:
        seen[0] += 1
        if seen[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
for mod in ("imgclean.fileops", "imgclean.quarantine.moves", "imgclean.quarantine.transfer", "imgclean.quarantine.journal"):
    try:
        m = importlib.import_module(mod)
    except ImportError:
        continue
    if hasattr(m, "_fault_hook"):  # imgclean before issue 26
        m._fault_hook = hook
    elif mod == "imgclean.fileops":
        m.fault_hook = hook
from imgclean.cli import main
sys.argv[0] = "imgclean"
main()
"""


def census(*roots: Path) -> dict[str, int]:
    """sha256 -> number of copies among the user files below the roots."""
    found: dict[str, int] = {}
    for p in user_files(*roots):
        d = sha(p)
        found[d] = found.get(d, 0) + 1
    return found


def snapshot_diff(before: dict, after: dict) -> int:
    """Entries created, removed or changed; a folder whose only change is its mtime is not counted."""
    def is_dir(entry) -> bool:
        return entry is not None and stat.S_ISDIR(entry[0])

    return sum(before.get(k) != after.get(k) and not (is_dir(before.get(k)) and is_dir(after.get(k)))
               for k in before.keys() | after.keys())


def fault_run_dir(work: Path, name: str, pristine: Path, below: str = "") -> tuple[Path, Path, dict]:
    """run/P (the scanned folder; the files go to P/<below>) and run/outside: a backup copy of
    the files and victim files, snapshotted."""
    run = work / name
    folder, outside = run / "P", run / "outside"
    shutil.copytree(pristine, folder / below)
    shutil.copytree(pristine, outside / "backup")
    (outside / "victims").mkdir(parents=True)
    for n in ("victim_id.txt", "victim_dest.txt", "victim_src.txt", "keep.txt"):
        (outside / "victims" / n).write_bytes(f"outside file {n}\n".encode())
    return folder, outside, snapshot(outside)


def originals_of(folder: Path) -> dict[str, str]:
    return {os.fsdecode(p): sha(p) for p in user_files(folder)}


def write_new_version(path: bytes, content: bytes, replace: bool) -> None:
    """An editor's save: write a temp file and rename it over the name; or append in place."""
    if replace:
        tmp = os.path.join(os.path.dirname(path), b".campaign-save-" + os.urandom(6).hex().encode())
        with open(tmp, "wb") as fh:
            fh.write(content)
        os.rename(tmp, path)
    else:
        with open(path, "ab") as fh:
            fh.write(content)


class Replacer(threading.Thread):
    """Replaces the source of every move as soon as its "started" record is in the journal."""

    def __init__(self, quarantine: Path, proc: subprocess.Popen, tag: str):
        super().__init__(daemon=True)
        self.manifest, self.proc, self.tag = quarantine / MANIFEST, proc, tag
        self.new_versions: list[str] = []  # sha256 of every version written
        self.replaced: set[str] = set()
        self.errors = 0

    def run(self) -> None:
        fh = None
        buf = b""
        while True:
            if fh is None:
                try:
                    fh = open(self.manifest, "rb")
                except FileNotFoundError:
                    if self.proc.poll() is not None:
                        return
                    time.sleep(0.0005)
                    continue
            chunk = fh.read()
            if not chunk:
                if self.proc.poll() is not None:
                    chunk = fh.read()
                    if not chunk:
                        fh.close()
                        return
                else:
                    time.sleep(0.0002)
                    continue
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("op") == "move" and rec.get("state") == "started":
                    self.replace(rec.get("source"))

    def replace(self, source) -> None:
        if not isinstance(source, str) or source in self.replaced:
            return
        content = f"new version {self.tag} {len(self.new_versions)} ".encode() + os.urandom(32)
        try:
            write_new_version(os.fsencode(source), content, replace=True)
        except OSError:
            self.errors += 1
            return
        self.replaced.add(source)
        self.new_versions.append(hashlib.sha256(content).hexdigest())


def replace_run(i: int, pristine: Path, model: Path, work: Path, qparent: Path, counter: Counter) -> dict:
    folder, outside, before = fault_run_dir(work, f"replace{i:03d}", pristine)
    quarantine = qparent / f"imgclean-campaign-{os.getpid()}-replace{i:03d}_q"
    originals = originals_of(folder)
    proc = start_scan(folder, model, quarantine)
    watcher = Replacer(quarantine, proc, f"r{i}")
    watcher.start()
    try:
        out, err = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    watcher.join(timeout=60)
    counter.check(out, err, label=f"replace run {i}")
    found = census(folder, quarantine)
    new_lost = sum(found.get(d, 0) == 0 for d in watcher.new_versions)
    kept_lost = sum(found.get(d, 0) == 0 for src, d in originals.items() if src not in watcher.replaced)
    expected = set(watcher.new_versions) | set(originals.values())
    result = {
        "run": i,
        "target": "other-fs" if os.stat(qparent).st_dev != os.stat(work).st_dev else "same-fs",
        "exit": proc.returncode,
        "new_versions": len(watcher.new_versions),
        "new_versions_lost": new_lost,
        "lost": new_lost + kept_lost,
        "duplicated": sum(found.get(d, 0) > 1 for d in expected),
        "touched_outside": snapshot_diff(before, snapshot(outside)),
        "replace_errors": watcher.errors,
    }
    shutil.rmtree(folder.parent, ignore_errors=True)
    shutil.rmtree(quarantine, ignore_errors=True)
    return result


def crash_edit_run(i: int, pristine: Path, model: Path, work: Path, qparent: Path, rejected: int,
                   rng: random.Random, counter: Counter) -> dict:
    folder, outside, before = fault_run_dir(work, f"crashedit{i:03d}", pristine)
    quarantine = qparent / f"imgclean-campaign-{os.getpid()}-crashedit{i:03d}_q"
    other_fs = os.stat(qparent).st_dev != os.stat(work).st_dev
    originals = originals_of(folder)
    at = rng.randint(1, max(1, rejected))
    env = {**ENV, "CAMPAIGN_KILL_STEP": "capture", "CAMPAIGN_KILL_AT": str(at)}
    proc = subprocess.run([sys.executable, "-c", KILL_AT_STEP, *map(os.fspath, scan_args(folder, model, quarantine))],
                          env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=900)
    killed = proc.returncode == -signal.SIGKILL
    counter.check(proc.stderr, label=f"crash-edit run {i} (killed scan, rc {proc.returncode})")
    new_versions = []
    at_risk = 0  # edited sources whose complete quarantine copy was there too
    for op in journal_ops(quarantine):
        src = op.get("source")
        if not isinstance(src, str) or not os.path.isfile(os.fsencode(src)):
            continue
        content = f"edited after the crash {i} ".encode() + os.urandom(32)
        try:
            write_new_version(os.fsencode(src), content, replace=not other_fs)
        except OSError:
            continue
        new_versions.append(sha(Path(src)))
        dst = op.get("destination")
        at_risk += isinstance(dst, str) and os.path.isfile(os.fsencode(dst))
    code, _, output = invoke_inprocess(scan_args(folder, model, quarantine))
    counter.check(output, label=f"crash-edit rerun {i}")
    found = census(folder, quarantine)
    expected = set(originals.values()) | set(new_versions)
    new_lost = sum(found.get(d, 0) == 0 for d in new_versions)
    result = {
        "run": i,
        "target": "other-fs" if other_fs else "same-fs",
        "edit": "append" if other_fs else "replace",
        "kill_at_move": at,
        "killed": killed,
        "edited": len(new_versions),
        "edited_with_complete_copy": at_risk,
        "rerun_exit": code,
        "new_versions_lost": new_lost,
        "lost": sum(found.get(d, 0) == 0 for d in expected),
        "duplicated": sum(found.get(d, 0) > 1 for d in expected),
        "touched_outside": snapshot_diff(before, snapshot(outside)),
    }
    shutil.rmtree(folder.parent, ignore_errors=True)
    shutil.rmtree(quarantine, ignore_errors=True)
    return result


def apply_kill_run(i: int, pristine: Path, model: Path, work: Path, qparent: Path, rejected: int,
                   rng: random.Random, counter: Counter) -> dict:
    """`scan --report` (no move), then `imgclean apply REPORT --move-to Q` killed with SIGKILL
    0-2 ms after its k-th journaled move (k random), then the same apply again: it recovers the
    journal and finishes (files already moved are "missing"). Every original must exist exactly
    once, nothing partial or temporary left, nothing outside touched."""
    folder, outside, before = fault_run_dir(work, f"apply{i:03d}", pristine)
    quarantine = qparent / f"imgclean-campaign-{os.getpid()}-apply{i:03d}_q"
    report = folder.parent / "report.jsonl"
    originals = originals_of(folder)
    code, _, output = invoke_inprocess(["scan", folder, "-m", model, "--report", report, "-q"])
    counter.check(output, label=f"apply run {i} (scan --report)")
    args = ["apply", report, "--move-to", quarantine, "--json", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "imgclean", *map(os.fspath, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    seen = watch_for_first_move(quarantine, proc, count=rng.randint(1, max(1, rejected)), poll=0.0002)
    if seen is not None:
        time.sleep(max(0.0, seen + rng.uniform(0, 0.002) - time.monotonic()))
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    counter.check(err, label=f"apply run {i} (stderr of the killed apply, rc {proc.returncode})")
    killed = proc.returncode == -signal.SIGKILL
    mid_move = killed and quarantine.exists() and unfinished_ops(quarantine) > 0
    rerun_code, stdout, output = invoke_inprocess(args)
    counter.check(output, label=f"apply rerun {i}")
    found = census(folder, quarantine)
    moved = sum(1 for p in user_files(quarantine))
    result = {
        "run": i,
        "target": "other-fs" if os.stat(qparent).st_dev != os.stat(work).st_dev else "same-fs",
        "killed": killed,
        "mid_move": mid_move,
        "rerun_exit": rerun_code,
        "rerun_failed": int(rerun_code != 0),
        "lost": sum(found.get(d, 0) == 0 for d in originals.values()),
        "duplicated": sum(found.get(d, 0) > 1 for d in originals.values()),
        "touched_outside": snapshot_diff(before, snapshot(outside)),
        "not_quarantined": rejected - moved,
        "partial_final": sum(1 for p in user_files(folder, quarantine) if sha(p) not in set(originals.values())),
        "tmp_left": tmp_leftovers(quarantine),
        "unfinished_left": unfinished_ops(quarantine) if quarantine.exists() else 0,
    }
    shutil.rmtree(folder.parent, ignore_errors=True)
    shutil.rmtree(quarantine, ignore_errors=True)
    return result


def overlap_run(i: int, pristine: Path, model: Path, work: Path, shm: Path | None, rng: random.Random,
                counter: Counter) -> dict:
    # every file is below P/C, so both scans walk the same files in the same order at the same time;
    # one quarantine on another filesystem (when there is one): its slower copies widen the race
    folder, outside, before = fault_run_dir(work, f"overlap{i:03d}", pristine, below="C")
    q1, q2 = folder.parent / "Q1", folder.parent / "Q2"
    if shm is not None:
        other = shm / f"imgclean-campaign-{os.getpid()}-overlap{i:03d}_q"
        q1, q2 = (other, q2) if i % 2 else (q1, other)
    child = folder / "C"
    originals = originals_of(folder)
    jobs = [(folder, q1), (child, q2)]
    if rng.random() < 0.5:
        jobs.reverse()
    procs = []
    for f, q in jobs:
        procs.append(start_scan(f, model, q))
        time.sleep(rng.uniform(0, 0.05))  # start skew, not synchronisation
    codes = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        counter.check(out, err, label=f"overlap run {i}")
        codes.append(p.returncode)
    in_p, in_q1, in_q2 = census(folder), census(q1), census(q2)
    digests = set(originals.values())
    total = {d: in_p.get(d, 0) + in_q1.get(d, 0) + in_q2.get(d, 0) for d in digests}
    result = {
        "run": i,
        "first": "parent" if jobs[0][0] == folder else "child",
        "exits": codes,
        "refused": sum(c == EXIT_LOCKED for c in codes),
        "both_exit_0": all(c == 0 for c in codes),
        "in_both_quarantines": sum(in_q1.get(d, 0) and in_q2.get(d, 0) for d in digests),
        "in_folder_and_quarantine": sum(in_p.get(d, 0) and (in_q1.get(d, 0) or in_q2.get(d, 0)) for d in digests),
        "lost": sum(c == 0 for c in total.values()),
        "duplicated": sum(c > 1 for c in total.values()),
        "touched_outside": snapshot_diff(before, snapshot(outside)),
    }
    shutil.rmtree(folder.parent, ignore_errors=True)
    shutil.rmtree(q1, ignore_errors=True)
    shutil.rmtree(q2, ignore_errors=True)
    return result


JOURNAL_CASES = ("wrong-types", "id-escape", "destination-outside", "source-outside", "scan-root-outside", "garbage")


def damage_journal(case: str, folder: Path, quarantine: Path, outside: Path) -> None:
    """Append crafted records to a real quarantine's manifest."""
    victims = outside / "victims"
    stayed = next(p for p in sorted(user_files(folder)))  # a file the clean scan left in place
    st = stayed.stat()
    base = {"op": "move", "state": "started", "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha(stayed),
            "reason": "ood", "details": {}, "scan_root": os.fsdecode(folder), "time": "2026-01-01T00:00:00+00:00"}
    recs: list = []
    if case == "wrong-types":
        recs = [{**base, "id": "bad-types", "source": 5, "destination": [1], "sha256": None},
                {"op": "move", "id": {"x": 1}, "state": "done", "destination": 7},
                [1, 2, 3], "a string", None,
                {"op": "restore", "id": "r", "state": "started", "move_id": [], "source": None, "destination": True},
                {"op": "move", "id": "bad-done", "state": "started", "source": os.fsdecode(folder / "x.png"),
                 "destination": {"d": 1}, "scan_root": 3},
                {"op": "move", "id": "bad-done", "state": "done"}]
    elif case == "id-escape":
        # tmp name = <destination folder>/.imgclean-tmp-<id>: with this id it is outside/victims/victim_id.txt
        (quarantine / ".imgclean-tmp-x").mkdir(exist_ok=True)
        rel = os.path.relpath(victims / "victim_id.txt", quarantine)
        recs = [{**base, "id": f"x/../{rel}", "source": os.fsdecode(stayed),
                 "destination": os.fsdecode(quarantine / "gone.png")}]
    elif case == "destination-outside":
        recs = [{**base, "id": "dest-out", "source": os.fsdecode(folder / "restored_here.png"),
                 "destination": os.fsdecode(victims / "victim_dest.txt")},
                {"op": "move", "id": "dest-out", "state": "done", "time": base["time"]}]
    elif case == "source-outside":
        victim = victims / "victim_src.txt"
        shutil.copyfile(victim, quarantine / "victim_src_copy.txt")
        vst = victim.stat()
        recs = [{**base, "id": "src-out", "source": os.fsdecode(victim), "size": vst.st_size, "mtime_ns": vst.st_mtime_ns,
                 "sha256": sha(victim), "destination": os.fsdecode(quarantine / "victim_src_copy.txt")}]
    elif case == "scan-root-outside":
        (quarantine / "planted.png").write_bytes(b"planted by the journal's author\n")
        recs = [{**base, "id": "root-out", "source": os.fsdecode(victims / "new_file.png"),
                 "destination": os.fsdecode(quarantine / "planted.png"), "scan_root": os.fsdecode(outside)},
                {"op": "move", "id": "root-out", "state": "done", "time": base["time"]}]
    lines = [json.dumps(r).encode() for r in recs]
    if case == "garbage":
        lines = [b"\x00\xff garbage", b"{not json", b"{" + b'"a": 1, ' * 20000 + b'"b": 2}', b'{"op": "move", "id": "torn", "sta']
    with open(quarantine / MANIFEST, "ab") as fh:
        fh.write(b"\n".join(lines) + b"\n")


def journal_run(i: int, case: str, pristine: Path, model: Path, work: Path, counter: Counter) -> dict:
    folder, outside, _ = fault_run_dir(work, f"journal{i:03d}", pristine)
    quarantine = folder.parent / "Q"
    originals = originals_of(folder)
    code, _, output = invoke_inprocess(scan_args(folder, model, quarantine))  # a real quarantine first
    counter.check(output, label=f"journal {case}: first scan")
    before = snapshot(outside)
    damage_journal(case, folder, quarantine, outside)
    tracebacks = counter.tracebacks
    codes = []
    for args in (scan_args(folder, model, quarantine), ["restore", quarantine, "--dry-run"], ["restore", quarantine]):
        code, _, output = invoke_inprocess(args)
        counter.check(output, label=f"journal {case}: {args[0]}")
        codes.append(code)
    found = census(folder, quarantine)
    digests = set(originals.values())
    result = {
        "run": i,
        "case": case,
        "exits": codes,
        "tracebacks": counter.tracebacks - tracebacks,
        "lost": sum(found.get(d, 0) == 0 for d in digests),
        "duplicated": sum(found.get(d, 0) > 1 for d in digests),
        "touched_outside": snapshot_diff(before, snapshot(outside)),
        "left_in_quarantine": sum(1 for p in user_files(quarantine) if sha(p) in digests),
    }
    shutil.rmtree(folder.parent, ignore_errors=True)
    return result


def summarise(kind: str, runs: list[dict], extra: tuple[str, ...] = ()) -> dict:
    keys = ("lost", "duplicated", "touched_outside", *extra)
    return {"runs": len(runs), **{k: sum(int(r.get(k, 0)) for r in runs) for k in keys}, "per_run": runs}


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
NEW_KIND_ROWS = {
    "replace": ("files replaced (write temp + rename) while being moved", "new_versions_lost", "new versions lost"),
    "crash-edit": ("sources edited between a kill -9 and the recovery", "new_versions_lost", "new versions lost"),
    "overlap": ("parent and child folders scanned at once", "both_exit_0", "runs where both went on"),
    "journal": ("damaged journals (scan, restore --dry-run, restore)", "tracebacks", "tracebacks"),
    "apply": ("kill -9 during `imgclean apply` of a saved report, then the same apply again", "rerun_failed",
              "reruns failed"),
}


def run_companion(kind: str, quick: bool) -> dict:
    """Run benchmarks/<companion> and keep the JSON document it prints last, with its exit code."""
    script = Path(__file__).resolve().parent / COMPANIONS[kind]
    if not script.exists():
        return {"skipped": f"{script.name} is not in this checkout", "exit": None}
    proc = subprocess.run([sys.executable, os.fspath(script), *(["--quick"] if quick else [])],
                          capture_output=True, text=True, env=ENV)
    out = proc.stdout
    start = max((i for i in range(len(out)) if out.startswith("{", i) and (i == 0 or out[i - 1] == "\n")), default=None)
    try:
        result = json.loads(out[start:]) if start is not None else {}
    except ValueError:
        result = {"unparsed_output_tail": out[-2000:]}
    result.pop("examples", None)
    result.pop("traceback_samples", None)
    return {"exit": proc.returncode, "stderr_tail": proc.stderr[-1000:] if proc.returncode else "", **result}


def companion_lines(figures: dict) -> list[str]:
    """One table row per companion script: its exit code and its own targets (all 0 on success)."""
    lines = []
    for kind, script in COMPANIONS.items():
        part = figures.get(kind)
        if part is None:
            continue
        if part.get("skipped"):
            lines.append(f"| {script} | skipped: {part['skipped']} | |")
            continue
        lines.append(f"| {script}: exit code (0 = every target met; its figures in reliability.json) | {part['exit']} | 0 |")
    return ["", "| companion script | value | target |", "| --- | ---: | ---: |", *lines] if lines else []


def figures_block(figures: dict) -> list[str]:
    lines = [f"Measured by `{figures['command']}` on {figures['date']} ({figures['seconds']:.0f} s, "
             f"{figures['cpus']} CPU cores shared with other jobs). Raw numbers: `reliability.json`.", ""]
    lines += ["| figure | value | target |", "| --- | ---: | ---: |"]
    k = figures.get("kill9")
    if k:
        lines += [
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
        ]
    if figures.get("dry_run"):
        lines.append(f"| dry-run side effects ({figures['dry_run']['runs']} dry runs) | {figures['dry_run']['side_effects']} | 0 |")
    if figures.get("payloads"):
        lines.append(f"| malicious payloads executed ({figures['payloads']['payloads_tried']} tried) | {figures['payloads']['payloads_executed']} | 0 |")
    lines.append(f"| uncaught exceptions (tracebacks in {figures['uncaught']['processes']} runs) | {figures['uncaught']['tracebacks']} | 0 |")
    d = figures.get("disk_full")
    if d and "skipped" in d:
        lines.append(f"| disk full on a small tmpfs | skipped: {d['skipped']} | |")
    elif d:
        lines.append(
            f"| disk full on a small tmpfs ({d['runs']} runs, {d['move_errors']} moves refused) | lost {d['lost']}, "
            f"partial {d['partial_final']}, temp left {d['tmp_left']}, sources changed {d['source_changed']} | 0 |"
        )
    if k:
        rs, ms = k["runs_by_strategy"], k["mid_move_by_strategy"]
        lines += ["", f"Kill timing, always counted from the child's first journaled `started` record: half the runs "
                  f"({rs['uniform']}) wait uniform in [0, {k['max_delay_s']:.3f}] s (0.9 x the moving time of an "
                  f"uninterrupted run, {k['moving_time_s']:.3f} s; {ms['uniform']} of them landed mid-move); the other "
                  f"half ({rs['kth-move']}) wait for the k-th `started` record (k random) and kill 0-2 ms later "
                  f"({ms['kth-move']} landed mid-move). A kill is mid-move when the journal holds a move that was "
                  f"started and not finished. {k['files']} files per run, {k['rejected_per_run']} of them moved by "
                  f"a complete run; {k['other_fs_runs']} runs quarantined to /dev/shm (another filesystem)."]
    new = [kind for kind in NEW_KINDS if figures.get(kind)]
    if new:
        lines += ["", "### Races, crashes with edits, overlapping runs, damaged journals (issue 10)", "",
                  "| kind of fault | runs | lost | duplicated | touched outside | specific | target |",
                  "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
        for kind in new:
            f = figures[kind]
            title, key, label = NEW_KIND_ROWS[kind]
            lines.append(f"| {title} | {f['runs']} | {f['lost']} | {f['duplicated']} | {f['touched_outside']} | "
                         f"{label}: {f.get(key, 0)} | 0 |")
        notes = []
        if figures.get("replace"):
            f = figures["replace"]
            notes.append(f"replace: {f['new_versions']} new versions written by a watcher that replaces each source "
                         f"as soon as its `started` record is journaled.")
        if figures.get("crash-edit"):
            f = figures["crash-edit"]
            notes.append(f"crash-edit: kill -9 through the fault hook at the k-th `capture` step (copy complete, source still at its name) ({f['killed']} of "
                         f"{f['runs']} killed there), {f['edited']} sources edited before the rerun, "
                         f"{f['edited_with_complete_copy']} of them with a complete copy in the quarantine.")
        if figures.get("overlap"):
            f = figures["overlap"]
            notes.append(f"overlap: {f['refused']} scans refused with the lock exit code, {f['both_exit_0']} runs where "
                         f"both exited 0, {f['in_both_quarantines']} files in both quarantines, "
                         f"{f['in_folder_and_quarantine']} files both in the folder and a quarantine.")
        if figures.get("journal"):
            f = figures["journal"]
            notes.append(f"journal: cases {', '.join(JOURNAL_CASES)}; {f['left_in_quarantine']} originals still in the "
                         f"quarantine after `restore`.")
        if figures.get("apply"):
            f = figures["apply"]
            notes.append(f"apply: `scan --report` then `apply REPORT --move-to Q` killed 0-2 ms after its k-th journaled "
                         f"move ({f['killed']} of {f['runs']} killed, {f['mid_move']} mid-move), then the same apply "
                         f"again; {f['not_quarantined']} rejected files not in the quarantine afterwards, "
                         f"{f['partial_final']} partial files, {f['tmp_left']} temporary files and "
                         f"{f['unfinished_left']} unfinished journal records left.")
        lines += [""] + [f"- {n}" for n in notes]
    lines += companion_lines(figures)
    tests = figures.get("tests") or {}
    if "categories" in tests:
        lines += ["", "#### Cases tried and passed per category (pytest)", "", "| category | tried | passed | failed | skipped |", "| --- | ---: | ---: | ---: | ---: |"]
        for cat, c in sorted(tests["categories"].items()):
            lines.append(f"| {cat} | {c['tried']} | {c['passed']} | {c['failed']} | {c['skipped']} |")
        lines.append("")
        for cat, c in sorted(tests["categories"].items()):
            for reason in c.get("skip_reasons", []):
                lines.append(f"- skipped ({cat}) {reason}")
    return lines


def write_docs(figures: dict, out: Path) -> None:
    """reliability.json in full; in reliability.md only the block between the markers. A campaign
    with --engine ray writes reliability-ray.json only (docs/scale.md quotes it)."""
    out.mkdir(parents=True, exist_ok=True)
    if SCAN_ENGINE:
        (out / "reliability-ray.json").write_text(json.dumps(figures, indent=2) + "\n")
        return
    (out / "reliability.json").write_text(json.dumps(figures, indent=2) + "\n")
    block = "\n".join([FIGURES_BEGIN, *figures_block(figures), FIGURES_END])
    md = out / "reliability.md"
    text = md.read_text() if md.exists() else "# Reliability\n\n"
    if FIGURES_BEGIN in text and FIGURES_END in text:
        head, rest = text.split(FIGURES_BEGIN, 1)
        text = head + block + rest.split(FIGURES_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Figures\n\n" + block + "\n"
    md.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=100, help="kill -9 runs")
    ap.add_argument("--files", type=int, default=60, help="files in the scanned folder")
    ap.add_argument("--dry-runs", type=int, default=10)
    ap.add_argument("--replace-runs", type=int, default=20, help="runs with files replaced during moves")
    ap.add_argument("--crash-edit-runs", type=int, default=20, help="kill -9 runs with sources edited before recovery")
    ap.add_argument("--overlap-runs", type=int, default=20, help="runs with parent and child scanned at once")
    ap.add_argument("--apply-runs", type=int, default=20, help="kill -9 runs during `imgclean apply`")
    ap.add_argument("--journal-rounds", type=int, default=2, help="rounds of every damaged-journal case")
    ap.add_argument("--quick", action="store_true", help="a few runs of each kind (minutes), no pytest counts")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated parts to run, of {','.join(KINDS)}")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new run after this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--junit", type=Path, help="reuse this pytest JUnit XML for the per-category counts")
    ap.add_argument("--skip-pytest", action="store_true", help="no per-category counts")
    ap.add_argument("--rerun-subprocess", action="store_true", help="rerun each killed scan as a subprocess too (slower)")
    ap.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="scan with this engine; ray: each scan starts a local Ray with --ray-workers 2, reruns "
                         "run as subprocesses, --kinds defaults to kill9, figures go to reliability-ray.json")
    args = ap.parse_args()
    if args.engine == "ray":
        SCAN_ENGINE.extend(["--engine", "ray", "--ray-workers", "2"])
        args.rerun_subprocess = True
        if "--kinds" not in sys.argv:
            args.kinds = "kill9"
        ENV.update(RAY_USAGE_STATS_ENABLED="0")
        ENV.pop("RAY_ADDRESS", None)
    kinds = {k.strip() for k in args.kinds.split(",") if k.strip()}
    if kinds - set(KINDS):
        ap.error(f"unknown --kinds {sorted(kinds - set(KINDS))}; choose from {','.join(KINDS)}")
    if args.quick:
        args.runs, args.dry_runs = min(args.runs, 4), min(args.dry_runs, 2)
        args.replace_runs, args.crash_edit_runs = min(args.replace_runs, 4), min(args.crash_edit_runs, 4)
        args.overlap_runs, args.journal_rounds = min(args.overlap_runs, 4), 1
        args.apply_runs = min(args.apply_runs, 4)
        args.skip_pytest = args.skip_pytest or args.junit is None
        args.max_minutes = args.max_minutes or 30

    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    deadline = started + 60 * args.max_minutes if args.max_minutes else float("inf")

    def runs_of(n: int, name: str):
        for i in range(n):
            if time.monotonic() > deadline:
                print(f"{name}: time budget spent after {i} of {n} runs", flush=True)
                return
            yield i

    rng = random.Random(args.seed)
    counter = Counter()
    work = Path(os.path.realpath(tempfile.mkdtemp(prefix="imgclean-campaign-")))
    shm = Path("/dev/shm")
    other_fs = shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(work).st_dev
    if not other_fs:
        print("note: /dev/shm is not another writable filesystem here; all moves stay on one filesystem")
    figures: dict = {}
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

        if "kill9" in kinds:
            moving = measure_moving_time(pristine, model, work, work, counter)
            max_delay = 0.9 * moving
            print(f"{args.files} files, {rejected} rejected per complete run; moving takes {moving:.3f} s; "
                  f"kill delay uniform in [0, {max_delay:.3f}] s")
            runs = []
            for i in runs_of(args.runs, "kill -9"):
                parent = shm if other_fs and i % 2 else work
                strategy = "kth-move" if (i // 2) % 2 else "uniform"
                r = kill_run(i, pristine, originals, model, work, parent, max_delay, rejected, strategy, rng, counter,
                             args.rerun_subprocess)
                runs.append(r)
                bad = r["lost"] or r["duplicates"] or r["partial_final"] or r["wreck_partial_final"] or r["tmp_left"] or r["unfinished_left"] or r["rerun_exit"] != 0
                if bad or (i + 1) % 10 == 0:
                    print(f"run {i + 1}/{args.runs}: {'PROBLEM ' if bad else ''}{r}", flush=True)
            figures["kill9"] = {
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
        if "replace" in kinds:
            print("files replaced during moves ...", flush=True)
            runs = [replace_run(i, pristine, model, work, shm if other_fs and i % 2 else work, counter)
                    for i in runs_of(args.replace_runs, "replace")]
            figures["replace"] = summarise("replace", runs, ("new_versions", "new_versions_lost"))
        if "crash-edit" in kinds:
            print("sources edited between a kill -9 and the recovery ...", flush=True)
            runs = [crash_edit_run(i, pristine, model, work, shm if other_fs and i % 2 else work, rejected, rng, counter)
                    for i in runs_of(args.crash_edit_runs, "crash-edit")]
            figures["crash-edit"] = summarise("crash-edit", runs, ("killed", "edited", "edited_with_complete_copy", "new_versions_lost"))
        if "overlap" in kinds:
            print("overlapping concurrent scans ...", flush=True)
            runs = [overlap_run(i, pristine, model, work, shm if other_fs else None, rng, counter)
                    for i in runs_of(args.overlap_runs, "overlap")]
            figures["overlap"] = summarise("overlap", runs, ("refused", "both_exit_0", "in_both_quarantines", "in_folder_and_quarantine"))
        if "apply" in kinds:
            print("kill -9 during apply ...", flush=True)
            runs = [apply_kill_run(i, pristine, model, work, shm if other_fs and i % 2 else work, rejected, rng, counter)
                    for i in runs_of(args.apply_runs, "apply")]
            figures["apply"] = summarise("apply", runs, ("killed", "mid_move", "rerun_failed", "not_quarantined",
                                                         "partial_final", "tmp_left", "unfinished_left"))
        if "journal" in kinds:
            print("damaged journals ...", flush=True)
            cases = [c for _ in range(args.journal_rounds) for c in JOURNAL_CASES]
            runs = [journal_run(i, cases[i], pristine, model, work, counter) for i in runs_of(len(cases), "journal")]
            figures["journal"] = summarise("journal", runs, ("tracebacks", "left_in_quarantine"))
        if "dry" in kinds:
            print("dry runs ...", flush=True)
            figures["dry_run"] = dry_run_campaign(pristine, model, work, args.dry_runs, counter)
        if "payloads" in kinds:
            print("hostile models ...", flush=True)
            incoming = work / "payload_in"
            shutil.copytree(pristine, incoming)
            figures["payloads"] = payload_campaign(train, model, incoming, work, counter)
        if "disk" in kinds:
            print("disk full ...", flush=True)
            figures["disk_full"] = disk_full_campaign(pristine, model, work, originals, counter)
            if "skipped" in figures["disk_full"]:
                print(f"disk full skipped: {figures['disk_full']['skipped']}")
        for kind in (k for k in COMPANIONS if k in kinds):
            print(f"{kind}: benchmarks/{COMPANIONS[kind]} ...", flush=True)
            figures[kind] = run_companion(kind, args.quick)
        if "pytest" in kinds:
            print("pytest cases ...", flush=True)
            figures["tests"] = pytest_counts(args.junit, args.skip_pytest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for p in shm.glob(f"imgclean-campaign-{os.getpid()}-*"):
            shutil.rmtree(p, ignore_errors=True)

    figures = {
        "command": "python benchmarks/fault_campaign.py " + " ".join(sys.argv[1:]),
        "engine": args.engine,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "cpus": os.cpu_count(),
        "cross_filesystem": bool(other_fs),
        **figures,
        "uncaught": {"tracebacks": counter.tracebacks, "processes": counter.processes, "samples": counter.samples},
    }
    write_docs(figures, args.out)
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "per_run"} if isinstance(v, dict) else v)
                      for k, v in figures.items()}, indent=2))
    print("\n".join(figures_block(figures)))
    k = figures.get("kill9", {})
    failed = (k.get("lost") or k.get("duplicates") or k.get("partial_final") or k.get("wreck_partial_final")
              or figures.get("dry_run", {}).get("side_effects") or figures.get("payloads", {}).get("payloads_executed")
              or counter.tracebacks
              or any(figures[kind][key] for kind in NEW_KINDS if kind in figures
                     for key in ("lost", "duplicated", "touched_outside"))
              or any(figures.get("apply", {}).get(key) for key in ("rerun_failed", "not_quarantined", "partial_final",
                                                                    "tmp_left", "unfinished_left"))
              or figures.get("overlap", {}).get("both_exit_0")
              or any(figures.get(kind, {}).get("exit") for kind in COMPANIONS))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
