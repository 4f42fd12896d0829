"""imgclean.api: the CLI's jobs as functions that never print, with the CLI's safety."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import make_incoming_folder, tree_snapshot, write_png
from synthetic import class_image
from imgclean import api
from imgclean.errors import ImgcleanError
from imgclean.quarantine.locking import LockHeld, ScanLock
from imgclean.quarantine.moves import read_manifest


def test_fit_saves_a_model_that_load_reads_back(train_dir, tmp_path, capsys):
    model = api.fit(train_dir, tmp_path / "m", epochs=1, min_steps=0, batch_size=16, device="cpu")
    assert model.path is not None and (tmp_path / "m" / "config.json").is_file()
    loaded = api.load(tmp_path / "m")
    assert loaded.class_names == model.class_names and loaded.fingerprint == api.load(model.path).fingerprint
    with pytest.raises(ImgcleanError, match="already exists|--force|force"):
        api.fit(train_dir, tmp_path / "m", epochs=1, min_steps=0, device="cpu")
    assert capsys.readouterr() == ("", "")  # the library never prints


def test_fit_refuses_unknown_settings_and_missing_folders(train_dir, tmp_path):
    with pytest.raises(api.ApiError, match="epoch"):
        api.fit(train_dir, epoch=3)  # a typo of epochs
    with pytest.raises(api.ApiError, match="does not exist"):
        api.fit(tmp_path / "nowhere")


def test_scan_reports_then_moves_like_the_cli(model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    kinds = make_incoming_folder(folder)
    before = tree_snapshot(folder)
    looked = api.scan(folder, model_dir, device="cpu")
    assert tree_snapshot(folder) == before  # no move_to: nothing changes
    assert sorted(r.path for r in looked.records) == sorted(kinds)
    assert looked.summary.scanned == len(kinds) and looked.summary.rejected >= 1
    assert looked.exit_code == 0 and looked.error_line == ""  # the result owns the CLI's exit code
    rejected = {r.path for r in looked.records if r.status != "ok"}
    assert "broken.png" in rejected

    moved = api.scan(folder, model_dir, move_to=tmp_path / "q", device="cpu")
    assert moved.summary.moved == len(rejected)
    assert {r.path for r in moved.records if r.action == "moved"} == rejected
    assert all(not (folder / p).exists() and (tmp_path / "q" / p).is_file() for p in rejected)
    assert len([r for r in read_manifest(tmp_path / "q") if r.get("state") == "done"]) == len(rejected)
    assert capsys.readouterr() == ("", "")

    back = api.restore(tmp_path / "q")
    assert sorted(os.path.basename(os.fsdecode(r.source)) for r in back if r.status == "restored") == sorted(rejected)
    assert tree_snapshot(folder) == before


def test_scan_streams_records_without_keeping_them(model_dir, tmp_path):
    folder = tmp_path / "in"
    make_incoming_folder(folder)
    seen = []
    result = api.scan(folder, model_dir, device="cpu", keep_records=False, on_record=seen.append)
    assert result.records == [] and len(seen) == result.summary.scanned > 0


def test_scan_dry_run_plans_and_changes_nothing(model_dir, tmp_path):
    folder = tmp_path / "in"
    make_incoming_folder(folder)
    before = tree_snapshot(folder)
    result = api.scan(folder, model_dir, move_to=tmp_path / "q", dry_run=True, device="cpu")
    assert result.summary.would_move >= 1 and result.summary.moved == 0
    assert tree_snapshot(folder) == before and not (tmp_path / "q").exists()


def test_scan_refuses_what_the_cli_refuses(model_dir, tmp_path):
    folder = tmp_path / "in"
    make_incoming_folder(folder)
    with pytest.raises(ImgcleanError, match="contains it"):
        api.scan(folder, model_dir, move_to=tmp_path, device="cpu")
    with pytest.raises(ImgcleanError, match="no supervised head"):
        api.scan(folder, model_dir, method="head", device="cpu")
    with pytest.raises(ImgcleanError, match="unknown method"):
        api.scan(folder, model_dir, method="nope", device="cpu")
    with pytest.raises(api.ApiError, match="--move-to"):  # the CLI's message: options as the CLI spells them
        api.scan(folder, model_dir, dry_run=True, device="cpu")
    with pytest.raises(ImgcleanError):
        api.scan(folder, tmp_path / "no-model", device="cpu")
    before = tree_snapshot(folder)
    with pytest.raises(api.ApiError, match="inside the scanned folder"):
        api.scan(folder, model_dir, use_cache=True, cache_dir=folder / "cache", device="cpu")
    assert tree_snapshot(folder) == before  # no cache database written into the folder


def test_a_moving_scan_takes_the_folder_lock(model_dir, tmp_path):
    folder = tmp_path / "in"
    make_incoming_folder(folder)
    before = tree_snapshot(folder)
    with ScanLock(folder):
        with pytest.raises(LockHeld):
            api.scan(folder, model_dir, move_to=tmp_path / "q", device="cpu")
    assert tree_snapshot(folder) == before


def test_apply_replays_a_saved_report(model_dir, tmp_path):
    a = tmp_path / "a"
    make_incoming_folder(a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    direct = api.scan(a, model_dir, move_to=tmp_path / "qa", device="cpu")
    from imgclean.reports.records import RecordWriter

    report = tmp_path / "r.jsonl"
    with RecordWriter(report, b) as writer:
        api.scan(b, model_dir, device="cpu", keep_records=False, on_record=writer)
    applied = api.apply(report, tmp_path / "qb")
    assert applied.summary.moved == direct.summary.moved >= 1 and not applied.invalid
    assert sorted(p for p in tree_snapshot(tmp_path / "qa") if not p.startswith("imgclean-manifest")) == \
        sorted(p for p in tree_snapshot(tmp_path / "qb") if not p.startswith("imgclean-manifest"))
    again = api.apply(report, tmp_path / "qb")
    assert again.summary.moved == 0  # the files are gone: nothing moves twice
    with pytest.raises(api.ApiError, match="does not exist"):
        api.apply(tmp_path / "none.jsonl", tmp_path / "qb")


def test_evaluate_returns_the_cli_metrics(model_dir, train_dir, tmp_path):
    ood = tmp_path / "ood"
    make_incoming_folder(ood, normal=0, ood=6)
    result = api.evaluate(model_dir, train_dir, ood, device="cpu")
    assert 0.0 <= result.results["mahalanobis"]["auroc"] <= 1.0
    assert result.results["counts"]["unreadable"] == 1  # the broken file
    json.dumps(result.results)  # plain data


def test_audit_finds_a_planted_problem_and_moves_only_flagged_files(tmp_path):
    from conftest import make_train_folder

    train = make_train_folder(tmp_path / "train", per_class=12)
    first = sorted((train / "checker").iterdir())[0]
    (train / "stripes_h" / "copy.png").write_bytes(first.read_bytes())  # an exact duplicate across classes
    (train / "stripes_h" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(api.ApiError, match="unknown option"):
        api.audit(train, fold=2)
    result = api.audit(train, folds=2, epochs=2, min_steps=0, device="cpu", move_to=tmp_path / "q")
    by_path = {r.path: r for r in result.records}
    dup = by_path[os.path.join("stripes_h", "copy.png")]
    assert dup.issue == "duplicate" and dup.duplicate_of == os.path.join("checker", first.name)
    assert by_path[os.path.join("stripes_h", "broken.png")].issue == "unreadable"
    original = by_path[os.path.join("checker", first.name)]
    assert original.issue != "duplicate"  # the first copy in path order is the original
    assert first.is_file() == (original.issue == "ok")  # it moves only for an issue of its own
    copy_moved = original.issue == "ok"  # a copy moves only while its original stays (never the last copy)
    assert (train / "stripes_h" / "copy.png").exists() != copy_moved
    assert (tmp_path / "q" / "stripes_h" / "copy.png").is_file() == copy_moved
    assert dup.action == ("moved" if copy_moved else "kept")
    moved = {p for p in tree_snapshot(tmp_path / "q") if not p.startswith("imgclean-manifest")}
    flagged = {r.path for r in result.records if r.issue != "ok"}
    assert result.exit_code == 3  # issues found: the exit code `imgclean audit` leaves with
    assert (os.path.join("stripes_h", "copy.png") in moved) == copy_moved and moved <= flagged


def test_decisions_through_the_api(tmp_path):
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    for seed, name in enumerate(("a.png", "b.png", "sub/c.png")):  # three different pictures
        write_png(folder / name, class_image("checker", np.random.default_rng(seed)))
    before = (folder / "b.png").read_bytes()
    accepted = api.accept([folder / "a.png"], root=folder)
    assert [o.status for o in accepted] == ["accepted"]
    assert [o.status for o in api.accept([folder / "a.png"], root=folder)] == ["already"]
    rejected = api.reject([folder / "b.png"], tmp_path / "q", root=folder)
    assert [o.status for o in rejected] == ["rejected"] and not (folder / "b.png").exists()
    listed = api.decisions(folder)
    assert listed.counts() == {"accepted": 1, "rejected": 1} and not listed.problems
    assert {item.path.name: item.label for item in listed} == {"a.png": "accepted", "b.png": "rejected"}
    assert [o.status for o in api.withdraw([folder / "a.png"])] == ["withdrawn"]
    assert api.decisions(folder).counts() == {"accepted": 0, "rejected": 1}
    # the reject is journaled: restore puts the file back, and records it as accepted
    api.restore(tmp_path / "q")
    assert (folder / "b.png").read_bytes() == before
    assert api.decisions(folder).counts() == {"accepted": 1, "rejected": 0}
    with pytest.raises(ValueError, match="quarantine"):
        api.accept([tmp_path / "q" / "x.png"])
