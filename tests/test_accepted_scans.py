"""The status `accepted`: a file a person put back or accepted is never moved again by a later
scan or apply while its content is unchanged (cache on or off, another model, another
quarantine, a report applied later), and a changed or withdrawn one is scored afresh.

`imgclean restore` records each file it puts back as accepted (quarantine.decision_ops.record_restore);
these tests use it alone.
"""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_perf import no_racy_window  # noqa: F401  (a fixture: the scan cache stores files dated back)
from imgclean.cli import app
from imgclean.reports.records import read_report

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [os.fspath(a) for a in args])


def summary_of(result) -> dict:
    return json.loads(result.stdout)


def statuses(report: Path) -> dict[str, str]:
    return {row.record.path: row.record.status for row in read_report(report)}


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.png")) if folder.exists() else []


def aged(root: Path) -> Path:
    """Every file below root made an hour old: the scan cache keeps no verdict of a file modified
    in the last seconds (its mtime could repeat after an edit)."""
    old = time.time_ns() - 3600 * 10**9
    for p in root.rglob("*"):
        os.utime(p, ns=(old, old), follow_symlinks=False)
    return root


def first_night(root: Path, model: Path, q: Path) -> str:
    """scan --move-to q, then the person restores one rejected picture and it is recorded as
    accepted; returns its path relative to root."""
    aged(root)
    night = invoke("scan", root, "-m", model, "--move-to", q, "--json", "-q")
    assert night.exit_code == 0, night.output
    assert summary_of(night)["moved"] >= 2
    chosen = "odd_00.png"
    assert not (root / chosen).exists() and (q / chosen).exists()
    back = invoke("restore", q, q / chosen)
    assert back.exit_code == 0, back.output  # restore records the person's acceptance (decision_ops.record_restore)
    return chosen


@pytest.fixture
def night(no_racy_window, model_dir, incoming, tmp_path):  # files dated back are cached at once
    root, _ = incoming
    q = tmp_path / "q"
    return root, q, first_night(root, model_dir, q)


@pytest.mark.parametrize("cache", [[], ["--no-cache"]], ids=["cache", "no-cache"])
def test_the_next_scans_leave_a_restored_file_and_say_accepted(night, model_dir, tmp_path, cache):
    root, q, chosen = night
    held = pngs(q)
    for n in range(2):  # twice: the second answered by the cache the first one filled
        report = tmp_path / f"again-{n}.csv"
        again = invoke("scan", root, "-m", model_dir, "--move-to", q, "--json", "-q", "--fail-on-reject",
                       "--report", report, *cache)
        assert again.exit_code == 0, again.output  # nothing rejected: --fail-on-reject passes
        got = summary_of(again)
        assert (got["moved"], got["accepted"], got["ood"], got["rejected"]) == (0, 1, 0, 0), got
        assert (root / chosen).exists() and pngs(q) == held
        rows = {row.record.path: row.record for row in read_report(report)}
        assert rows[chosen].status == "accepted" and rows[chosen].action == ""
        assert "accepted by" in rows[chosen].message and "(restore)" in rows[chosen].message
        if cache and n == 1:
            assert got["cached"] == 0
    if not cache:
        assert got["cached"] > 0  # the second scan took verdicts from the cache, and still said accepted


