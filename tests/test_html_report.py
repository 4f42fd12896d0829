"""The HTML review page: scan --html, imgclean report, escaping, caps, bad inputs."""
import base64
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ood_image, write_png
from imgclean.cli import app
from imgclean.reports.review import (
    ReviewCollector,
    ReviewInputError,
    histogram_svg,
    load_input,
    render_html,
    text,
    thumbnail_data_uri,
)

runner = CliRunner()
HOSTILE = "<script>alert(1)</script>.png"  # a folder "<script>alert(1)<" holding "script>.png"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def said(result, words: str) -> bool:
    """`words` is in the output whatever the terminal width: whitespace and box lines ignored."""
    def flat(s):
        return re.sub(r"[\s\u2500-\u257f]+", "", s)

    return flat(words) in flat(result.output)


class Page(HTMLParser):
    """Collects every tag's attributes (with the section it is in), the visible text, the scripts
    and the text of every <code> element of a page."""

    def __init__(self, source: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.sections: list[str | None] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.codes: list[str] = []
        self._in: str | None = None
        self._section: str | None = None
        self.feed(source)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs.get("id")
        self.tags.append((tag, attrs))
        self.sections.append(self._section)
        if tag == "script":
            self.scripts.append("")
            self._in = "script"
        elif tag == "code":
            self.codes.append("")
            self._in = "code"

    def handle_endtag(self, tag):
        if tag in ("script", "code"):
            self._in = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._in == "script":
            self.scripts[-1] += data
            return
        if self._in == "code":
            self.codes[-1] += data
        self.text.append(data)

    @property
    def imgs(self) -> list[dict]:
        return [a for t, a in self.tags if t == "img"]

    def imgs_in(self, *sections: str) -> list[dict]:
        return [a for (t, a), s in zip(self.tags, self.sections) if t == "img" and s in sections]

    @property
    def visible(self) -> str:
        return "".join(self.text)


def assert_self_contained(source: str) -> Page:
    """No fetch of any kind, and one inline script: the page's own, pinned by its CSP hash."""
    page = Page(source)
    assert len(page.scripts) == 1 and source.count("<script") == 1
    digest = base64.b64encode(hashlib.sha256(page.scripts[0].encode()).digest()).decode()
    csp = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp == [f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"]
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed"), tag
        assert tag != "script" or not attrs, attrs
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)  # no inline handlers
        for name in ("src", "href", "srcset", "action", "poster"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "file:", "javascript:")), (tag, name, value)
    for img in page.imgs:
        assert img["src"].startswith("data:image/"), img["src"][:40]
        assert img.get("loading") == "lazy"
    assert "url(" not in source and "@import" not in source
    return page


def section(source: str, sid: str) -> str:
    start = source.index(f'<section id="{sid}"')
    return source[start:source.index("</section>", start)]


def read_page(path: Path) -> str:
    return path.read_bytes().decode("utf-8")  # strict: the page is valid UTF-8 whatever the names


def add_hostile_files(root: Path) -> list[str]:
    """Broken files (always rejected as unreadable) whose names try to break the page."""
    (root / "<script>alert(1)<").mkdir()
    bad = b"not an image"
    (root / "<script>alert(1)<" / "script>.png").write_bytes(bad)
    (root / 'q"uo\'te & <img src=x onerror=alert(2)>\nnew.png').write_bytes(bad)
    os.makedirs(root / "sub", exist_ok=True)
    with open(os.fsencode(root / "sub") + b"/latin\xc3\xa9\xff.png", "wb") as fh:
        fh.write(bad)
    return [HOSTILE, 'q"uo\'te & <img src=x onerror=alert(2)>\nnew.png']


# ----------------------------------------------------------------------------- scan --html


