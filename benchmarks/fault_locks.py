"""Lock campaign (issue 23): kill -9 followed by an immediate rerun, and a second local user
attacking the lock state. Run on its own (root is needed for the second user):

    python benchmarks/fault_locks.py               # --runs 20 of each part
    python benchmarks/fault_locks.py --quick       # a few of each (minutes)

* kill9-rerun: `--runs` times, a fresh copy of a folder is scanned with `scan --move-to Q` and
  decode processes (IMGCLEAN_DECODE=processes, --workers 2), killed with SIGKILL 0-2 ms after its
  k-th journaled move (k random) while its decode processes run, and rerun at once as a real
  process. Counts reruns refused (exit 4) or failed (not 0), the folder or quarantine still locked
  right after the kill, files lost or duplicated after the rerun, unfinished journal records, the
  killed run's decode processes still alive after the rerun and its shared-memory blocks left.
* attack: one round of each planting scenario and `--runs` rounds of overlapping runs, each with
  a second local user (nobody, through setpriv) against root's real `scan --move-to` runs on a
  folder anyone may write. Planting: lock files held (deep JSON and escape codes in them),
  symlinks, FIFOs and folders at a lock file's name, below the scanned folder and at it; a
  registry folder of earlier versions with a held deep-JSON entry (IMGCLEAN_LOCK_REGISTRY names
  it, in every round); links in a shared quarantine. Overlapping: a run's lock file replaced while
  it runs, then the overlapping run started (both orders); parent and child runs started together
  (random order and skew) while the attacker now and then replaces one of their lock files and
  empties the registry. Counts overlapping pairs that both exited 0, files lost, duplicated or in
  both quarantines, entries touched outside the given folders (a victim folder of root's files,
  the attacker's registry folder), and tracebacks.

Prints its figures as JSON (the per-run rows with --verbose); exits 1 when a target (0) is missed.
Reuses benchmarks/fault_campaign.py's helpers and tests/locks_attacker.py.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fault_campaign as fc  # noqa: E402  (its helpers: data, census, snapshots, the CLI, tracebacks)

sys.path.insert(0, str(fc.REPO / "tests"))
from locks_attacker import DEEP_JSON, Attacker, cannot_attack, shared_workdir  # noqa: E402

from imgclean.quarantine.locking import LockHeld, ScanLock  # noqa: E402

ENV = {**fc.ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LOCK = ".imgclean.lock"
SHM_PREFIX = "imgclean-"
# A scan whose moves wait 20 ms at each link, and wait while IMGCLEAN_TEST_HOLD names a file.
SLOW_CLI = r"""
import os, sys, time
import imgclean.quarantine.moves as m
hold = os.environ.get("IMGCLEAN_TEST_HOLD")
def hook(step):
    if step == "link":
        time.sleep(0.02)
        deadline = time.monotonic() + 120
        while hold and os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.01)
if hasattr(m, "_fault_hook"):  # imgclean before issue 26
    m._fault_hook = hook
else:
    m.fileops.fault_hook = hook
