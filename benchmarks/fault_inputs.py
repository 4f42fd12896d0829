"""A fuzzer over every structured input imgclean reads, through the real CLI.

    python benchmarks/fault_inputs.py                 # --runs 12 inputs per kind and mutation
    python benchmarks/fault_inputs.py --quick         # 2 per kind and mutation, a few minutes
    python benchmarks/fault_inputs.py --kinds report-jsonl,journal --runs 50 --subprocess

Input kinds (KINDS; a new one, e.g. decision records, is one InputKind subclass and one entry):
scan reports (.jsonl, .csv; `apply`, `apply --dry-run`, `report`), audit reports (.jsonl, .csv;
`report`, and reports.audit_records.read_audit), a quarantine's journal (`restore --dry-run`,
`report`, a `scan --move-to` into the quarantine, `restore`), a model's config.json and its
weights.safetensors header (`info`, `scan --move-to`), and a settings file (`scan --config`).

Mutations (MUTATIONS), each applied to a valid file of the kind made afresh for every run: a
depth bomb, a field of 9 MiB, a line of 10 MiB, a NUL byte, a byte that is not UTF-8, the file
cut at a random byte, a field given a value of the wrong type, and 1-8 random byte edits. A
mutation says whether its result is bad by construction (a depth bomb always is; a random edit
may leave a sound file).

Counted (targets all 0; `unchanged`, the valid file itself, is the control):
- tracebacks: a command that ended in an exception other than its exit (in-process), printed a
  traceback, or exited with a code imgclean does not document (a crash, a kill);
- touched_when_bad: a bad-by-construction input after which the scanned folder changed;
- moved_on_refusal: a command that refused (usage error, a refused report, a model that does not
  load) and yet changed the folder;
- dry_run_changes: `apply --dry-run` or `restore --dry-run` changed anything;
- lost: after all commands of a run, the contents of the folder and the quarantine together
  are not the same multiset as before (a file lost or duplicated);
- sound_refused: a command given the unchanged valid file refused it or failed (the harness
  itself is wrong then, and every other figure with it).

Commands run in this process through typer's CliRunner (the CLI's own code and error handling;
fast), or each in a fresh `python -m imgclean` with --subprocess. Prints JSON; exits 1 when a
target figure is not 0. One script on purpose (run as is), so longer than ~400 lines.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from synthetic import CLASSES, class_image, ood_image  # noqa: E402  (the test suite's tiny images)

DOCUMENTED_EXITS = {0, 1, 2, 3, 4, 5, 130, 143}
MiB = 1 << 20


# ----------------------------------------------------------------------------- running commands
@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    crashed: str = ""  # why this counts as a traceback ('' if it does not)

    def json(self) -> dict | None:
        try:
            value = json.loads(self.stdout)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


class Runner:
    """Runs `imgclean ARGS` in this process (CliRunner) or in a fresh process."""

    def __init__(self, subprocess_mode: bool, timeout: float):
        self.subprocess_mode, self.timeout = subprocess_mode, timeout
        if not subprocess_mode:
            from typer.testing import CliRunner

            from imgclean.cli import app

            self._runner, self._app = CliRunner(), app

    def __call__(self, *args) -> Outcome:
        argv = [os.fsdecode(a) if isinstance(a, os.PathLike) else str(a) for a in args]
        if self.subprocess_mode:
            env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
            try:
                proc = subprocess.run([sys.executable, "-m", "imgclean", *argv], capture_output=True, env=env,
                                      timeout=self.timeout)
            except subprocess.TimeoutExpired:
                return Outcome(-1, "", "", crashed=f"hung for {self.timeout} s")
            out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
            crashed = "Traceback" if "Traceback (most recent call last)" in err else ""
            if proc.returncode not in DOCUMENTED_EXITS:
                crashed = crashed or f"exit {proc.returncode}"
            return Outcome(proc.returncode, out, err, crashed)
        result = self._runner.invoke(self._app, argv)
        crashed = ""
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            crashed = f"{type(result.exception).__name__}: {str(result.exception)[:200]}"
        elif "Traceback (most recent call last)" in result.output:
            crashed = "Traceback"
        return Outcome(result.exit_code, result.stdout, result.stderr if result.stderr_bytes is not None else "", crashed)


# ----------------------------------------------------------------------------- files
def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L").save(path)


def contents(*folders: Path) -> Counter:
    """The multiset of (name, sha256) of every file below the folders, imgclean's own files left out."""
    out: Counter = Counter()
    for folder in folders:
        if not folder.is_dir():
            continue
        for dirpath, _, names in os.walk(folder):
            for name in names:
                if name.startswith(".imgclean") or name == "imgclean-manifest.jsonl":
                    continue
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    continue
                with open(path, "rb") as fh:
                    out[(name, hashlib.sha256(fh.read()).hexdigest())] += 1
    return out


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file below `folder` by size, mtime and inode; the lock file a moving run leaves in
    the folder it locks (by design, before it loads the model) is not a change."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if name == ".imgclean.lock":
                continue
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