def test_scan_html_page_lists_rejects_with_inlined_thumbnails(model_dir, incoming, tmp_path):
    folder, kinds = incoming
    add_hostile_files(folder)
    page_path, report, quarantine = tmp_path / "review.html", tmp_path / "r.jsonl", tmp_path / "q"
    result = invoke("scan", folder, "-m", model_dir, "--move-to", quarantine, "--report", report, "--html", page_path, "-q")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in report.read_text().splitlines()]
    rejected = [r for r in records if r["status"] in ("ood", "unreadable", "too_large", "unsupported")]
    ood = [r for r in rejected if r["status"] == "ood"]
    assert ood and len(rejected) >= 4

    source = read_page(page_path)
    page = assert_self_contained(source)
    visible = page.visible
    # summary counts by status
    for status in ("ok", "ood", "unreadable"):
        n = sum(r["status"] == status for r in records)
        assert f'<div class="n">{n}</div><div class="k">{status}</div>' in source
    assert f'<div class="n">{len(records)}</div><div class="k">files</div>' in source
    assert f'<div class="n">{len(rejected)}</div><div class="k">moved</div>' in source
    # every rejected file is listed, and every OOD one has an inlined thumbnail of the moved file
    for r in rejected:
        assert text(r["path"]) in source, r["path"]
    assert len(page.imgs_in("ood")) == len(ood) and len(page.imgs_in("unreadable")) == 0
    assert "broken.png" in visible and "unreadable" in visible
    # OOD rows come highest score first, each shown against its threshold
    shown = [r["path"] for r in sorted(ood, key=lambda r: -r["score"])]
    positions = [source.index(f'<div class="path">{text(p)}</div>') for p in shown]
    assert positions == sorted(positions)
    top = max(ood, key=lambda r: r["score"])
    assert f"{top['score']:.2f} &#215; threshold" in source or f"{top['score']:.4f}".rstrip("0") in source
    # where each file went
    for r in ood:
        assert text(r["destination"]) in source
    # histograms: one per nearest class, with the threshold marked
    nearest = {r["nearest"] for r in records if r["nearest"]}
    assert source.count("<svg") == len(nearest)
    assert source.count('class="thr"') == len(nearest)


def test_hostile_names_are_escaped(model_dir, incoming, tmp_path):
    folder, _ = incoming
    names = add_hostile_files(folder)
    page_path = tmp_path / "review.html"
    result = invoke("scan", folder, "-m", model_dir, "--html", page_path, "-q")
    assert result.exit_code == 0, result.output
    source = read_page(page_path)
    assert source.count("<script") == 1 and "alert(1)</script>" not in source  # the one is the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in source
    assert "<img src=x" not in source and "onerror" not in source.replace("onerror=alert(2)&gt;", "")
    assert "q&quot;uo&#x27;te &amp; &lt;img src=x onerror=alert(2)&gt;\\nnew.png" in source  # newline shown as \n
    assert "sub/latin\u00e9\\xff.png" in source  # undecodable byte shown as \xff
    page = assert_self_contained(source)
    for name in names:
        assert name.replace("\n", "\\n") in page.visible


def test_scan_html_bad_target_is_a_usage_error(model_dir, incoming, tmp_path):
    folder, _ = incoming
    result = invoke("scan", folder, "-m", model_dir, "--html", tmp_path / "nope" / "r.html")
    assert result.exit_code == 2 and said(result, "does not exist")
    result = invoke("scan", folder, "-m", model_dir, "--html", tmp_path)
    assert result.exit_code == 2 and said(result, "is a folder")


# ----------------------------------------------------------------------------- caps


def write_rejects(root: Path, n: int) -> list[dict]:
    rng = np.random.default_rng(5)
    records = []
    for i in range(n):
        write_png(root / f"r{i:02d}.png", ood_image(rng))
        records.append({"path": f"r{i:02d}.png", "status": "ood", "predicted": "a", "nearest": "a", "score": 1.1 + i / 10})
    records.append({"path": "fine.png", "status": "ok", "predicted": "a", "nearest": "a", "score": 0.4})
    return records


def test_thumbnail_and_row_caps(tmp_path):
    records = write_rejects(tmp_path, 7)
    collector = ReviewCollector(root=tmp_path)
    for r in records:
        collector.add(r)
    source = render_html(collector, max_thumbnails=2)
    page = assert_self_contained(source)
    assert len(page.imgs) == 2
    # the two thumbnails are the two highest scores
    assert [img["alt"] for img in page.imgs] == ["r06.png", "r05.png"]
    assert "5 more are listed without one" in source
    assert section(source, "ood").count("thumbnail cap reached") == 5
    assert section(source, "borderline").count("thumbnail cap reached") == 1  # fine.png: rejects come first

    capped = ReviewCollector(root=tmp_path, max_rows=3)
    for r in records:
        capped.add(r)
    assert [i.path for i in capped.rows("ood")] == ["r06.png", "r05.png", "r04.png"]
    source = render_html(capped)
    assert "4 more not listed here" in source
    assert "r03.png" not in source and "r06.png" in source
    assert capped.counts == {"ood": 7, "ok": 1}  # counts cover every record


