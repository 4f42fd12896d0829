"""The review page's decisions script: per file a restore / accept / reject choice, each carrying
one imgclean command, joined under the page's header into one script (review/script.py). The
script is run here by bash with `imgclean` a stub that logs its exact arguments, so quoting of
hostile names (spaces, quotes, newlines, leading dashes, bidi, undecodable bytes) is proven by
what a shell actually passes."""
import os
import subprocess
from pathlib import Path

from test_html_report import HOSTILE_DESTINATIONS, Page, assert_self_contained

from imgclean.reports.records import ScanRecord
from imgclean.reports.review import ReviewCollector, render_html
from imgclean.reports.review.script import ReviewScript, choices, render

NAMES = [*HOSTILE_DESTINATIONS, "a b.png", "--help", "-", "it's \"quoted\".png", "sub/dir/x.png"]


def page_script(source: str, pick: dict[str, str] | None = None) -> tuple[str, list[dict]]:
    """What the page's JavaScript builds (style.SCRIPT): the header then the data-cmd of each
    picked choice, one a line. `pick`: the action to pick per group (default: the first offered)."""
    page = Page(source)
    radios = [a for t, a in page.tags if t == "input" and a.get("class") == "choice"]
    boxes = [a for t, a in page.tags if t == "textarea" and a.get("id") == "script"]
    assert len(boxes) == 1
    groups: dict[str, list[dict]] = {}
    for r in radios:
        groups.setdefault(r["name"], []).append(r)
    lines = []
    for name, group in groups.items():
        assert group[0]["value"] == "" and "checked" in group[0]  # undecided until a person picks
        offered = [r for r in group if r.get("data-cmd")]
        want = (pick or {}).get(name)
        chosen = [r for r in offered if r["value"] == want] if want else offered[:1]
        lines += [r["data-cmd"] for r in chosen]
    return render(boxes[0]["data-head"], lines), radios


def run_script(script: str, cwd: Path, env: dict | None = None) -> tuple[int, list[list[bytes]]]:
    """Run `script` with bash, `imgclean` a stub logging its arguments NUL-separated."""
    log = cwd / "calls.log"
    log.write_bytes(b"")
    stub = f'imgclean() {{ printf "CALL\\0" >> {log}; printf "%s\\0" "$@" >> {log}; }}\n'
    rc = subprocess.run(["bash", "-c", stub + script], cwd=cwd, timeout=30, env=env,
                        capture_output=True).returncode
    calls = log.read_bytes().split(b"CALL\0")[1:]
    return rc, [c.split(b"\0")[:-1] for c in calls]


def record(path: str, status: str, **kw) -> ScanRecord:
    return ScanRecord(path=path, status=status, score=kw.pop("score", 2.0), nearest="a", **kw)