def test_another_model_another_quarantine_and_a_dry_run_leave_it_too(night, model_with_head, tmp_path):
    root, _, chosen = night
    q2 = tmp_path / "q2"
    dry = invoke("scan", root, "-m", model_with_head, "--move-to", q2, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    planned = summary_of(dry)
    assert planned["would_move"] == 0 and planned["accepted"] == 1 and planned["plan"] == []
    moved = invoke("scan", root, "-m", model_with_head, "--move-to", q2, "--json", "-q")
    assert moved.exit_code == 0, moved.output
    assert summary_of(moved)["accepted"] == 1 and summary_of(moved)["moved"] == 0
    assert (root / chosen).exists() and pngs(q2) == []


def test_apply_of_a_report_written_before_or_after_the_decision_leaves_it(model_dir, incoming, tmp_path):
    root = aged(incoming[0])
    q, q2 = tmp_path / "q", tmp_path / "q2"
    before = tmp_path / "before.jsonl"
    ran = invoke("scan", root, "-m", model_dir, "--report", before, "-q")  # a report, nothing moved
    assert ran.exit_code == 0, ran.output
    assert statuses(before)["odd_00.png"] == "ood"
    assert invoke("accept", root / "odd_00.png", "--root", root).exit_code == 0
    after = tmp_path / "after.csv"
    ran = invoke("scan", root, "-m", model_dir, "--report", after, "-q")
    assert ran.exit_code == 0, ran.output
    assert statuses(after)["odd_00.png"] == "accepted"
    # The report from before the decision first (it moves the other rejects), then the fresh one.
    for report, quarantine, moves in ((before, q, True), (after, q2, False)):
        applied = invoke("apply", report, "--move-to", quarantine, "--json", "-q")
        assert applied.exit_code == 0, applied.output
        got = summary_of(applied)
        assert got["accepted"] == 1 and (got["moved"] >= 2) is moves, got
        assert (root / "odd_00.png").exists() and "odd_00.png" not in pngs(quarantine)


def test_a_changed_file_is_scored_afresh_and_moved(night, model_dir):
    root, q, chosen = night
    from conftest import ood_image, write_png
    import numpy as np

    write_png(root / chosen, ood_image(np.random.default_rng(99)))  # new content, still foreign
    again = invoke("scan", root, "-m", model_dir, "--move-to", q, "--json", "-q")
    assert again.exit_code == 0, again.output
    assert summary_of(again)["accepted"] == 0 and summary_of(again)["moved"] == 1
    assert not (root / chosen).exists()


def test_a_withdrawn_decision_is_not_answered_by_the_cache(night, model_dir, tmp_path):
    """The cache keeps the scan's verdict, never the decision: after a scan that said accepted
    (filling the cache), withdrawing the decision makes the next cached scan move the file."""
    root, q, chosen = night
    for n in range(2):  # report-only scans: the second one's verdicts all come from the cache
        said = invoke("scan", root, "-m", model_dir, "--json", "-q", "--report", tmp_path / f"r{n}.csv")
        assert said.exit_code == 0 and summary_of(said)["accepted"] == 1, said.output
        assert statuses(tmp_path / f"r{n}.csv")[chosen] == "accepted"
    assert summary_of(said)["cached"] == summary_of(said)["scanned"] - summary_of(said)["skipped"]
    assert invoke("withdraw", root / chosen).exit_code == 0
    again = invoke("scan", root, "-m", model_dir, "--move-to", q, "--json", "-q", "--report", tmp_path / "w.csv")
    assert again.exit_code == 0, again.output
    got = summary_of(again)
    assert got["accepted"] == 0 and got["moved"] == 1 and got["cached"] > 0, got
    assert statuses(tmp_path / "w.csv")[chosen] == "ood" and not (root / chosen).exists()


def test_an_accepted_unreadable_file_stays_with_its_verdict_kept(model_dir, incoming, tmp_path):
    root = aged(incoming[0])
    assert invoke("accept", root / "broken.png", "--root", root).exit_code == 0
    for n in range(2):
        ran = invoke("scan", root, "-m", model_dir, "--move-to", tmp_path / "q", "--json", "-q",
                     "--report", tmp_path / f"r{n}.jsonl")
        assert ran.exit_code == 0, ran.output
        assert summary_of(ran)["unreadable"] == 0 and summary_of(ran)["accepted"] == 1
        rows = {row.record.path: row.record for row in read_report(tmp_path / f"r{n}.jsonl")}
        assert rows["broken.png"].status == "accepted" and "accepted by" in rows["broken.png"].message
        assert (root / "broken.png").exists()


def test_the_summary_and_reports_carry_the_new_status(night, model_dir, tmp_path):
    root, _, chosen = night
    out = tmp_path / "r.csv"
    ran = invoke("scan", root, "-m", model_dir, "--report", out, "--json", "-q")
    assert ran.exit_code == 0
    got = summary_of(ran)
    assert got["accepted"] == 1 and got["scanned"] == sum(
        got[k] for k in ("ok", "ood", "unreadable", "too_large", "unsupported", "skipped", "changed", "accepted"))
    with open(out, newline="") as fh:
        header = next(csv.reader(fh))
    assert header[-2:] == ["root", "review"]  # new columns at the end: older readers find theirs by name


# ----------------------------------------------------------------------------- the cron recipe


RECIPE = """#!/bin/sh
# The README's nightly recipe, with this test's folders.
cd "$DATA" || exit 1
imgclean scan incoming -m "$MODEL" --move-to quarantine --fail-on-reject \\
    --json --report "reports/$NIGHT.csv" >> log/scan.jsonl 2>> log/scan.err
code=$?
echo "$code" >> log/codes
"""


def test_the_cron_recipe_run_twice_moves_nothing_the_person_restored(model_dir, tmp_path):
    import subprocess
    import sys

    from conftest import make_incoming_folder

    data = tmp_path / "data"
    make_incoming_folder(data / "incoming")
    aged(data / "incoming")
    for sub in ("reports", "log", "bin"):
        (data / sub).mkdir()
    wrapper = data / "bin" / "imgclean"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m imgclean "$@"\n')
    wrapper.chmod(0o755)
    script = tmp_path / "imgclean-nightly"
    script.write_text(RECIPE)
    env = {**os.environ, "DATA": str(data), "MODEL": str(model_dir),
           "PATH": f"{data / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def nightly(night: str) -> None:
        done = subprocess.run(["sh", str(script)], env={**env, "NIGHT": night}, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr

    nightly("night-1")
    q = data / "quarantine"
    restored = ["odd_00.png", "odd_01.png", "broken.png"]
    for name in restored:  # the person's review: three false rejects put back
        assert (q / name).exists()
        back = invoke("restore", q, q / name)
        assert back.exit_code == 0, back.output
    nightly("night-2")
    codes = (data / "log" / "codes").read_text().split()
    nights = json_documents((data / "log" / "scan.jsonl").read_text())
    assert codes == ["3", "0"]  # night 1 rejected files; night 2 found nothing new
    assert len(nights) == 2, nights
    second = nights[1]
    assert (second["moved"], second["accepted"], second["rejected"]) == (0, 3, 0), second
    assert all((data / "incoming" / n).exists() for n in restored)
    said = statuses(data / "reports" / "night-2.csv")
    assert {p for p, s in said.items() if s == "accepted"} == set(restored)


def json_documents(text: str) -> list[dict]:
    """The JSON documents of a JSON-lines log, read line by line (--json prints one line)."""
    return [json.loads(line) for line in text.splitlines()]


# ----------------------------------------------------------------------------- restore's own record


def test_restore_alone_records_the_acceptance(model_dir, incoming, tmp_path):
    root, _ = incoming
    q = tmp_path / "q"
    assert invoke("scan", root, "-m", model_dir, "--move-to", q, "-q").exit_code == 0
    assert invoke("restore", q, q / "odd_00.png").exit_code == 0
    again = invoke("scan", root, "-m", model_dir, "--move-to", q, "--json", "-q")
    assert again.exit_code == 0, again.output
    assert summary_of(again)["accepted"] == 1 and summary_of(again)["moved"] == 0
    assert (root / "odd_00.png").exists()
