"""The seams of issue 11 on the records side: the exit-code rules, the one journal fold, the
record type the review page builds on, and the inference batch on CUDA."""
import dataclasses
import json

import numpy as np
import pytest

from imgclean.cli.common import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, EXIT_SKIPPED, EXIT_TERMINATED, exit_code
from imgclean.pipeline.apply.applier import ApplySummary, ScanSummary
from imgclean.quarantine.journal import MANIFEST_NAME, fold, read_lines
from imgclean.reports.records import ScanRecord
from imgclean.reports.review.collector import ReviewItem


def summary(**kw):
    s = ScanSummary(root="/r", model="m")
    counts = kw.pop("counts", {})
    s.counts.update(counts)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.mark.parametrize("case, flags, expected", [
    (dict(), {}, EXIT_OK),
    (dict(counts={"ood": 2}), {}, EXIT_OK),
    (dict(counts={"ood": 2}), {"fail_on_reject": True}, EXIT_REJECTED),
    (dict(counts={"skipped": 1}), {"fail_on_skip": True}, EXIT_SKIPPED),
    (dict(counts={"changed": 1}), {"fail_on_skip": True}, EXIT_SKIPPED),
    (dict(counts={"ood": 1, "changed": 1}), {"fail_on_reject": True, "fail_on_skip": True}, EXIT_REJECTED),
    (dict(move_errors=1, counts={"ood": 1}), {"fail_on_reject": True}, EXIT_ERROR),
    (dict(interrupted=True, move_errors=1), {"stop_code": EXIT_TERMINATED}, EXIT_TERMINATED),
])
def test_exit_code_rules(case, flags, expected):
    code, message = exit_code(summary(**case), **flags)
    assert code == expected
    assert bool(message) == (expected == EXIT_ERROR)


def test_invalid_report_rows_fail_an_apply():
    s = ApplySummary(root="/r", model="", report="r.jsonl", invalid=2)
    code, message = exit_code(s)
    assert code == EXIT_ERROR and "2 record(s) of r.jsonl" in message


def test_review_item_is_a_scan_record():
    assert issubclass(ReviewItem, ScanRecord)
    own = {f.name for f in dataclasses.fields(ReviewItem)} - {f.name for f in dataclasses.fields(ScanRecord)}
    assert own == {"location", "quarantine", "root", "checked"}  # where it is, and what its commands may name


def test_one_fold_serves_restore_and_the_review_page(tmp_path):
    """A restore done, one cut by a crash, one found deleted: the fold says each move's latest
    restore, strict (restore, recovery) and shape-only (the page) alike."""
    q = tmp_path / "q"
    q.mkdir()
    sha = "0" * 64

    def move(mid):
        return {"op": "move", "id": mid, "state": "started", "source": str(tmp_path / "r" / f"{mid}.png"),
                "destination": str(q / f"{mid}.png"), "size": 1, "mtime_ns": 1, "sha256": sha,
                "reason": "ood", "scan_root": str(tmp_path / "r"), "details": {}}

    def restore(rid, mid):
        return {"op": "restore", "id": rid, "move_id": mid, "state": "started", "source": str(q / f"{mid}.png"),
                "destination": str(tmp_path / "r" / f"{mid}.png"), "size": 1, "mtime_ns": 1, "sha256": sha,
                "scan_root": str(tmp_path / "r")}

    lines = [move("a"), {"op": "move", "id": "a", "state": "done"}, move("b"), {"op": "move", "id": "b", "state": "done"},
             move("c"), {"op": "move", "id": "c", "state": "done"}, restore("ra", "a"),
             {"op": "restore", "id": "ra", "state": "done"}, restore("rb", "b"), restore("rc", "c"),
             {"op": "restore", "id": "rc", "state": "missing"}, {"op": "move", "id": "zz", "state": "done"}, "junk"]
    (q / MANIFEST_NAME).write_text("".join(json.dumps(x) + "\n" for x in lines))
    for strict in (True, False):
        journal = fold(q, read_lines(q / MANIFEST_NAME), strict=strict)
        assert [(m["id"], r) for m, r in journal.moves()] == [("a", "done"), ("b", "started"), ("c", "missing")]
        assert [op["id"] for op in journal.unfinished()] == ["rb"]
        assert [i.line for i in journal.invalid] == [13]
    journal = fold(q)
    journal.append({"op": "restore", "id": "rb", "state": "done"})
    assert dict((m["id"], r) for m, r in journal.moves())["b"] == "done" and journal.unfinished() == []


def test_scan_lets_the_runtime_pick_the_batch_on_cuda(model_dir, monkeypatch):
    from imgclean.nn import runtime
    from imgclean.pipeline.scan.scanner import Scorer
    from imgclean.store.artifact import load_model

    seen = []

    def fake_predict(model, images, mean, std, device, batch_size=None):
        seen.append(batch_size)
        n = len(images)
        return np.zeros((n, 3), np.float32), np.zeros((n, 8), np.float32)

    monkeypatch.setattr(runtime, "predict_arrays", fake_predict)
    monkeypatch.setattr(runtime, "prepare_for_inference", lambda *a, **k: None)
    bundle = load_model(model_dir, device="cpu", lazy=True)
    images = np.zeros((2, 16, 16, 1), np.uint8)
    for device in ("cuda", "cpu"):
        scorer = Scorer(bundle, batch_size=7, device=device)
        monkeypatch.setattr("imgclean.pipeline.engines.scoring.score_outputs", lambda *a: (np.zeros(2), np.zeros(2), np.zeros(2)))
        scorer.score_arrays(images)
    assert seen == [None, 7]