def test_rows_are_paged_in_blocks(tmp_path):
    collector = ReviewCollector()
    for i in range(250):
        collector.add({"path": f"x{i}.png", "status": "unreadable", "message": "broken"})
    source = render_html(collector)
    assert source.count('<details class="page"') == 3
    assert source.count('<details class="page" open>') == 1


def test_report_command_thumbnail_cap(model_dir, incoming, tmp_path):
    folder, _ = incoming
    rng = np.random.default_rng(9)
    for i in range(6):
        write_png(folder / f"extra_odd_{i}.png", ood_image(rng))
    report = tmp_path / "r.csv"
    assert invoke("scan", folder, "-m", model_dir, "--report", report, "-q").exit_code == 0
    n_ood = sum(r["status"] == "ood" for r in csv.DictReader(report.open()))
    assert n_ood > 2
    out = tmp_path / "page.html"
    result = invoke("report", report, "-o", out, "--root", folder, "--max-thumbnails", "2")
    assert result.exit_code == 0, result.output
    page = assert_self_contained(read_page(out))
    assert len(page.imgs) == 2
    assert f"{n_ood - 2} more are listed without one" in page.visible


# ----------------------------------------------------------------------------- imgclean report


@pytest.fixture
def scanned(model_dir, incoming, tmp_path):
    """One report-only scan (JSON lines) and one moving scan (CSV + manifest) of the same files."""
    folder, _ = incoming
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    jsonl, csv_report, quarantine = tmp_path / "r.jsonl", tmp_path / "r.csv", tmp_path / "q"
    # (no review sample: the tiny folder's accepted files would all be in it, none borderline)
    assert invoke("scan", copy, "-m", model_dir, "--report", jsonl, "-q", "--review-sample", 0).exit_code == 0
    assert invoke("scan", folder, "-m", model_dir, "--move-to", quarantine, "--report", csv_report, "-q").exit_code == 0
    rows = list(csv.DictReader(csv_report.open()))
    rejected = [r for r in rows if r["status"] != "ok"]
    return {"folder": folder, "copy": copy, "jsonl": jsonl, "csv": csv_report, "q": quarantine, "rejected": rejected}


def test_report_from_csv_uses_moved_files(scanned, tmp_path):
    out = tmp_path / "a.html"
    result = invoke("report", scanned["csv"], "-o", out)
    assert result.exit_code == 0, result.output
    source = read_page(out)
    page = assert_self_contained(source)
    for r in scanned["rejected"]:
        assert text(r["path"]) in source
    assert len(page.imgs) == sum(r["status"] == "ood" for r in scanned["rejected"])
    assert "scan report (CSV)" in page.visible
    # the quarantine is found from each destination (the folder above it that holds the manifest)
    q = os.fsdecode(scanned["q"].absolute())
    assert sorted(page.codes) == sorted(f"imgclean restore {q} {r['destination']}" for r in scanned["rejected"])


def test_report_from_jsonl_needs_root_for_thumbnails(scanned, tmp_path):
    out = tmp_path / "b.html"
    result = invoke("report", scanned["jsonl"], "-o", out)
    assert result.exit_code == 0, result.output
    page = assert_self_contained(read_page(out))
    assert page.imgs == [] and "give --root" in page.visible
    assert page.codes == []  # a report-only scan moved nothing: nothing to restore
    for r in scanned["rejected"]:
        assert r["path"] in page.visible
    result = invoke("report", scanned["jsonl"], "-o", out, "--root", scanned["copy"])
    assert result.exit_code == 0, result.output
    page = assert_self_contained(read_page(out))
    assert len(page.imgs_in("ood")) == sum(r["status"] == "ood" for r in scanned["rejected"]) > 0
    assert page.imgs_in("borderline")  # accepted files are where they were: --root finds them


