"""`imgclean restore QUARANTINE [PATH ...]` against the moves contract (contract 1): results
are printed, discarded files are "discarded by the user", only problems fail the run.

The first tests use a stand-in for imgclean.quarantine.moves.restore, so the CLI's side is checked on its
own; the last ones run the real thing (they need the moves helper's `only=` and statuses).
"""
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tree_snapshot
from imgclean.cli import app

runner = CliRunner()
PROBLEMS = {"exists", "error", "unaccounted", "invalid", "not_found"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@dataclass(frozen=True)
class FakeResult:
    source: Path
    destination: Path
    status: str
    message: str = ""

    @property
    def problem(self) -> bool:
        return self.status in PROBLEMS


@pytest.fixture
def fake_restore(monkeypatch, tmp_path):
    """A quarantine with a manifest, and a restore() that records its call and returns `results`."""
    q = tmp_path / "q"
    q.mkdir()
    (q / "imgclean-manifest.jsonl").write_text("")
    calls = []
    results = []

    def restore(quarantine_root, dry_run=False, only=None):
        calls.append({"root": Path(quarantine_root), "dry_run": dry_run, "only": only})
        return list(results)

    monkeypatch.setattr("imgclean.quarantine.moves.restore", restore)
    return q, calls, results


def result(status, name="a.png", message=""):
    return FakeResult(Path("/data") / name, Path("/q") / name, status, message)


def test_discarded_files_are_reported_and_do_not_fail(fake_restore):
    q, calls, results = fake_restore
    results += [result("restored", "a.png"), result("discarded", "b.png", "deleted from the quarantine")]
    out = invoke("restore", q)
    assert out.exit_code == 0, out.output
    assert "discarded by the user: '/q/b.png'" in out.stdout
    assert "restored: '/q/a.png' -> '/data/a.png'" in out.stdout
    assert calls == [{"root": q, "dry_run": False, "only": None}]


@pytest.mark.parametrize("status", sorted(PROBLEMS))
def test_each_problem_status_fails_the_run(fake_restore, status):
    q, _, results = fake_restore
    results += [result("restored", "a.png"), result(status, "b.png", "why")]
    out = invoke("restore", q)
    assert out.exit_code == 1, out.output
    assert "1 file(s) were not restored" in out.output


def test_paths_restore_only_those(fake_restore, tmp_path):
    q, calls, results = fake_restore
    results.append(result("restored"))
    assert invoke("restore", q, q / "a.png", "/data/b.png", "--dry-run").exit_code == 0
    assert calls[-1] == {"root": q, "dry_run": True, "only": [str(q / "a.png"), "/data/b.png"]}


def test_json_lists_every_status_and_whether_it_is_a_problem(fake_restore):
    q, _, results = fake_restore
    statuses = ["restored", "discarded", *sorted(PROBLEMS)]
    results += [result(s, f"{s}.png") for s in statuses]
    out = invoke("restore", q, "--json")
    assert out.exit_code == 1
    data = json.loads(out.stdout)
    assert [f["status"] for f in data["files"]] == statuses
    assert {f["status"]: f["problem"] for f in data["files"]} == {s: s in PROBLEMS for s in statuses}
    assert data["counts"] == {s: 1 for s in statuses} and data["problems"] == len(PROBLEMS)


def test_dry_run_says_would_restore(fake_restore):
    q, _, results = fake_restore
    results.append(result("restored", message="dry run"))
    out = invoke("restore", q, "--dry-run")
    assert out.exit_code == 0 and "would restore: '/q/a.png'" in out.stdout


def test_a_dry_run_counts_what_it_would_restore_never_restored(fake_restore):
    """Issue 25: `restore --dry-run` said "restored 4" in its counts line and its JSON."""
    q, _, results = fake_restore
    results += [result("restored", f"{i}.png", "dry run") for i in range(4)]
    results.append(result("discarded", "gone.png", "deleted from the quarantine"))
    out = invoke("restore", q, "--dry-run")
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[-1] == "5 record(s): discarded 1, would restore 4 (dry run: nothing changed)"
    assert "restored" not in out.stdout
    data = json.loads(invoke("restore", q, "--dry-run", "--json").stdout)
    assert data["dry_run"] is True and data["counts"] == {"would_restore": 4, "discarded": 1}
    assert [f["status"] for f in data["files"]] == ["would_restore"] * 4 + ["discarded"]
    real = invoke("restore", q)  # a real run's words are unchanged
    assert real.stdout.splitlines()[-1] == "5 record(s): discarded 1, restored 4"
    assert json.loads(invoke("restore", q, "--json").stdout)["counts"] == {"restored": 4, "discarded": 1}


# ---- the real restore (needs the moves helper's branch: only=, "discarded", .problem) -------
def test_a_file_deleted_from_the_quarantine_is_discarded_and_restore_succeeds(model_dir, incoming, tmp_path):
    root, _ = incoming
    q = tmp_path / "q"
    assert invoke("scan", root, "-m", model_dir, "--move-to", q, "-q").exit_code == 0
    (q / "broken.png").unlink()  # the reviewer confirmed it is junk
    for args in (("--dry-run",), ()):
        out = invoke("restore", q, *args)
        assert out.exit_code == 0, out.output
        assert "discarded by the user" in out.stdout
    assert not (root / "broken.png").exists()
    again = invoke("restore", q, "--dry-run")
    assert again.exit_code == 0, again.output  # not failing forever


def test_a_real_dry_run_says_what_it_would_restore_and_changes_nothing(model_dir, incoming, tmp_path):
    root, _ = incoming
    q = tmp_path / "q"
    assert invoke("scan", root, "-m", model_dir, "--move-to", q, "-q").exit_code == 0
    held = sorted(p.name for p in q.glob("*.png"))
    assert held
    before = (tree_snapshot(root), tree_snapshot(q))
    text = invoke("restore", q, "--dry-run")
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[-1] == f"{len(held)} record(s): would restore {len(held)} (dry run: nothing changed)"
    data = json.loads(invoke("restore", q, "--dry-run", "--json").stdout)
    assert data["counts"] == {"would_restore": len(held)}
    assert (tree_snapshot(root), tree_snapshot(q)) == before


def test_restore_one_path_by_quarantine_or_original_name(model_dir, incoming, tmp_path):
    root, _ = incoming
    q = tmp_path / "q"
    assert invoke("scan", root, "-m", model_dir, "--move-to", q, "-q").exit_code == 0
    held = sorted(p.name for p in q.glob("*.png"))
    assert len(held) >= 3
    first, second = held[0], held[1]
    out = invoke("restore", q, q / first)
    assert out.exit_code == 0, out.output
    assert (root / first).is_file() and not (q / first).exists()
    assert (q / second).exists() and not (root / second).exists()  # the others stay
    out = invoke("restore", q, root / second)  # by its original path
    assert out.exit_code == 0, out.output
    assert (root / second).is_file()
    before = tree_snapshot(q)
    out = invoke("restore", q, tmp_path / "never-there.png")
    assert out.exit_code == 1 and "no such file in the journal" in out.stdout
    assert tree_snapshot(q) == before