def test_each_decision_runs_as_exactly_one_imgclean_command_with_the_exact_name(tmp_path):
    root, q = tmp_path / "in put's", tmp_path / "q u\"ote"
    collector = ReviewCollector(root=root, quarantine=q)
    for name in NAMES:
        collector.add(record(name, "ood", action="moved", destination=os.fsdecode(q / "ood" / name)))
        collector.add(record(name, "ood", action="would move"))  # a report-only scan: left in place
        collector.add(record(name, "accepted"))
        collector.add(record(name, "ok", score=0.5, review="boundary"))
    source = render_html(collector, title="night\n1 $(touch PWNED)")
    source.encode("utf-8")
    assert_self_contained(source)
    work = tmp_path / "work"
    work.mkdir()
    every = {}
    script, radios = page_script(source)
    for r in radios:
        if r.get("data-cmd"):
            cmd = r["data-cmd"]
            assert "\n" not in cmd and "\r" not in cmd and cmd.isprintable(), cmd  # one line, shown as copied
            every.setdefault(r["value"], []).append(cmd)
    assert {k: len(v) for k, v in every.items()} == {"restore": len(NAMES), "accept": 2 * len(NAMES),
                                                     "reject": 3 * len(NAMES)}
    assert script.startswith("#!/bin/bash\n") and "PWNED" in script.splitlines()[1]  # the title, a comment
    # Paths relative to the folders, named once as variables in the header.
    assert all(f'"$Q"/' in c for c in every["restore"]) and all('"$ROOT"/' in c for c in every["accept"])
    rc, calls = run_script(script, work)
    assert rc == 0
    R, Q = os.fsencode(root), os.fsencode(q)
    # First choices: restore for moved files, accept for the others, reject for accepted files.
    expected = []
    for name in NAMES:
        n = os.fsencode(name)
        expected.append([b"restore", b"--", Q, Q + b"/ood/" + n])
    for name in NAMES:
        n = os.fsencode(name)
        expected.append([b"accept", b"--from-review", b"--root", R, b"--", R + b"/" + n])
    for name in NAMES:
        n = os.fsencode(name)
        expected.append([b"reject", b"--from-review", b"--move-to", Q, b"--root", R, b"--", R + b"/" + n])
    for name in NAMES:
        n = os.fsencode(name)
        expected.append([b"accept", b"--from-review", b"--root", R, b"--", R + b"/" + n])
    assert sorted(calls) == sorted(expected)
    assert not list(tmp_path.rglob("PWNED"))


def test_picking_reject_gives_the_reject_command(tmp_path):
    root, q = tmp_path / "in", tmp_path / "q"
    collector = ReviewCollector(root=root, quarantine=q)
    collector.add(record("-rf new\nline.png", "ok", score=0.9, review="random"))
    source = render_html(collector)
    script, radios = page_script(source, pick={"d1": "reject"})
    assert [r["value"] for r in radios] == ["", "accept", "reject"]
    rc, calls = run_script(script, tmp_path)
    R, Q = os.fsencode(root), os.fsencode(q)
    assert rc == 0 and calls == [[b"reject", b"--from-review", b"--move-to", Q, b"--root", R, b"--",
                                  R + b"/-rf new\nline.png"]]


def test_a_reject_without_a_known_quarantine_asks_for_one_and_runs_nothing(tmp_path):
    root = tmp_path / "in"
    collector = ReviewCollector(root=root)  # a report-only scan: no quarantine
    collector.add(record("x.png", "accepted"))
    script, _ = page_script(render_html(collector))
    env = {k: v for k, v in os.environ.items() if k != "Q"}
    rc, calls = run_script(script, tmp_path, env=env)
    assert rc != 0 and calls == []  # "${Q:?...}": bash stops before imgclean runs
    rc, calls = run_script(script, tmp_path, env={**env, "Q": str(tmp_path / "my q")})
    assert rc == 0 and calls == [[b"reject", b"--from-review", b"--move-to", os.fsencode(tmp_path / "my q"),
                                  b"--root", os.fsencode(root), b"--", os.fsencode(root / "x.png")]]


def test_unchecked_or_unsafe_paths_get_no_command(tmp_path):
    root, q = tmp_path / "in", tmp_path / "q"
    collector = ReviewCollector(root=root, quarantine=q)
    collector.add({"path": "plain.png", "status": "ood", "score": 2.0, "action": "moved",
                   "destination": os.fsdecode(q / "plain.png")})  # a mapping not validated: shown, no command
    collector.add(record("../escape.png", "ood", action="would move"))
    collector.add(record("/etc/passwd", "ood", action="would move"))
    collector.add(record("a/./b.png", "ood", action="would move"))
    collector.add(record("out.png", "ood", action="moved", destination=os.fsdecode(tmp_path / "elsewhere.png")))
    source = render_html(collector)
    page = Page(source)
    assert not [a for t, a in page.tags if t == "input" and a.get("class") == "choice"]
    assert 'id="decisions"' not in source and "escape.png" in page.visible  # listed, never offered