def test_report_from_manifest_and_quarantine_folder(scanned, tmp_path):
    manifest = scanned["q"] / "imgclean-manifest.jsonl"
    n_ood = sum(r["status"] == "ood" for r in scanned["rejected"])
    for source_arg in (manifest, scanned["q"]):
        out = tmp_path / "c.html"
        result = invoke("report", source_arg, "-o", out)
        assert result.exit_code == 0, result.output
        source = read_page(out)
        page = assert_self_contained(source)
        assert "quarantine manifest" in page.visible
        assert len(page.imgs) == n_ood
        for r in scanned["rejected"]:
            assert text(r["path"]) in source
            assert text(r["destination"]) in source
        # scores and classes come from the journal's details
        top = max((r for r in scanned["rejected"] if r["score"]), key=lambda r: float(r["score"]))
        assert f"{float(top['score']):.2f}" in source and "&#215; threshold" in source
    assert len(page.codes) == len(scanned["rejected"])  # a restore command for each moved file
    # the reviewer deletes one reject from the quarantine, then restores the rest: the page shows
    # the restored files where they are again, and the deleted one as discarded
    from imgclean.quarantine.moves import restore

    deleted = next(r for r in scanned["rejected"] if r["status"] == "ood")
    os.unlink(deleted["destination"])
    restore(scanned["q"])
    out = tmp_path / "d.html"
    assert invoke("report", manifest, "-o", out).exit_code == 0
    source = read_page(out)
    page = assert_self_contained(source)
    assert page.visible.count("back at its original place") == len(scanned["rejected"]) - 1
    assert f'<div class="n">{len(scanned["rejected"]) - 1}</div><div class="k">restored</div>' in source
    assert '<div class="n">1</div><div class="k">discarded</div>' in source
    assert len(page.imgs) == n_ood - 1 and "file not found" not in source
    assert page.codes == []  # nothing left to restore


@pytest.mark.parametrize(
    "name, content",
    [
        ("garbage.csv", b"\x00\x01\x02garbage\xff\xfe\n\x00\x00"),
        ("garbage.csv", b"a,b,c\n1,2,3\n"),
        ("garbage.jsonl", b"{not json\n"),
        ("garbage.jsonl", b"[1, 2]\n"),
        ("garbage.jsonl", b'{"hello": "world"}\n'),
        ("empty.csv", b""),
        ("notes.txt", b"path,status\n"),
        ("r.csv", b"path,status,score\nx.png,ood,lots\n"),
        ("imgclean-manifest.jsonl", b"garbage\x00\xff\n"),
    ],
)
def test_report_rejects_bad_input_clearly(tmp_path, name, content):
    # In a folder of its own: a file named imgclean-manifest.jsonl makes its folder a quarantine,
    # and no output may be written into one.
    bad = tmp_path / "in" / name
    bad.parent.mkdir()
    bad.write_bytes(content)
    result = invoke("report", bad, "-o", tmp_path / "out.html")
    # a name no report format has is a usage error (exit 2), as for scan --report and apply
    assert result.exit_code == (2 if name == "notes.txt" else 1), result.output
    assert said(result, "error:") and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out.html").exists()


def test_report_usage_errors(tmp_path):
    result = invoke("report", tmp_path / "missing.csv", "-o", tmp_path / "out.html")
    assert result.exit_code == 2 and said(result, "does not exist")
    result = invoke("report", tmp_path, "-o", tmp_path / "out.html")
    assert result.exit_code == 1 and said(result, "imgclean-manifest.jsonl")
    same = tmp_path / "r.jsonl"
    same.write_text('{"path": "a.png", "status": "ok"}\n')
    result = invoke("report", same, "-o", same)
    assert result.exit_code == 2 and said(result, "overwrite")
    assert same.read_text() == '{"path": "a.png", "status": "ok"}\n'


# ----------------------------------------------------------------------------- pieces