from imgclean.cli import app
app(sys.argv[1:], prog_name="imgclean")
"""


def scan_cmd(folder: Path, model: Path, quarantine: Path, slow: bool = False) -> list[str]:
    head = [sys.executable, "-c", SLOW_CLI] if slow else [sys.executable, "-m", "imgclean"]
    return [*head, "scan", os.fspath(folder), "-m", os.fspath(model), "--move-to", os.fspath(quarantine),
            "--json", "-q", "--batch-size", "8"]


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def still_locked(*folders_and_kinds: tuple[Path, str]) -> bool:
    try:
        for folder, kind in folders_and_kinds:
            if folder.is_dir():
                with ScanLock(folder, kind=kind):
                    pass
    except LockHeld:
        return True
    return False


def exactly_once(originals: set[str], *roots: Path) -> tuple[int, int]:
    found = fc.census(*roots)
    return sum(found.get(d, 0) == 0 for d in originals), sum(found.get(d, 0) > 1 for d in originals)


# ----------------------------------------------------------------------------- (a) kill -9, rerun
def kill_rerun(i: int, pristine: Path, model: Path, work: Path, rejected: int, rng: random.Random,
               counter: fc.Counter) -> dict:
    folder, quarantine = work / f"kill{i:03d}_in", work / f"kill{i:03d}_q"
    shutil.copytree(pristine, folder)
    originals = {fc.sha(p) for p in fc.user_files(folder)}
    env = {**ENV, "IMGCLEAN_DECODE": "processes"}
    k = rng.randint(1, max(1, rejected - 1))
    log = work / f"kill{i:03d}.log"
    with open(log, "wb") as out:  # a file, not a pipe: reading a pipe to its end waits for the workers
        proc = subprocess.Popen([*scan_cmd(folder, model, quarantine), "--workers", "2"], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    workers: list[int] = []
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        workers = children(proc.pid) or workers
        try:
            started = (quarantine / fc.MANIFEST).read_bytes().count(b'"state": "started"')
        except FileNotFoundError:
            started = 0
        if started >= k and workers:
            time.sleep(rng.uniform(0, 0.002))
            break
        time.sleep(0.0005)
    proc.kill()
    proc.wait()
    locked = still_locked((folder, "scan"), (quarantine, "quarantine"))
    killed_mid = fc.unfinished_ops(quarantine) > 0
    rerun = subprocess.run([*scan_cmd(folder, model, quarantine), "--workers", "2"], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=900)
    counter.check(log.read_bytes(), rerun.stdout, rerun.stderr, label=f"kill9-rerun {i}")
    lost, duplicated = exactly_once(originals, folder, quarantine)
    row = {
        "run": i, "k": k, "killed": proc.returncode == -signal.SIGKILL, "workers": len(workers),
        "mid_move": killed_mid, "locked_after_kill": locked, "rerun_exit": rerun.returncode,
        "lost": lost, "duplicated": duplicated, "unfinished_left": fc.unfinished_ops(quarantine),
        "tmp_left": fc.tmp_leftovers(quarantine),
        "workers_alive_after_rerun": sum(alive(p) for p in workers),
        "shm_blocks_left": sum(n.startswith(f"{SHM_PREFIX}{proc.pid}-") for n in os.listdir("/dev/shm"))
        if os.path.isdir("/dev/shm") else 0,
    }
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(quarantine, ignore_errors=True)
    return row


# ----------------------------------------------------------------------------- (b) a second user
SINGLES = ("held-below", "symlink-below", "fifo-below", "folder-below", "symlink-root", "fifo-root", "held-root",
           "registry", "quarantine-links")  # one run of root's against a planted state
PAIRS = ("replace-child-first", "replace-parent-first", "race")  # a parent and a child run overlapping
SCENARIOS = SINGLES + PAIRS


class Round:
    """One attack round's shared folder: P (anyone may write P, P/C, P/sub), root's victim folder,
    and a sticky tmp/ where the attacker keeps its registry folder."""

    def __init__(self, pristine: Path):
        self.work = shared_workdir("imgclean-lockattack-")
        self.p = self.work / "P"
        shutil.copytree(pristine, self.p / "C")  # the images, below P/C: both runs have work there
        for n, folder in enumerate((self.p, self.p / "sub", self.p / "sub" / "x")):
            folder.mkdir(exist_ok=True)
            for j in range(3):  # unique undecodable files: always rejected
                (folder / f"junk{n}{j}.png").write_bytes(b"JUNK" + os.urandom(64 + n * 3 + j))
        for folder in (self.p, self.p / "C", self.p / "sub", self.p / "sub" / "x"):
            folder.chmod(0o777)
        self.victim = self.work / "victim"
        self.victim.mkdir()
        for name in ("keep.txt", "entry.json", ".tmp-entry"):
            (self.victim / name).write_text(f"root's {name}\n")
        self.sticky = self.work / "tmp"
        self.sticky.mkdir()
        self.sticky.chmod(0o1777)
        self.registry = self.sticky / "imgclean-locks"
        self.originals = {fc.sha(p) for p in fc.user_files(self.p)}
        self.victim_before = fc.snapshot(self.victim)

    def quarantines(self) -> list[Path]:
        return [self.work / n for n in ("Q1", "Q2", "Q")]

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def run_cli(cmd: list[str], env: dict, counter: fc.Counter, label: str, timeout: float = 900) -> int:
    done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    counter.check(done.stdout, done.stderr, label=label)
    return done.returncode


def one_run_scenario(name: str, r: Round, a: Attacker, model: Path, env: dict, counter: fc.Counter) -> list[int]:
    """A planting scenario: the attacker plants, then root scans P."""
    where, what = name.rsplit("-", 1)[1], name.rsplit("-", 1)[0]
    lock = (r.p / "sub" / LOCK) if where == "below" else (r.p / LOCK)
    if what == "held":
        a.must("plant", path=lock, content=DEEP_JSON + "\x1b[2J\nkind scan\n", hold=True)
    elif what == "symlink":
        a.must("symlink", path=lock, target=r.victim / "keep.txt")
    elif what == "fifo":
        a.must("fifo", path=lock)
    else:
        a.must("mkdir", path=lock)
    return [run_cli(scan_cmd(r.p, model, r.work / "Q1"), env, counter, name)]


def replace_scenario(first: str, r: Round, a: Attacker, model: Path, env: dict, counter: fc.Counter) -> list[int]:
    """The first run's lock file is replaced while its first move waits; the other run then goes
    through whole; then the first goes on (it must stop)."""
    jobs = {"parent": (r.p, r.work / "Q1"), "child": (r.p / "C", r.work / "Q2")}
    second = "parent" if first == "child" else "child"
    hold = r.work / "hold"
    hold.touch()
    procs = {}
    try:
        procs[first] = subprocess.Popen(scan_cmd(jobs[first][0], model, jobs[first][1], slow=True),
                                        env={**env, "IMGCLEAN_TEST_HOLD": os.fspath(hold)},
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if fc.watch_for_first_move(jobs[first][1], procs[first], timeout=300) is not None:
            a.must("replace", path=jobs[first][0] / LOCK)
            a.do("clear", path=r.registry)
            procs[second] = subprocess.Popen(scan_cmd(jobs[second][0], model, jobs[second][1]), env=env,
                                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs[second].wait(900)
    finally:
        hold.unlink()
        for label, proc in procs.items():
            out, err = proc.communicate(timeout=900)
            counter.check(out, err, label=f"replace {first} first: {label}")
    return [procs[n].returncode for n in ("parent", "child") if n in procs]


def race_scenario(r: Round, a: Attacker, model: Path, env: dict, rng: random.Random, counter: fc.Counter) -> list[int]:
    """Parent and child started together (random skew) while the attacker keeps replacing both
    lock files and emptying the registry folder."""
    stop = threading.Event()
    pauses = [rng.uniform(0.05, 2.0) for _ in range(64)]
    targets = [rng.choice((r.p / LOCK, r.p / "C" / LOCK)) for _ in range(64)]

    def churn() -> None:  # now and then, one of the two lock files replaced, the registry emptied
        for pause, lock in zip(pauses, targets):
            if stop.wait(pause):
                return
            a.do("replace", path=lock)
            a.do("clear", path=r.registry)

    jobs = [(r.p, r.work / "Q1"), (r.p / "C", r.work / "Q2")]
    if rng.random() < 0.5:
        jobs.reverse()
    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    procs = []
    try:
        for folder, quarantine in jobs:
            procs.append(subprocess.Popen(scan_cmd(folder, model, quarantine, slow=True), env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            time.sleep(rng.uniform(0, 0.3))
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        stop.set()
        thread.join(60)
    for (out, err), (folder, _) in zip(outs, jobs):
        counter.check(out, err, label=f"race {folder.name}")
    by_folder = {folder: p.returncode for p, (folder, _) in zip(procs, jobs)}
    return [by_folder[r.p], by_folder[r.p / "C"]]


def attack_round(i: int, name: str, pristine: Path, model: Path, rng: random.Random, counter: fc.Counter) -> dict:
    r = Round(pristine)
    env = {**ENV, "IMGCLEAN_LOCK_REGISTRY": os.fspath(r.registry)}
    try:
        with Attacker() as a:
            a.must("mkdir", path=r.registry, mode=0o1777)
            a.must("plant", path=r.registry / "1-planted.json", content=DEEP_JSON, hold=True)
            a.must("plant", path=r.registry / "2-stale.json", content="{}")
            registry_before = fc.snapshot(r.registry)
            if name == "quarantine-links":
                q = r.work / "Q"
                q.mkdir()
                q.chmod(0o777)
                a.must("symlink", path=q / "sub", target=r.victim)
                codes = [run_cli(scan_cmd(r.p, model, q), env, counter, name)]
            elif name == "registry":
                codes = [run_cli(scan_cmd(r.p, model, r.work / "Q1"), env, counter, name)]
            elif name.startswith("replace-"):
                codes = replace_scenario(name.split("-")[1], r, a, model, env, counter)
            elif name == "race":
                codes = race_scenario(r, a, model, env, rng, counter)
            else:
                codes = one_run_scenario(name, r, a, model, env, counter)
            registry_after = fc.snapshot(r.registry) if name not in ("race",) and not name.startswith("replace-") else None
        lost, duplicated = exactly_once(r.originals, r.p, *r.quarantines())
        q1, q2 = fc.census(r.work / "Q1"), fc.census(r.work / "Q2")
        return {
            "round": i, "scenario": name, "exits": codes,
            "refused": sum(c == fc.EXIT_LOCKED for c in codes),
            "both_exit_0": len(codes) == 2 and all(c == 0 for c in codes),
            "lost": lost, "duplicated": duplicated,
            "in_both_quarantines": sum(1 for d in r.originals if q1.get(d) and q2.get(d)),
            "touched_outside": fc.snapshot_diff(r.victim_before, fc.snapshot(r.victim))
            + (fc.snapshot_diff(registry_before, registry_after) if registry_after is not None else 0),
        }
    finally:
        r.close()


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="kill -9 runs, and rounds of overlapping runs under attack")
    ap.add_argument("--files", type=int, default=90, help="files in the scanned folder")
    ap.add_argument("--quick", action="store_true", help="3 kill -9 runs and one round of each attack scenario")
    ap.add_argument("--parts", default="kill9-rerun,attack")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print every run's row")
    args = ap.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    kill_runs = 3 if args.quick else args.runs
    # every single scenario once, then the overlapping pairs in turn
    plan = [*SINGLES, *[PAIRS[i % len(PAIRS)] for i in range(len(PAIRS) if args.quick else args.runs)]]
    rng = random.Random(args.seed)
    counter = fc.Counter()
    started = time.monotonic()
    work = Path(os.path.realpath(tempfile.mkdtemp(prefix="imgclean-lockcampaign-")))
    work.chmod(0o755)  # the attacker reads the model and the pristine files through it
    figures: dict = {"command": "python benchmarks/fault_locks.py " + " ".join(sys.argv[1:])}
    try:
        train, model, pristine = work / "train", work / "model", work / "pristine"
        fc.make_train(train)
        fit = fc.cli("fit", train, "-o", model, "--epochs", "1", "--json", "-q")
        counter.check(fit.stdout, fit.stderr, label="fit")
        if fit.returncode != 0:
            raise SystemExit(f"fit failed: {fit.stderr.decode(errors='replace')}")
        fc.make_incoming(pristine, args.files)
        first = fc.cli("scan", pristine, "-m", model, "--json")
        rejected = json.loads(first.stdout)["rejected"]
        if "kill9-rerun" in parts:
            rows = []
            for i in range(kill_runs):
                rows.append(kill_rerun(i, pristine, model, work, rejected, rng, counter))
                if args.verbose:
                    print(json.dumps(rows[-1]), flush=True)
            figures["kill9_rerun"] = {
                "runs": len(rows), "files": args.files, "rejected_per_run": rejected,
                "killed": sum(r["killed"] for r in rows), "killed_mid_move": sum(r["mid_move"] for r in rows),
                "with_decode_processes": sum(r["workers"] > 0 for r in rows),
                **{key: sum(r[key] for r in rows) for key in (
                    "locked_after_kill", "lost", "duplicated", "unfinished_left", "tmp_left",
                    "workers_alive_after_rerun", "shm_blocks_left")},
                "reruns_refused": sum(r["rerun_exit"] == fc.EXIT_LOCKED for r in rows),
                "reruns_failed": sum(r["rerun_exit"] != 0 for r in rows),
            }
        if "attack" in parts:
            reason = cannot_attack()
            if reason:
                figures["attack"] = {"skipped": reason}
            else:
                rows = []
                for i, name in enumerate(plan):
                    rows.append(attack_round(i, name, pristine, model, rng, counter))
                    if args.verbose:
                        print(json.dumps(rows[-1]), flush=True)
                pairs = [r for r in rows if len(r["exits"]) == 2]
                figures["attack"] = {
                    "rounds": len(rows), "scenarios": sorted({r["scenario"] for r in rows}),
                    "runs": sum(len(r["exits"]) for r in rows),
                    "runs_refused_exit_4": sum(r["refused"] for r in rows),
                    "overlapping_pairs": len(pairs),
                    "overlapping_pairs_both_exit_0": sum(r["both_exit_0"] for r in pairs),
                    **{key: sum(r[key] for r in rows) for key in (
                        "lost", "duplicated", "in_both_quarantines", "touched_outside")},
                    "exits_by_scenario": {s: sorted({" ".join(map(str, r["exits"])) for r in rows if r["scenario"] == s})
                                          for s in SCENARIOS},  # "parent child" for the pairs
                }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["tracebacks"] = counter.tracebacks
    figures["processes"] = counter.processes
    figures["traceback_samples"] = counter.samples[:3]
    figures["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(figures, indent=2))
    k, at = figures.get("kill9_rerun", {}), figures.get("attack", {})
    missed = (counter.tracebacks
              or any(k.get(key) for key in ("locked_after_kill", "lost", "duplicated", "unfinished_left", "tmp_left",
                                            "reruns_failed", "workers_alive_after_rerun", "shm_blocks_left"))
              or any(at.get(key) for key in ("overlapping_pairs_both_exit_0", "lost", "duplicated",
                                             "in_both_quarantines", "touched_outside")))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
