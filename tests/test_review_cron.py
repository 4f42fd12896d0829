"""The nightly cron recipe, run as written (twice, with a review in between), and the report
options it relies on: a one-line JSON summary a night, a report file never overwritten unless
asked (--overwrite-report), a missing report folder a one-line usage error with a hint."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_incoming_folder, ood_image, write_png
from imgclean.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

# The recipe proposed for the README (issue 24): a report per run (dated to the second, so a
# second run on the same day never meets the first one's file), folders made if missing.
RECIPE = r"""#!/bin/sh
# /usr/local/bin/imgclean-nightly
cd /data || exit 1
mkdir -p reports /var/log/imgclean
imgclean scan incoming -m models/digits --move-to quarantine --fail-on-reject \
    --json --report "reports/$(date +%F-%H%M%S).csv" --html reports/review.html \
    >> /var/log/imgclean/scan.jsonl 2>> /var/log/imgclean/scan.err
code=$?
case $code in
  0) ;;
  3) mail -s "imgclean: new rejects in /data/incoming" you@example.org < /dev/null ;;
  4) ;;  # yesterday's scan is still running: it holds the lock, try again tomorrow
  *) tail -n 20 /var/log/imgclean/scan.err | mail -s "imgclean failed (exit $code)" you@example.org ;;
esac
"""


def invoke(*args):
    return runner.invoke(app, [os.fspath(a) for a in args])


def readme_recipe() -> str:
    """The nightly script of the README's "From cron" section, as a user copies it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### From cron"):]
    start = section.index("    #!/bin/sh")
    end = section.index("    esac", start) + len("    esac")
    return "\n".join(line[4:] for line in section[start:end].splitlines()) + "\n"


def run_recipe(recipe: str, data: Path, logs: Path, model: Path) -> None:
    """Run a recipe with sh, its folders here, `imgclean` this checkout, `mail` a stub."""
    script = (recipe.replace("/var/log/imgclean", shlex.quote(os.fspath(logs)))
              .replace("/data", shlex.quote(os.fspath(data)))
              .replace("models/digits", shlex.quote(os.fspath(model))))
    stubs = (f'imgclean() {{ {shlex.quote(sys.executable)} -m imgclean "$@"; }}\n'
             f'mail() {{ cat > /dev/null; printf "%s\\n" "$*" >> {shlex.quote(os.fspath(logs / "mail.log"))}; }}\n')
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERM")}
    env["PYTHONPATH"] = os.fspath(REPO)
    subprocess.run(["sh", "-c", stubs + script], check=True, timeout=300, env=env, stdin=subprocess.DEVNULL,
                   capture_output=True)


def summaries(logs: Path) -> list[dict]:
    """The JSON-lines log, read back line by line as a log reader does."""
    lines = (logs / "scan.jsonl").read_text(encoding="ascii").splitlines()
    return [json.loads(line) for line in lines]


def error_line(result) -> str:
    """The one error line of a usage error (click's "try ... -h" hint may follow it)."""
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("try ")), result.stderr
    return lines[0]


def mails(logs: Path) -> list[str]:
    path = logs / "mail.log"
    return path.read_text().splitlines() if path.exists() else []


def test_the_nightly_recipe_runs_twice_with_a_review_between(model_dir, tmp_path):
    data, logs = tmp_path / "data", tmp_path / "log"
    make_incoming_folder(data / "incoming")
    run_recipe(RECIPE, data, logs, model_dir)
    [night1] = summaries(logs)
    assert night1["moved"] >= 4 and mails(logs) == ["-s imgclean: new rejects in " + os.fspath(data) + "/incoming you@example.org"]
    [report1] = list((data / "reports").glob("*.csv"))
    first = report1.read_bytes()
    assert (data / "reports" / "review.html").is_file()

    # The review: one false reject restored (it stays from now on); new pictures arrive.
    q = data / "quarantine"
    restored = q / "odd_00.png"
    assert invoke("restore", q, restored).exit_code == 0
    rng = np.random.default_rng(9)
    write_png(data / "incoming" / "new odd\nname.png", ood_image(rng))
    run_recipe(RECIPE, data, logs, model_dir)
    night1_again, night2 = summaries(logs)  # one line a night, each a whole JSON document
    assert night1_again == night1
    assert night2["accepted"] == 1 and night2["moved"] == 1, night2
    assert (data / "incoming" / "odd_00.png").is_file()
    assert len(mails(logs)) == 2
    reports = sorted((data / "reports").glob("*.csv"))
    assert len(reports) == 2 and report1.read_bytes() == first  # a new report; the first one intact
    assert (logs / "scan.err").read_text() == ""


