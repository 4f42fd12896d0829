"""store/model_history.py: versions kept by `imgclean learn`, the lock, the atomic swap."""
import json
import os
import shutil

import pytest

from imgclean.store import model_history
from imgclean.store.artifact import ModelError, load_model, save_model


def own_files(model):
    return {name: (model / name).read_bytes() for name in sorted(os.listdir(model)) if (model / name).is_file()}


def new_version(model, note: str):
    bundle = load_model(model)
    bundle.config = {**bundle.config, "default_method": "energy", "note": note}
    with model_history.locked(model):
        kept = model_history.keep(model)
        save_model(bundle, model, force=True)
    return kept


def test_keep_then_rollback_is_byte_for_byte_and_carries_the_users_files(model_copy):
    (model_copy / "my-notes.txt").write_text("mine")
    first = own_files(model_copy)
    assert new_version(model_copy, "a") == 1
    second = own_files(model_copy)
    assert second != first and json.loads(second["config.json"])["note"] == "a"
    assert own_files(model_copy / "versions" / "1") == {k: v for k, v in first.items() if k != "my-notes.txt"}
    assert new_version(model_copy, "b") == 2
    assert [v.number for v in model_history.versions(model_copy)] == [1, 2]
    with model_history.locked(model_copy):
        assert model_history.rollback(model_copy).number == 2
    assert own_files(model_copy) == second
    with model_history.locked(model_copy):
        model_history.rollback(model_copy)
    assert own_files(model_copy) == first and (model_copy / "my-notes.txt").read_text() == "mine"
    assert model_history.versions(model_copy) == []


def test_keeping_the_same_version_twice_keeps_it_once(model_copy):
    # a learn interrupted after keeping the current version, then run again
    with model_history.locked(model_copy):
        assert model_history.keep(model_copy) == 1
        assert model_history.keep(model_copy) == 1
    assert [v.number for v in model_history.versions(model_copy)] == [1]


def test_one_learn_at_a_time(model_copy):
    with model_history.locked(model_copy):
        with pytest.raises(ModelError, match="another `imgclean learn`"):
            with model_history.locked(model_copy):
                pass


def test_a_damaged_or_foreign_version_is_listed_with_its_problem_and_never_installed(model_copy):
    new_version(model_copy, "a")
    (model_copy / "versions" / "1" / "config.json").write_text("{")
    (model_copy / "versions" / "not-a-number").mkdir()
    listed = model_history.versions(model_copy)
    assert [v.number for v in listed] == [1] and listed[0].problem
    before = own_files(model_copy)
    with model_history.locked(model_copy), pytest.raises(ModelError):
        model_history.rollback(model_copy)
    assert own_files(model_copy) == before


def test_a_version_that_is_a_link_is_refused(model_copy, tmp_path):
    new_version(model_copy, "a")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(model_copy / "versions" / "1", elsewhere)
    os.symlink(elsewhere, model_copy / "versions" / "1")
    before = own_files(model_copy)
    with model_history.locked(model_copy), pytest.raises(ModelError):
        model_history.rollback(model_copy)
    assert own_files(model_copy) == before