def test_script_helpers_refuse_relative_or_unnormalised_folders():
    s = ReviewScript()
    assert s.accept("relative/root", "a.png") is None
    assert s.accept("/data/../etc", "a.png") is None
    assert s.restore("/q", "/q2/a.png") is None  # not inside the quarantine
    assert s.restore("/q", "/q/a.png") == "imgclean restore -- \"$Q\" \"$Q\"/a.png"
    assert choices(s, status="ok", action="", path="a.png", destination=None, root="/r",
                   quarantine=None, sample=False) == []  # an ok file not shown for review: nothing to decide
    assert [c.action for c in choices(s, status="ok", action="restored", path="a.png", destination="/q/a.png",
                                      root="/r", quarantine="/q", sample=True)] == []


def test_page_shows_accepted_status_and_review_column(tmp_path):
    collector = ReviewCollector(root=tmp_path, quarantine=tmp_path / "q")
    collector.add(record("kept.png", "accepted"))
    collector.add(record("look.png", "ok", score=0.97, review="boundary"))
    source = render_html(collector)
    page = assert_self_contained(source)
    assert "accepted by a person" in page.visible and "review: boundary" in page.visible
    assert 'id="accepted"' in source and 'id="sample"' in source
    cards = page.visible
    assert "accepted" in cards and "Review sample (1)" in page.visible


# ----------------------------------------------------------------------------- with the real imgclean

def run_real(script: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    """Run a page's script with bash, `imgclean` this checkout's CLI."""
    import sys

    stub = f'imgclean() {{ {sys.executable} -m imgclean "$@"; }}\n'
    environ = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env}
    return subprocess.run(["bash", "-c", stub + script], cwd=cwd, timeout=300, env=environ,
                          capture_output=True, text=True)


def test_the_scripts_of_real_pages_restore_and_reject_hostile_names(model_dir, incoming, tmp_path):
    import json

    from test_html_report import invoke

    folder, _ = incoming
    hostile = "-n it's \"x\"\nnew é.png"
    (folder / hostile).write_bytes(b"not an image")  # always rejected: unreadable
    q, page1 = tmp_path / "q", tmp_path / "moved.html"
    assert invoke("scan", folder, "-m", model_dir, "--move-to", q, "--html", page1, "-q").exit_code == 0
    assert not (folder / hostile).exists()
    source = page1.read_text(encoding="utf-8")
    groups = {r["name"] for t, r in Page(source).tags if t == "input" and r.get("data-cmd") and "x" in r["data-cmd"]
              and "new" in r["data-cmd"]}
    script, _ = page_script(source, pick={g: "restore" for g in groups})
    script = "\n".join(line for line in script.splitlines() if not line.startswith("imgclean ")
                       or "new" in line) + "\n"  # restore the hostile file only
    done = run_real(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (folder / hostile).read_bytes() == b"not an image"

    # The next scan leaves it in place as accepted; a report-only page offers to reject a new broken file.
    plain = "plain broken.png"
    (folder / plain).write_bytes(b"not an image either")
    page2 = tmp_path / "report-only.html"
    result = invoke("scan", folder, "-m", model_dir, "--html", page2, "--json")
    summary = json.loads(result.stdout)
    assert summary["accepted"] == 1, result.stdout
    source = page2.read_text(encoding="utf-8")
    radios = [r for t, r in Page(source).tags if t == "input" and r.get("data-cmd")]
    reject = [r for r in radios if r["value"] == "reject" and "plain" in r["data-cmd"]]
    assert len(reject) == 1
    script, _ = page_script(source, pick={reject[0]["name"]: "reject"})
    script = "\n".join(line for line in script.splitlines() if not line.startswith("imgclean ")
                       or "plain" in line) + "\n"
    assert "${Q:?" in script  # this page knows no quarantine
    done = run_real(script, tmp_path, Q=str(q))
    assert done.returncode == 0, done.stderr
    assert not (folder / plain).exists() and [p for p in q.rglob(plain)]
