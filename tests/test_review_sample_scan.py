"""The scan's review sample (`scan --review-sample N`, pipeline/scan/sample_pass.py): chosen among the
accepted files after the scan, marked in the report (rewritten safely), the --json summary and
the review page; api.scan(review_sample=...)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CLASSES, class_image, ood_image, write_png
from imgclean.cli import app
from imgclean.pipeline.scan.review_sample import PARTS
from imgclean.pipeline.scan.sample_pass import Candidate, SampleCandidates
from imgclean.reports.records import ScanRecord

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def folder(tmp_path) -> Path:
    """30 in-distribution pictures (6 a class) and 4 that do not belong."""
    rng = np.random.default_rng(5)
    root = tmp_path / "in"
    for i in range(30):
        write_png(root / f"n_{i:02d}.png", class_image(CLASSES[i % len(CLASSES)], rng))
    for i in range(4):
        write_png(root / f"odd_{i}.png", ood_image(rng))
    return root


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def scan_json(*args) -> tuple[dict, object]:
    result = invoke("scan", *args, "--json", "--no-cache")
    assert result.exit_code in (0, 3), result.output
    return json.loads(result.stdout), result


def test_sample_marked_in_report_with_reasons_only_ok(folder, model_dir, tmp_path):
    report = tmp_path / "r.csv"
    summary, _ = scan_json(folder, "-m", model_dir, "--report", report, "--review-sample", 6)
    rows = csv_rows(report)
    marked = [r for r in rows if r["review"]]
    assert summary["review_sample"] == len(marked) == 6
    assert all(r["status"] == "ok" and r["review"] in PARTS for r in marked)
    assert {r["review"] for r in marked} >= {"boundary", "random"}


def test_zero_disables(folder, model_dir, tmp_path):
    report = tmp_path / "r.jsonl"
    summary, _ = scan_json(folder, "-m", model_dir, "--report", report, "--review-sample", 0)
    assert summary["review_sample"] == 0
    assert all(json.loads(line)["review"] == "" for line in report.read_text().splitlines())


def test_moved_files_never_sampled(folder, model_dir, tmp_path):
    report = tmp_path / "r.csv"
    summary, _ = scan_json(folder, "-m", model_dir, "--move-to", tmp_path / "q", "--report", report,
                           "--review-sample", 40)
    rows = csv_rows(report)
    ok = [r for r in rows if r["status"] == "ok"]
    marked = [r for r in rows if r["review"]]
    assert summary["moved"] >= 1 and summary["review_sample"] == len(marked) == len(ok)  # every ok one, nothing else
    assert all(r["status"] == "ok" and r["action"] == "" for r in marked)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_report_rewritten_only_review_cells(folder, model_dir, tmp_path, suffix):
    plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
    scan_json(folder, "-m", model_dir, "--report", plain, "--review-sample", 0)
    os.chmod(plain, 0o640)  # (the rewrite keeps the mode the writer gave it)
    scan_json(folder, "-m", model_dir, "--report", marked, "--review-sample", 5)

    def rows(path):
        if suffix == ".csv":
            return csv_rows(path)
        return [json.loads(line) for line in path.read_text().splitlines()]

    before, after = rows(plain), rows(marked)
    assert len(before) == len(after) and sum(bool(r["review"]) for r in after) == 5
    for a, b in zip(before, after):
        assert {k: v for k, v in a.items() if k != "review"} == {k: v for k, v in b.items() if k != "review"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left


def test_existing_report_overwritten_is_not_replaced(folder, model_dir, tmp_path):
    report = tmp_path / "r.csv"
    report.write_text("old\n")
    os.link(report, tmp_path / "other-name.csv")
    ino = report.stat().st_ino
    summary, result = scan_json(folder, "-m", model_dir, "--report", report, "--overwrite-report", "--review-sample", 3)
    assert summary["review_sample"] == 3 and report.stat().st_ino == ino  # written in place, not renamed over
    assert not any(r["review"] for r in csv_rows(report))
    assert "not marked" in result.stderr


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_link_or_fifo_report_refused(folder, model_dir, tmp_path, kind):
    target, report = tmp_path / "target.csv", tmp_path / "r.csv"
    if kind == "link":
        target.write_text("keep\n")
        report.symlink_to(target)
    else:
        os.mkfifo(report)
    result = invoke("scan", folder, "-m", model_dir, "--report", report, "--overwrite-report", "--no-cache")
    assert result.exit_code == 2
    if kind == "link":
        assert target.read_text() == "keep\n" and report.is_symlink()


def test_review_page_shows_sample(folder, model_dir, tmp_path):
    page = tmp_path / "page.html"
    summary, _ = scan_json(folder, "-m", model_dir, "--html", page, "--review-sample", 4)
    html = page.read_text()
    assert summary["review_sample"] == 4
    assert 'id="sample"' in html and "Review sample" in html and html.count("review: ") >= 4


def test_file_changed_after_its_record_is_not_sampled(folder, model_dir, tmp_path):
    from imgclean.pipeline.scan.sample_pass import choose_sample
    from imgclean.store.artifact import load_model

    bundle = load_model(model_dir)
    sampler = SampleCandidates(3)
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith("n_"))[:3]
    for name in names:
        st = os.stat(folder / name)
        sampler(ScanRecord(name, "ok", CLASSES[0], CLASSES[0], 0.5, size=st.st_size, mtime_ns=st.st_mtime_ns,
                           dev=st.st_dev, ino=st.st_ino))
    os.utime(folder / names[0], ns=(0, 12345))
    replaced = folder / names[1]
    (folder / "new.tmp").write_bytes(replaced.read_bytes())
    os.replace(folder / "new.tmp", replaced)  # same bytes, another inode
    os.utime(replaced, ns=(os.stat(folder / names[2]).st_atime_ns, sampler._reservoir[1].mtime_ns))
    chosen = choose_sample(bundle, folder, sampler)
    assert [s.path for s in chosen] == [names[2]]


def test_pool_size_is_review_samples():
    from imgclean.pipeline.scan import review_sample, sample_pass

    assert sample_pass.POOL == review_sample.POOL


def test_candidates_bounded_and_spread_over_classes():
    sampler = SampleCandidates(2, classes=3, seed=0)
    for i in range(3000):
        cls = "a" if i < 2900 else "b" if i < 2950 else "c"
        score = 0.9 if cls == "a" else 0.3
        sampler(ScanRecord(f"f{i}.png", "ok", cls, cls, score, size=10, mtime_ns=1, dev=1, ino=i + 1))
    for status in ("ood", "accepted", "skipped"):
        sampler(ScanRecord(f"{status}.png", status, "a", "a", 0.99, size=10, mtime_ns=1, dev=1, ino=99_999))
    pool, random_rows = sampler.pool()
    near = pool[:8]
    assert len(sampler._reservoir) == 4 and len(random_rows) <= 4
    assert {c.predicted for c in near} == {"a", "b", "c"}  # not eight of class a, though a scores highest
    assert all(isinstance(c, Candidate) and c.path.startswith("f") for c in pool)


def test_sample_spread_over_classes(folder, model_dir, tmp_path):
    report = tmp_path / "r.csv"
    scan_json(folder, "-m", model_dir, "--report", report, "--review-sample", 5)
    marked = [r for r in csv_rows(report) if r["review"]]
    assert len({r["predicted"] for r in marked}) >= 3


def test_api_scan_review_sample(folder, model_dir):
    from imgclean import api

    result = api.scan(folder, model_dir, review_sample=4)
    marked = [r for r in result.records if r.review]
    assert result.summary.review_sample == len(marked) == len(result.review_sample) == 4
    assert all(r.status == "ok" for r in marked)
    assert {p for p, _ in result.review_sample} == {r.path for r in marked}
    plain = api.scan(folder, model_dir)
    assert plain.review_sample == [] and not any(r.review for r in plain.records)
    with pytest.raises(api.ApiError):
        api.scan(folder, model_dir, review_sample=-1)


def test_settings_file_sets_review_sample(folder, model_dir, tmp_path):
    settings = tmp_path / "imgclean.yaml"
    settings.write_text("scan:\n  review-sample: 2\n")
    summary, _ = scan_json(folder, "-m", model_dir, "--config", settings)
    assert summary["review_sample"] == 2


def test_rescan_answered_by_the_cache_picks_no_sample(folder, model_dir, tmp_path, monkeypatch):
    from imgclean.store import cache as cache_module

    monkeypatch.setattr(cache_module, "RACY_SECONDS", 0.0)  # (files aged just now are cached all the same)
    cache = tmp_path / "cache"
    for picture in folder.iterdir():  # (files modified just now are never cached: they may still change)
        os.utime(picture, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    first = invoke("scan", folder, "-m", model_dir, "--json", "--cache-dir", cache, "--review-sample", 3)
    second = invoke("scan", folder, "-m", model_dir, "--json", "--cache-dir", cache, "--review-sample", 3)
    cold, warm = json.loads(first.stdout), json.loads(second.stdout)
    assert cold["review_sample"] == 3 and warm["decoded"] == 0 and warm["review_sample"] == 0