def test_text_escapes_and_shows_control_and_undecodable_characters():
    assert text('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
    assert text("a\nb\tc\x00") == "a\\nb\\tc\\x00"
    assert text(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert text("\ud800") == "\\ud800"
    assert text("é ✓") == "é ✓"
    text("\udcff\n<").encode("utf-8")  # always encodable


def test_histogram_counts_and_threshold():
    svg, caption = histogram_svg([0.2, 0.5, 0.5, 0.9, 1.5, 2.5, 100.0, float("inf")], "a<b")
    assert caption == "8 scored, 4 over the threshold"
    assert svg.count('class="thr"') == 1 and "a&lt;b" in svg
    page = Page(svg)
    bars = [a for t, a in page.tags if t == "rect" and a.get("class", "").startswith("bar")]
    assert len(bars) >= 4
    over = [a for a in bars if a["class"] == "bar over"]
    under = [a for a in bars if a["class"] == "bar"]
    # red bars lie right of the threshold line, blue ones left of it
    line_x = float([a for t, a in page.tags if t == "line"][0]["x1"])
    assert all(float(a["x"]) >= line_x - 0.6 for a in over) and all(float(a["x"]) < line_x for a in under)


def test_thumbnails_never_raise(tmp_path):
    from PIL import Image

    good = write_png(tmp_path / "g.png", np.full((20, 30), 200, np.uint8))
    uri, why = thumbnail_data_uri(good)
    assert uri.startswith("data:image/png;base64,") and why == ""
    big = tmp_path / "big.jpg"
    Image.new("RGB", (400, 300), (10, 200, 30)).save(big)
    uri, _ = thumbnail_data_uri(big)
    assert uri.startswith("data:image/jpeg;base64,")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    assert thumbnail_data_uri(tmp_path / "broken.png")[0] is None
    assert thumbnail_data_uri(tmp_path / "missing.png") == (None, "file not found")
    os.symlink(good, tmp_path / "link.png")
    assert thumbnail_data_uri(tmp_path / "link.png")[0] is None
    os.mkfifo(tmp_path / "fifo.png")
    assert thumbnail_data_uri(tmp_path / "fifo.png") == (None, "not a regular file")
    huge = tmp_path / "huge.png"
    Image.new("1", (8100, 8000)).save(huge)  # 64.8 megapixels: over the scan limit
    assert thumbnail_data_uri(huge) == (None, "too large to preview")


def test_load_input_errors_are_review_input_errors(tmp_path):
    with pytest.raises(ReviewInputError, match="does not exist"):
        load_input(tmp_path / "nope.csv")
    (tmp_path / "x.csv").write_text("path,status\n")
    collector, info = load_input(tmp_path / "x.csv")
    assert collector.total == 0 and info["kind"] == "scan report (CSV)"


def test_interrupted_scan_still_writes_a_page_that_says_so(model_dir, incoming, tmp_path, monkeypatch):
    from imgclean import cli

    folder, _ = incoming
    monkeypatch.setattr(cli.StopFlag, "__call__", lambda self: True)  # as if SIGTERM came at once
    out = tmp_path / "review.html"
    # (a scan stops after the batch in hand: batches of one file, so that is one file)
    result = invoke("scan", folder, "-m", model_dir, "--html", out, "-q", "--batch-size", "1")
    assert result.exit_code == cli.EXIT_TERMINATED, result.output
    source = read_page(out)
    assert "The scan was interrupted" in source
    assert '<div class="n">1</div><div class="k">files</div>' in source


# ----------------------------------------------------------------------------- finishing a review


def journal(quarantine: Path, *records: dict) -> Path:
    quarantine.mkdir(parents=True, exist_ok=True)
    manifest = quarantine / "imgclean-manifest.jsonl"
    with open(manifest, "a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=True) + "\n")
    return manifest


def move_records(mid: str, source: Path, dest: Path, root: Path, score: float) -> list[dict]:
    started = {"op": "move", "id": mid, "state": "started", "source": os.fsdecode(source), "destination": os.fsdecode(dest),
               "reason": "ood", "scan_root": os.fsdecode(root), "details": {"score": score, "predicted": "a", "nearest": "b"}}
    return [started, {"op": "move", "id": mid, "state": "done"}]


def restore_records(rid: str, mid: str, source: Path, dest: Path, *states: str) -> list[dict]:
    recs = [{"op": "restore", "id": rid, "move_id": mid, "state": "started", "source": os.fsdecode(dest), "destination": os.fsdecode(source)}]
    return recs + [{"op": "restore", "id": rid, "state": s} for s in states]


def test_report_shows_restored_files_where_they_are_and_discarded_ones_as_discarded(tmp_path):
    root, q = tmp_path / "photos", tmp_path / "q"
    rng = np.random.default_rng(3)
    names = {"held": 1.5, "restored": 1.4, "deleted": 1.3, "cut": 1.2}
    records = []
    for i, (name, score) in enumerate(names.items()):
        src, dst = root / f"{name}.png", q / f"{name}.png"
        records += move_records(f"m{i}", src, dst, root, score)
        if name != "deleted":  # the reviewer deleted that one from the quarantine: in neither place
            write_png(src if name in ("restored", "cut") else dst, ood_image(rng))
        if name == "restored":
            records += restore_records("r1", f"m{i}", src, dst, "done")
        if name == "cut":  # a restore cut by a crash: the file is back, the journal unfinished
            records += restore_records("r2", f"m{i}", src, dst)
    manifest = journal(q, *records)

    collector, info = load_input(q)
    by_path = {item.path: item for item in collector.rows("ood")}
    assert {p: i.action for p, i in by_path.items()} == {
        "held.png": "moved", "restored.png": "restored", "deleted.png": "discarded", "cut.png": "restore unfinished"}
    assert by_path["restored.png"].location == os.fsdecode(root / "restored.png")
    assert by_path["cut.png"].location == os.fsdecode(root / "cut.png")
    assert collector.actions == {"moved": 1, "restored": 1, "discarded": 1, "restore unfinished": 1}

    out = tmp_path / "page.html"
    result = invoke("report", manifest, "-o", out)
    assert result.exit_code == 0, result.output
    source = read_page(out)
    page = assert_self_contained(source)
    # thumbnails: the held file in the quarantine, the restored ones at their original place
    assert sorted(img["alt"] for img in page.imgs) == ["cut.png", "held.png", "restored.png"]
    assert "file not found" not in source
    assert "discarded (deleted from the quarantine)" in page.visible
    assert "back at its original place" in page.visible
    assert '<div class="n">1</div><div class="k">discarded</div>' in source
    # only the file still in the quarantine gets a restore command
    assert page.codes == [f"imgclean restore {q} {q / 'held.png'}"]


def test_borderline_lists_the_accepted_files_with_the_highest_scores(tmp_path):
    rng = np.random.default_rng(4)
    collector = ReviewCollector(root=tmp_path)
    for i in range(60):
        write_png(tmp_path / f"ok{i:02d}.png", ood_image(rng))
        collector.add({"path": f"ok{i:02d}.png", "status": "ok", "predicted": "a", "nearest": "a", "score": i / 60})
    collector.add({"path": "unscored.png", "status": "ok"})
    collector.add({"path": "bad.png", "status": "ood", "predicted": "a", "nearest": "b", "score": 3.0})
    assert [i.path for i in collector.borderline()] == [f"ok{i:02d}.png" for i in range(59, 9, -1)]  # top 50
    source = render_html(collector)
    page = assert_self_contained(source)
    border = section(source, "borderline")
    assert "(50 of 61 ok)" in border and "ok09.png" not in border and "unscored.png" not in border
    assert [img["alt"] for img in page.imgs_in("borderline")] == [f"ok{i:02d}.png" for i in range(59, 9, -1)]
    assert border.count('class="score under"') == 50 and "kept" in border
    assert '<a href="#borderline">Borderline (50)</a>' in source
    assert ReviewCollector(borderline=0).borderline() == []


def test_page_explains_predicted_and_nearest_once():
    collector = ReviewCollector()
    collector.add({"path": "x.png", "status": "ood", "predicted": "cat", "nearest": "dog", "score": 2.0})
    page = Page(render_html(collector))
    line = [t for t in page.text if "is the class the classifier picks" in t]
    assert page.visible.count("is the class the classifier picks") == 1
    assert "Predicted is the class the classifier picks; nearest is the class whose Mahalanobis distance, " \
           "divided by that class\u2019s threshold, is smallest." in page.visible, line


@pytest.mark.parametrize("n, grid", [(100, False), (101, True)])
def test_large_runs_open_in_the_grid_view(n, grid):
    collector = ReviewCollector()
    for i in range(n):
        collector.add({"path": f"x{i}.png", "status": "ood", "score": 2.0})
    page = Page(render_html(collector, grid_after=100))
    checked = [a["id"] for t, a in page.tags if t == "input" and "checked" in a]
    assert checked == (["view-grid"] if grid else ["view-list"])
    labels = [a["for"] for t, a in page.tags if t == "label"]
    assert labels == ["view-list", "view-grid"]  # switchable either way, without scripts
    assert ("(grid: more than 100 rejects)" in page.visible) is grid


HOSTILE_DESTINATIONS = [
    "plain.png",
    "it's \"quoted\".png",
    "$(touch PWNED).png",
    "`touch PWNED`.png",
    "semi; touch PWNED.png",
    "new\nline; touch PWNED.png",
    "tab\there & <script>x</script>.png",
    "-rf.png",
    "bidi\u202egnp.exe.png",
    os.fsdecode(b"latin\xe9\xff.png"),
    "caf\u00e9 \u2713.png",
]


def run_pasted(shell: str, command: str, cwd: Path) -> list[list[bytes]]:
    """Run `command` as if pasted into `shell`, with imgclean a stub that logs its arguments."""
    log = cwd / "calls.log"
    stub = f'imgclean() {{ printf "CALL\\0" >> {log}; printf "%s\\0" "$@" >> {log}; }}\n'
    subprocess.run([shell, "-c", stub + command], cwd=cwd, check=True, timeout=30)
    calls = log.read_bytes().split(b"CALL\0")[1:]
    log.unlink()
    return [c.split(b"\0")[:-1] for c in calls]


def test_restore_commands_paste_as_exactly_one_imgclean_command(tmp_path):
    q = tmp_path / "q u'ote"
    journal(q)
    collector = ReviewCollector(quarantine=q)
    for name in HOSTILE_DESTINATIONS:
        collector.add({"path": name, "status": "ood", "score": 2.0, "action": "moved", "destination": os.fsdecode(q / "sub" / name)})
    source = render_html(collector)
    source.encode("utf-8")  # the page is valid UTF-8 whatever the bytes of a name
    page = assert_self_contained(source)
    assert "<script>x" not in source and "touch PWNED" in page.visible
    assert len(page.codes) == len(HOSTILE_DESTINATIONS)
    work = tmp_path / "work"
    work.mkdir()
    for name, command in zip(HOSTILE_DESTINATIONS, page.codes):  # rows of equal score keep their order
        assert command.isprintable(), command  # what the page shows is what is copied
        calls = run_pasted("bash", command, work)
        assert calls == [[b"restore", os.fsencode(q), os.fsencode(q / "sub" / name)]], command
        if name.isprintable():  # plain single quotes: any POSIX sh
            assert run_pasted("sh", command, work) == calls
    assert not (work / "PWNED").exists() and not (tmp_path / "PWNED").exists()


def test_restore_commands_of_a_real_scan_name_the_quarantined_files(model_dir, incoming, tmp_path):
    folder, _ = incoming
    add_hostile_files(folder)
    q, out = tmp_path / "q", tmp_path / "review.html"
    result = invoke("scan", folder, "-m", model_dir, "--move-to", q, "--html", out, "-q")
    assert result.exit_code == 0, result.output
    page = assert_self_contained(read_page(out))
    moved = [a for a in page.tags if a[0] == "button" and a[1].get("class") == "copy"
             and a[1].get("title") == "copy the restore command"]
    assert len(page.codes) == len(moved) >= 4
    work = tmp_path / "work"
    work.mkdir()
    targets = set()
    for command in page.codes:
        [call] = run_pasted("bash", command, work)
        assert call[:2] == [b"restore", os.fsencode(q.absolute())]
        assert os.path.isfile(call[2]) and call[2].startswith(os.fsencode(q.absolute()) + b"/")
        targets.add(call[2])
    quarantined = {os.path.join(d, f) for d, _, fs in os.walk(os.fsencode(q)) for f in fs if not f.startswith(b".")}
    quarantined = {os.path.abspath(p) for p in quarantined if not p.endswith((b"imgclean-manifest.jsonl", b"imgclean-features.bin"))}
    assert targets == quarantined  # one command per quarantined file, hostile names included