@dataclass
class Workspace:
    """What every run starts from: a tiny model, a folder of images and what a scan said of them."""

    base: Path
    model: Path
    template: Path
    verdicts: dict[str, dict]  # path -> the report row a scan of the template wrote
    settings: bytes  # what `imgclean init-config` writes


def build_workspace(base: Path, run) -> Workspace:
    from imgclean.config import FitConfig, TrainSettings
    from imgclean.pipeline.fit.fit_model import fit_model
    from imgclean.store.artifact import save_model

    rng = np.random.default_rng(0)
    train = base / "train"
    for name in CLASSES:
        for i in range(16):
            save_png(train / name / f"{i:03d}.png", class_image(name, rng))
    bundle, _ = fit_model(train, FitConfig(device="cpu", train=TrainSettings(epochs=3, batch_size=16, min_steps=0)))
    model = save_model(bundle, base / "model")
    template = base / "template"
    for i in range(4):
        save_png(template / f"normal_{i}.png", class_image(CLASSES[i % 3], rng))
        save_png(template / ("sub" if i % 2 else "") / f"odd_{i}.png", ood_image(rng))
    (template / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    report = base / "template.jsonl"
    out = run("scan", template, "-m", model, "--report", report, "-q")
    if out.code not in (0, 3):
        raise SystemExit(f"the template scan failed: {out.stderr}")
    verdicts = {row["path"]: row for row in map(json.loads, report.read_text().splitlines())}
    settings_file = base / "settings.yaml"
    if run("init-config", settings_file).code != 0:
        raise SystemExit("init-config failed")
    return Workspace(base, Path(model), template, verdicts, settings_file.read_bytes())


@dataclass
class Run:
    """One run's copies: its folder, a quarantine path, a model copy, and where its inputs go."""

    dir: Path
    folder: Path
    quarantine: Path
    model: Path

    @classmethod
    def make(cls, ws: Workspace, index: int) -> "Run":
        d = ws.base / f"run-{index:05d}"
        d.mkdir()
        folder = d / "folder"
        shutil.copytree(ws.template, folder)
        model = d / "model"
        shutil.copytree(ws.model, model)
        for path in model.iterdir():
            os.chmod(path, 0o644)
        return cls(d, folder, d / "q", model)

    def records(self, ws: Workspace):
        from imgclean.reports.records import ScanRecord

        for rel, row in sorted(ws.verdicts.items()):
            st = os.lstat(self.folder / rel)
            yield ScanRecord(path=rel, status=row["status"], predicted=row["predicted"], nearest=row["nearest"],
                             score=row["score"], message=row["message"], size=st.st_size, mtime_ns=st.st_mtime_ns,
                             dev=st.st_dev, ino=st.st_ino)


# ----------------------------------------------------------------------------- input kinds
@dataclass
class Command:
    args: tuple
    dry_run: bool = False  # must change nothing, whatever the input


class InputKind:
    """One structured input: `doc` is its syntax (jsonl, csv, json, yaml: which mutations apply
    and how), valid() its bytes for a run, place() writes (mutated) bytes where the commands
    read them, commands() what reads it, refused() whether a command's outcome is a refusal."""

    name = ""
    doc = ""
    bad_when_wrong_type = True  # every field of it is validated, so a wrong type is a bad input

    def valid(self, ws: Workspace, run: Run) -> bytes:
        raise NotImplementedError

    def place(self, run: Run, data: bytes) -> Path:
        raise NotImplementedError

    def commands(self, ws: Workspace, run: Run, path: Path) -> list[Command]:
        raise NotImplementedError

    def refused(self, command: Command, out: Outcome) -> bool:
        summary = out.json()
        return out.code == 2 or (summary is not None and bool(summary.get("refused")))


class ScanReport(InputKind):
    def __init__(self, fmt: str):
        self.name, self.doc, self.fmt = f"report-{fmt}", fmt, fmt

    def valid(self, ws, run):
        from imgclean.reports.records import RecordWriter

        path = run.dir / f"valid.{self.fmt}"
        with RecordWriter(path, os.path.realpath(run.folder)) as writer:
            for record in run.records(ws):
                writer.write(record)
        return path.read_bytes()

    def place(self, run, data):
        path = run.dir / f"report.{self.fmt}"
        path.write_bytes(data)
        return path

    def commands(self, ws, run, path):
        q = run.quarantine
        return [Command(("apply", path, "--move-to", q, "--dry-run", "--json"), dry_run=True),
                Command(("report", path, "-o", run.dir / "page.html", "--root", run.folder)),
                Command(("apply", path, "--move-to", q, "--json", "-q")),
                Command(("apply", path, "--move-to", q, "--root", run.folder, "--json"))]


class AuditReport(InputKind):
    def __init__(self, fmt: str):
        self.name, self.doc, self.fmt = f"audit-{fmt}", fmt, fmt

    def valid(self, ws, run):
        from imgclean.reports.audit_records import AuditRecord, AuditWriter

        path = run.dir / f"valid-audit.{self.fmt}"
        with AuditWriter(path, run.folder) as writer:
            for r in run.records(ws):
                issue = "outlier" if r.status == "ood" else "unreadable" if r.status != "ok" else "ok"
                writer.write(AuditRecord(path=r.path, issue=issue, status=r.status, label=r.predicted, score=r.score,
                                         size=r.size, mtime_ns=r.mtime_ns, dev=r.dev, ino=r.ino))
        return path.read_bytes()

    def place(self, run, data):
        path = run.dir / f"audit.{self.fmt}"
        path.write_bytes(data)
        return path

    def commands(self, ws, run, path):
        # (`imgclean report` refuses any audit report in one line: `audit --html` writes its page)
        return [Command(("read_audit", path))]


class Journal(InputKind):
    name, doc, bad_when_wrong_type = "journal", "jsonl", False

    def valid(self, ws, run):
        from imgclean.quarantine.moves import MoveRequest, Quarantine

        root = Path(os.path.realpath(run.folder))
        with Quarantine(run.quarantine) as q:
            for r in run.records(ws):
                if r.status != "ok":
                    q.move(MoveRequest(root / r.path, root, r.status, r.size, r.mtime_ns,
                                       {"score": r.score}, r.dev, r.ino))
        return (run.quarantine / "imgclean-manifest.jsonl").read_bytes()

    def place(self, run, data):
        path = run.quarantine / "imgclean-manifest.jsonl"
        path.write_bytes(data)
        return path

    def commands(self, ws, run, path):
        q = run.quarantine
        return [Command(("restore", q, "--dry-run", "--json"), dry_run=True),
                Command(("report", q, "-o", run.dir / "page.html")),
                Command(("scan", run.folder, "-m", ws.model, "--move-to", q, "--json", "-q")),
                Command(("restore", q, "--json"))]

    def refused(self, command, out):
        return False  # restore acts on the sound records of a damaged journal: judged by `lost`


class ModelConfig(InputKind):
    name, doc, bad_when_wrong_type = "config-json", "json", False

    def valid(self, ws, run):
        return (run.model / "config.json").read_bytes()

    def place(self, run, data):
        (run.model / "config.json").write_bytes(data)
        return run.model / "config.json"

    def commands(self, ws, run, path):
        return [Command(("info", run.model, "--json")),
                Command(("scan", run.folder, "-m", run.model, "--move-to", run.quarantine, "--json", "-q"))]

    def refused(self, command, out):
        return out.code in (1, 2)  # a model that does not load: nothing moves


class WeightsHeader(ModelConfig):
    """The JSON header of weights.safetensors (the tensor bytes after it are kept)."""

    name, doc = "safetensors-header", "json"

    def valid(self, ws, run):
        raw = (run.model / "weights.safetensors").read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        self._data = raw[8 + n:]
        return raw[8 : 8 + n]

    def place(self, run, data):
        path = run.model / "weights.safetensors"
        path.write_bytes(struct.pack("<Q", len(data)) + data + self._data)
        return path


class SettingsFile(InputKind):
    name, doc, bad_when_wrong_type = "settings-yaml", "yaml", False

    def valid(self, ws, run):
        return ws.settings

    def place(self, run, data):
        path = run.dir / "settings.yaml"
        path.write_bytes(data)
        return path

    def commands(self, ws, run, path):
        return [Command(("scan", run.folder, "-m", ws.model, "--move-to", run.quarantine, "--json", "-q",
                         "--config", path))]

    def refused(self, command, out):
        return out.code == 2


class DecisionRecords(InputKind):
    """A scanned folder's `.imgclean-decisions.jsonl`: an ok file and an ood one accepted."""

    name, doc, bad_when_wrong_type = "decisions", "jsonl", False

    def valid(self, ws, run):
        from imgclean.quarantine.decision_ops import accept

        accept([run.folder / "normal_0.png", run.folder / "odd_0.png"], root=run.folder)
        return (run.folder / ".imgclean-decisions.jsonl").read_bytes()

    def place(self, run, data):
        path = run.folder / ".imgclean-decisions.jsonl"
        path.write_bytes(data)
        return path

    def commands(self, ws, run, path):
        q = run.quarantine
        return [Command(("decisions", run.folder, "--json")),
                Command(("scan", run.folder, "-m", ws.model, "--move-to", q, "--dry-run", "--json", "-q"), dry_run=True),
                Command(("scan", run.folder, "-m", ws.model, "--move-to", q, "--json", "-q"))]

    def refused(self, command, out):
        return command.args[0] == "decisions" and out.code == 1  # damaged records listed, none used


KINDS = {k.name: k for k in (ScanReport("jsonl"), ScanReport("csv"), AuditReport("jsonl"), AuditReport("csv"),
                             Journal(), ModelConfig(), WeightsHeader(), SettingsFile(), DecisionRecords())}


# ----------------------------------------------------------------------------- mutations
def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _insert_line(doc: str, data: bytes, line: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    first = 1 if doc == "csv" else 0  # after a CSV header
    at = rng.randint(first, len(lines))
    return b"".join(lines[:at] + [line + (b"\r\n" if doc == "csv" else b"\n")] + lines[at:])


def depth_bomb(doc, data, rng):
    n = rng.choice((40, 1_000, 30_000))
    bomb = b"[" * n + b"]" * n
    if doc == "json":
        return data.replace(b"{", b'{"fuzz": ' + bomb + b", ", 1), True
    if doc == "yaml":
        return data + b"\nscan:\n  fuzz: " + bomb + b"\n", True
    return _insert_line(doc, data, bomb, rng), True  # a CSV row of one field lacks its status: bad too


def huge_field(doc, data, rng):
    big = b"x" * (9 * MiB if doc in ("jsonl", "csv") else 17 * MiB)
    if doc == "json":
        return data.replace(b"{", b'{"fuzz": "' + big + b'", ', 1), True
    if doc == "yaml":
        return data + b"\nfuzz: " + b"y" * 70_000 + b"\n", True
    line = b'"' + big + b'",ok' if doc == "csv" else b'{"path": "' + big + b'", "status": "ok"}'
    return _insert_line(doc, data, line, rng), True


def huge_line(doc, data, rng):
    if doc in ("json", "yaml"):
        return b" " * (17 * MiB if doc == "json" else 70_000) + data, True
    return _insert_line(doc, data, b"z" * (10 * MiB), rng), True


def nul(doc, data, rng):
    at = rng.randint(0, len(data))
    return data[:at] + b"\x00" + data[at:], True


def not_utf8(doc, data, rng):
    at = rng.randint(0, len(data))
    return data[:at] + b"\xff" + data[at:], doc != "csv"  # a CSV report keeps undecodable names as bytes


def truncated(doc, data, rng):
    cut = data[: rng.randint(1, max(1, len(data) - 1))]
    if doc == "jsonl":
        tail = cut.rsplit(b"\n", 1)[-1]
        return cut, bool(tail.strip()) and not _parses(tail)
    if doc == "json":
        return cut, not _parses(cut)
    return cut, False


def _parses(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


def _wrong_for(value) -> list:
    """Values of a type `value`'s field never takes (a container or a bool for any field, a
    string for a number, a negative number for a count, a number for a string)."""
    out: list = [[1, 2], {"a": 1}, True]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out.append("x")
    if type(value) is int:
        out.append(-3)
    if isinstance(value, str):
        out.append(12345)
    return out


def wrong_type(doc, data, rng):
    if doc not in ("jsonl", "json"):
        return random_edits(doc, data, rng)
    lines = _lines(data) if doc == "jsonl" else [data]
    i = rng.randrange(len(lines))
    try:
        value = json.loads(lines[i])
    except ValueError:
        return random_edits(doc, data, rng)
    if not isinstance(value, dict) or not value:
        return random_edits(doc, data, rng)
    key = rng.choice(sorted(value))
    value[key] = rng.choice(_wrong_for(value[key]))
    lines[i] = json.dumps(value).encode() + (b"\n" if doc == "jsonl" else b"")
    return b"".join(lines), None  # None: bad when the kind validates every field


def random_edits(doc, data, rng):
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(out) + 1)
        how = rng.random()
        if how < 0.4 and at < len(out):
            out[at] = rng.randrange(256)
        elif how < 0.7:
            out[at:at] = bytes([rng.randrange(256)])
        elif at < len(out):
            del out[at]
    return bytes(out), False


def unchanged(doc, data, rng):
    """The control: the valid file itself. Refusing it (sound_refused) would make every other
    figure vacuous."""
    return data, False


MUTATIONS = {f.__name__.replace("_", "-"): f for f in (unchanged, depth_bomb, huge_field, huge_line, nul, not_utf8,
                                                         truncated, wrong_type, random_edits)}


# ----------------------------------------------------------------------------- the campaign
TARGETS = ("tracebacks", "touched_when_bad", "moved_on_refusal", "dry_run_changes", "lost", "sound_refused")


@dataclass
class Figures:
    inputs: int = 0
    bad_inputs: int = 0
    commands: int = 0
    refusals: int = 0
    tracebacks: int = 0
    touched_when_bad: int = 0
    moved_on_refusal: int = 0
    dry_run_changes: int = 0
    lost: int = 0
    sound_refused: int = 0  # the unchanged (valid) input refused, or a command on it failing
    by_mutation: dict = field(default_factory=dict)

    def add(self, other: "Figures") -> None:
        for key in ("inputs", "bad_inputs", "commands", "refusals", *TARGETS):
            setattr(self, key, getattr(self, key) + getattr(other, key))


def read_audit_outcome(path: Path) -> Outcome:
    """reports.audit_records.read_audit (tools read audit reports with it): a ValueError is its
    documented refusal; anything else is a traceback."""
    from imgclean.reports.audit_records import read_audit

    try:
        read_audit(path)
    except ValueError as exc:
        return Outcome(1, "", str(exc))
    except Exception as exc:  # noqa: BLE001  (what the fuzzer counts)
        return Outcome(1, "", "", crashed=f"{type(exc).__name__}: {str(exc)[:200]}")
    return Outcome(0, "", "")


def fuzz_one(ws: Workspace, kind: InputKind, mutation: str, index: int, rng: random.Random, run, examples: list) -> Figures:
    """One input: a valid file of `kind` for a fresh run, mutated, then every command of the kind."""
    fig = Figures(inputs=1)
    where = Run.make(ws, index)
    try:
        data, bad = MUTATIONS[mutation](kind.doc, kind.valid(ws, where), rng)
        bad = kind.bad_when_wrong_type if bad is None else bad
        fig.bad_inputs = int(bad)
        path = kind.place(where, data)
        everything = contents(where.folder, where.quarantine)
        for command in kind.commands(ws, where, path):
            before, q_before = snapshot(where.folder), snapshot(where.quarantine) if where.quarantine.is_dir() else {}
            out = read_audit_outcome(command.args[1]) if command.args[0] == "read_audit" else run(*command.args)
            changed = snapshot(where.folder) != before
            q_changed = (snapshot(where.quarantine) if where.quarantine.is_dir() else {}) != q_before
            fig.commands += 1
            refused = kind.refused(command, out)
            fig.refusals += int(refused)
            problems = {
                "tracebacks": bool(out.crashed),
                # a damaged journal or decisions file never stops a scan: its sound records are used
                "touched_when_bad": bad and changed and not isinstance(kind, (Journal, DecisionRecords)),
                "moved_on_refusal": refused and changed,
                "dry_run_changes": command.dry_run and (changed or q_changed),
                "sound_refused": mutation == "unchanged" and (refused or out.code not in (0, 3)),
            }
            for key, hit in problems.items():
                if hit:
                    setattr(fig, key, getattr(fig, key) + 1)
                    if len(examples) < 20:
                        examples.append({"kind": kind.name, "mutation": mutation, "figure": key,
                                         "command": [os.fsdecode(a) if isinstance(a, os.PathLike) else str(a)
                                                     for a in command.args][:3],
                                         "exit": out.code, "why": out.crashed or out.stderr[-300:]})
        if contents(where.folder, where.quarantine) != everything:
            fig.lost += 1
            if len(examples) < 20:
                examples.append({"kind": kind.name, "mutation": mutation, "figure": "lost"})
    finally:
        shutil.rmtree(where.dir, ignore_errors=True)
    return fig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=12, help="inputs per kind and mutation")
    ap.add_argument("--quick", action="store_true", help="2 inputs per kind and mutation")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    ap.add_argument("--mutations", default=",".join(MUTATIONS), help=f"comma-separated, of {', '.join(MUTATIONS)}")
    ap.add_argument("--subprocess", action="store_true", help="each command in a fresh `python -m imgclean`")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per command (--subprocess)")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new input after this")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = ap.parse_args()
    runs = 2 if args.quick else args.runs
    kinds = [KINDS[k] for k in args.kinds.split(",") if k]
    mutations = [m for m in args.mutations.split(",") if m]
    unknown = [m for m in mutations if m not in MUTATIONS]
    if unknown:
        ap.error(f"unknown mutation(s) {', '.join(unknown)}")
    base = Path(tempfile.mkdtemp(prefix="imgclean-fuzz-"))
    os.environ["XDG_CACHE_HOME"] = str(base / "xdg-cache")  # scans cache here, never in ~/.cache
    started = time.monotonic()
    run = Runner(args.subprocess, args.timeout)
    ws = build_workspace(base, Runner(False, args.timeout))
    rng = random.Random(args.seed)
    per_kind: dict[str, Figures] = {k.name: Figures() for k in kinds}
    examples: list = []
    index = 0
    stopped_early = False
    for kind in kinds:
        for mutation in mutations:
            for _ in range(runs):
                if args.max_minutes is not None and time.monotonic() - started > args.max_minutes * 60:
                    stopped_early = True
                    break
                index += 1
                fig = fuzz_one(ws, kind, mutation, index, rng, run, examples)
                per_kind[kind.name].add(fig)
                per_kind[kind.name].by_mutation.setdefault(mutation, Figures()).add(fig)
    totals = Figures()
    for fig in per_kind.values():
        totals.add(fig)
    as_dict = {k: {**{key: getattr(f, key) for key in ("inputs", "bad_inputs", "commands", "refusals", *TARGETS)},
                   "by_mutation": {m: {key: getattr(g, key) for key in ("inputs", "bad_inputs", "refusals", *TARGETS)}
                                   for m, g in f.by_mutation.items()}}
               for k, f in per_kind.items()}
    result = {
        "mode": "subprocess" if args.subprocess else "in-process (CliRunner)", "runs_per_case": runs,
        "seed": args.seed, "seconds": round(time.monotonic() - started, 1), "stopped_early": stopped_early,
        "totals": {key: getattr(totals, key) for key in ("inputs", "bad_inputs", "commands", "refusals", *TARGETS)},
        "kinds": as_dict, "examples": examples,
    }
    print(json.dumps(result, indent=2))
    if args.keep:
        print(f"work folder kept: {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if any(getattr(totals, key) for key in TARGETS) else 0


if __name__ == "__main__":
    sys.exit(main())