def test_the_readme_recipe_never_overwrites_a_report_and_logs_json_lines(model_dir, tmp_path):
    """Whatever the README's recipe names its report, a second run the same day keeps the first
    report and the log stays one JSON document a line."""
    data, logs = tmp_path / "data", tmp_path / "log"
    make_incoming_folder(data / "incoming")
    (data / "reports").mkdir()
    logs.mkdir()
    recipe = readme_recipe()
    run_recipe(recipe, data, logs, model_dir)
    [report1] = list((data / "reports").glob("*.csv"))
    first = report1.read_bytes()
    assert len(summaries(logs)) == 1
    run_recipe(recipe, data, logs, model_dir)
    assert report1.read_bytes() == first
    assert 1 <= len(summaries(logs)) <= 2  # a refused run prints no summary; an accepted one, one line
    for line in (logs / "scan.err").read_text().splitlines():
        assert "Traceback" not in line


# ----------------------------------------------------------------------------- the options


@pytest.fixture
def scanned_once(model_dir, incoming, tmp_path):
    folder, _ = incoming
    report = tmp_path / "r.csv"
    result = invoke("scan", folder, "-m", model_dir, "--report", report, "--json")
    assert result.exit_code == 0, result.output
    return folder, report


def test_scan_json_is_exactly_one_line(scanned_once, model_dir, tmp_path):
    folder, _ = scanned_once
    (folder / "new\nline.png").write_bytes(b"broken")
    result = invoke("scan", folder, "-m", model_dir, "--json", "--dry-run", "--move-to", tmp_path / "q")
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("\n")
    assert "new\\nline.png" in result.stdout and json.loads(result.stdout)["would_move"] >= 1


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_existing_report_is_refused_in_one_line_and_kept(model_dir, incoming, tmp_path, fmt):
    folder, _ = incoming
    report = tmp_path / f"r.{fmt}"
    report.write_text("precious\n")
    q = tmp_path / "q"
    result = invoke("scan", folder, "-m", model_dir, "--report", report, "--move-to", q, "--json")
    assert result.exit_code == 2, result.output
    assert report.read_text() == "precious\n" and not q.exists()  # refused before anything moved
    line = error_line(result)
    assert "--overwrite-report" in line and "exists" in line and result.stdout == ""


def test_overwrite_report_replaces_an_existing_file(scanned_once, model_dir):
    folder, report = scanned_once
    report.write_text("old\n")
    result = invoke("scan", folder, "-m", model_dir, "--report", report, "--overwrite-report", "-q")
    assert result.exit_code == 0, result.output
    assert report.read_text().startswith("path,status,")


def test_a_report_through_a_link_or_onto_a_folder_is_refused(scanned_once, model_dir, tmp_path):
    folder, _ = scanned_once
    target = tmp_path / "victim.csv"
    target.write_text("keep\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    for path, extra in ((link, ()), (link, ("--overwrite-report",)), (tmp_path / "dir.csv", ("--overwrite-report",))):
        if path.name == "dir.csv":
            path.mkdir()
        result = invoke("scan", folder, "-m", model_dir, "--report", path, *extra)
        assert result.exit_code == 2, result.output
        assert "--report" in error_line(result)
    assert target.read_text() == "keep\n"


def test_a_missing_report_folder_is_one_line_with_a_hint(model_dir, incoming, tmp_path):
    folder, _ = incoming
    missing = tmp_path / "reports" / "night.csv"
    for args in (("scan", folder, "-m", model_dir), ("audit", folder)):
        result = invoke(*args, "--report", missing)
        assert result.exit_code == 2, result.output
        line = error_line(result)
        assert "does not exist" in line and "mkdir -p" in line
    assert not missing.parent.exists()


def test_apply_and_audit_refuse_an_existing_report_too(scanned_once, tmp_path):
    folder, report = scanned_once
    out = tmp_path / "out.csv"
    out.write_text("mine\n")
    for args in (("apply", report, "--move-to", tmp_path / "q"), ("audit", folder)):
        result = invoke(*args, "--report", out)
        assert result.exit_code == 2, result.output
        assert "--overwrite-report" in error_line(result)
    assert out.read_text() == "mine\n" and not (tmp_path / "q").exists()


def test_the_writer_refuses_a_file_made_after_the_check(tmp_path):
    """The refusal is the open itself (O_EXCL): a name taken between the check and the write."""
    from imgclean.reports.audit_records import AuditWriter
    from imgclean.reports.records import RecordWriter
    from imgclean.reports.report_files import ReportExistsError, ReportPathError

    path = tmp_path / "late.csv"
    path.write_text("raced\n")
    for writer in (RecordWriter(path, tmp_path), AuditWriter(path, tmp_path)):
        with pytest.raises(ReportExistsError):
            writer.__enter__()
    assert path.read_text() == "raced\n"
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    with pytest.raises(ReportPathError):
        RecordWriter(fifo, tmp_path, overwrite=True).__enter__()  # never blocks on a FIFO
    link = tmp_path / "link.csv"
    link.symlink_to(path)
    with pytest.raises(ReportPathError):
        RecordWriter(link, tmp_path, overwrite=True).__enter__()
    assert path.read_text() == "raced\n"
