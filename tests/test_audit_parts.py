"""The audit's pieces without training: confident learning, folds, duplicate search."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from conftest import class_image, write_png
from imgclean.pipeline.audit.crossfit import AuditError, assign_folds, check_folds, confident_learning
from imgclean.pipeline.audit.duplicates import (
    NEAR, PIXELS, Groups, exact_duplicates, near_duplicates, sort_key,
)


def test_confident_learning_flags_the_confident_off_diagonal():
    labels = np.array([0, 0, 0, 1, 1, 1, 0])
    probs = np.array([
        [0.9, 0.1], [0.8, 0.2], [0.95, 0.05],  # clean 0s: t_0 = mean of p_0 over them and row 6
        [0.1, 0.9], [0.2, 0.8], [0.3, 0.7],
        [0.05, 0.95],  # labelled 0, confidently 1
    ])
    found = confident_learning(probs, labels, 2)
    assert found.issue.tolist() == [False] * 6 + [True]
    assert found.suggested[6] == 1 and found.self_confidence[6] == pytest.approx(0.05)
    assert found.margin[6] == pytest.approx(0.9)
    assert found.thresholds[1] == pytest.approx(0.8)


def test_an_unsure_disagreement_is_not_a_label_issue():
    labels = np.array([0, 0, 1, 1, 0])
    probs = np.array([[0.99, 0.01], [0.99, 0.01], [0.01, 0.99], [0.01, 0.99], [0.45, 0.55]])
    assert not confident_learning(probs, labels, 2).issue.any()  # 0.55 is under t_1 = 0.99


def test_folds_are_stratified_and_keep_groups_together():
    labels = np.repeat([0, 1, 2], 12)
    groups = np.arange(36)
    groups[[1, 5, 20]] = 1  # a duplicate group across classes
    folds = assign_folds(labels, 4, seed=0, groups=groups)
    assert len(set(folds[[1, 5, 20]])) == 1
    for f in range(4):
        assert set(labels[folds != f]) == {0, 1, 2}
        assert 2 <= np.sum(folds == f) <= 15


def test_too_few_images_for_the_folds(caplog):
    names = ["a", "b"]
    with caplog.at_level(logging.WARNING, logger="imgclean.pipeline.audit.crossfit"):
        assert check_folds(names, np.array([0, 0, 0, 1, 1]), 4) == 2
    assert "using 2 folds" in caplog.text
    with pytest.raises(AuditError, match="'b' has fewer than 2"):
        check_folds(names, np.array([0, 0, 0, 1]), 2)
    with pytest.raises(AuditError, match="at least two classes"):
        check_folds(["a"], np.array([0, 0]), 2)


@pytest.mark.parametrize("block_bytes", [8, 1 << 20])
def test_near_duplicates_chunked_search(block_bytes):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 8)).astype(np.float32)
    feats[30] = feats[3] + 1e-4  # a near copy of 3
    feats[41] = feats[30] * 2  # the same direction: near copy of both
    keys = [sort_key(f"x/{i:03d}.png", 0) for i in range(50)]
    groups = Groups(50)
    near_duplicates(feats, 0.999, groups, keys, max_block_bytes=block_bytes)
    dups = groups.duplicates(keys)
    assert set(dups) == {30, 41} and all(d.original == 3 and d.kind == NEAR for d in dups.values())


def test_near_duplicates_need_similar_pixels_too():
    feats = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    a = np.zeros((8, 8, 1), np.uint8)
    a[:4] = 200
    b = np.zeros((8, 8, 1), np.uint8)
    b[:, :4] = 200
    keys = [b"a", b"b"]
    groups = Groups(2)
    assert near_duplicates(feats, 0.99, groups, keys, arrays=np.stack([a, b])) == 0
    assert near_duplicates(feats, 0.99, groups, keys, arrays=np.stack([a, a])) == 1


def test_pixel_duplicates_are_confirmed_at_full_resolution(tmp_path):
    rng = np.random.default_rng(1)
    img = class_image("checker", rng)
    write_png(tmp_path / "a.png", img)
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "b.bmp")
    other = img.copy()
    other[0, 0] ^= 1  # one pixel differs: same small array given below, not the same picture
    write_png(tmp_path / "c.png", other)
    paths = [tmp_path / "a.png", tmp_path / "b.bmp", tmp_path / "c.png"]
    arrays = np.stack([img[:, :, None]] * 3)  # as if all three decoded to the same model-size array
    groups = Groups(3)
    exact_duplicates(paths, [p.stat().st_size for p in paths], arrays, groups)
    dups = groups.duplicates([sort_key(p.name, 0) for p in paths])
    assert set(dups) == {1} and dups[1].original == 0 and dups[1].kind == PIXELS


def test_the_oldest_file_of_a_group_is_the_original_whatever_its_name(tmp_path):
    """A copy made later is the duplicate even when its name sorts first; files modified at the
    same instant fall back on the path."""
    data = b"\x89PNG same bytes"
    old, new = 1_600_000_000 * 10**9, 1_700_000_000 * 10**9
    made = {"z_original.png": old, "a_copy.png": new, "b_copy.png": new}
    paths = []
    for name, mtime in made.items():
        (tmp_path / name).write_bytes(data)
        os.utime(tmp_path / name, ns=(mtime, mtime))
        paths.append(tmp_path / name)
    groups = Groups(3)
    exact_duplicates(paths, [len(data)] * 3, None, groups)
    keys = [sort_key(p.name, p.stat().st_mtime_ns) for p in paths]
    dups = groups.duplicates(keys)
    assert set(dups) == {1, 2} and {d.original for d in dups.values()} == {0}
    # the same instant: the path decides
    for p in paths:
        os.utime(p, ns=(old, old))
    dups = groups.duplicates([sort_key(p.name, p.stat().st_mtime_ns) for p in paths])
    assert set(dups) == {0, 2} and {d.original for d in dups.values()} == {1}
