"""pipeline.decode, the one decoder: its contract, and fit / fit-head decoding through it."""
from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from conftest import CLASSES, class_image, write_png
from imgclean import data
from imgclean.pipeline import decode as dec
from imgclean.pipeline.decode import DecodeSettings, Decoded, Decoder, decode_many, decode_one

SETTINGS = DecodeSettings(16, 1)


@pytest.fixture
def files(tmp_path):
    """Eleven files: images whose first pixel is their index, and three that cannot be used."""
    paths = []
    for i in range(11):
        p = tmp_path / f"{i:02d}.png"
        if i == 3:
            p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # truncated
        elif i == 7:
            p.write_bytes(b"%PDF-1.4 not an image")
        elif i == 9:
            p.write_bytes(b"")
        else:
            write_png(p, np.full((16, 16), i * 10, dtype=np.uint8))
        paths.append(p)
    return paths


EXPECTED = {3: data.UNREADABLE, 7: data.UNSUPPORTED, 9: data.UNREADABLE}


def check(paths, decoded):
    assert len(decoded) == len(paths)
    for i, d in enumerate(decoded):
        assert isinstance(d, Decoded)
        if i in EXPECTED:
            assert (d.ok, d.array, d.status) == (False, None, EXPECTED[i]) and d.message
        else:
            assert d.ok and d.status == data.OK and d.array.shape == (16, 16, 1) and d.array.dtype == np.uint8
            assert d.array[0, 0, 0] == i * 10  # the order is kept


@pytest.mark.parametrize("workers", [1, 3, 16])
def test_every_item_gives_one_decoded_in_order_with_its_status(files, workers):
    check(files, decode_many(files, SETTINGS, workers))
    with Decoder(SETTINGS, workers) as decoder:
        check(files, decoder.decode(files))
        check(files, decoder.submit(files).result())


def test_file_entries_and_paths_decode_alike(files):
    entries = [data.FileEntry(p, 0, 0) for p in files]
    by_entry, by_path = decode_many(entries, SETTINGS, 2), decode_many([str(p) for p in files], SETTINGS, 2)
    check(files, by_entry)
    for a, b in zip(by_entry, by_path, strict=True):
        assert a.status == b.status and (a.array is None or np.array_equal(a.array, b.array))


def test_empty_input_starts_nothing(monkeypatch):
    monkeypatch.setattr(dec, "ThreadPoolExecutor", None)  # decode_many([]) must not build a pool
    assert decode_many([], SETTINGS) == []
    assert decode_many(iter(()), SETTINGS) == []


def test_empty_input_in_a_decoder():
    with Decoder(SETTINGS, 2) as decoder:
        assert decoder.decode([]) == []
        assert list(decoder.batches([], 4)) == []


def test_an_error_inside_a_worker_is_that_items_status_only(files, monkeypatch):
    real = data.decode_image

    def flaky(path, *args, **kwargs):
        if str(path).endswith("05.png"):
            raise RuntimeError("a bug\nover two lines")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "decode_image", flaky)
    decoded = decode_many(files, SETTINGS, 2)  # 05 shares its chunk with other files
    assert len(decoded) == len(files)
    assert decoded[5].status == data.UNREADABLE and decoded[5].message == "RuntimeError: a bug over two lines"
    assert decoded[4].ok and decoded[6].ok and decoded[3].status == data.UNREADABLE


def test_batches_keep_order_and_decode_ahead_lazily(files):
    taken = []

    def lazy():
        for p in files:
            taken.append(p)
            yield p

    with Decoder(SETTINGS, 2) as decoder:
        gen = decoder.batches(lazy(), 3, ahead=1)
        first_items, first = next(gen)
        # the first batch is handed over once one more batch (ahead=1) is in flight: 6 items read
        assert first_items == files[:3] and len(taken) == 6
        rest = list(gen)
    assert [len(b) for b, _ in [(first_items, first), *rest]] == [3, 3, 3, 2]
    items = first_items + [i for b, _ in rest for i in b]
    assert items == files
    check(files, first + [d for _, ds in rest for d in ds])


def test_batches_with_ahead_zero_and_bad_arguments(files):
    with Decoder(SETTINGS, 1) as decoder:
        check(files, [d for _, ds in decoder.batches(files, 4, ahead=0) for d in ds])
        with pytest.raises(ValueError):
            list(decoder.batches(files, 0))
        with pytest.raises(ValueError):
            list(decoder.batches(files, 2, ahead=-1))


def test_cancel_drops_the_chunks_not_started(files, monkeypatch):
    started, release = [], threading.Event()
    real = data.decode_image

    def slow(path, *args, **kwargs):
        started.append(path)
        release.wait(10)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "decode_image", slow)
    with Decoder(SETTINGS, 1) as decoder:  # one worker, chunks of ceil(11 / 2) = 6
        pending = decoder.submit(files)
        pending.cancel()  # the first chunk is running (or about to), the second is dropped
        release.set()
    assert len(started) <= 6


def test_leaving_batches_early_cancels_the_rest(files):
    with Decoder(SETTINGS, 1) as decoder:
        for items, _ in decoder.batches(files, 2, ahead=2):
            break
    assert items == files[:2]


def test_submit_outside_the_with_block_is_an_error(files):
    decoder = Decoder(SETTINGS, 1)
    with pytest.raises(RuntimeError):
        decoder.submit(files)


def test_settings_and_the_per_item_function_travel_to_other_processes(files):
    # A DataLoader worker (issue 12) gets the settings pickled and calls decode_one itself.
    settings = pickle.loads(pickle.dumps(DecodeSettings(16, 1, "bicubic", 0.875)))
    assert settings == DecodeSettings(16, 1, "bicubic", 0.875)
    assert pickle.loads(pickle.dumps(decode_one)) is decode_one
    assert decode_one(files[0], settings).ok and decode_one(files[7], settings).status == data.UNSUPPORTED


def test_default_workers_is_at_least_one():
    assert dec.default_workers() >= 1
    assert Decoder(SETTINGS).workers == dec.default_workers()


# ---- fit and fit-head decode through it ---------------------------------------------------------
def test_decode_classes_progress_labels_and_skipped(tmp_path, monkeypatch):
    from imgclean.pipeline.fit import trainset

    rng = np.random.default_rng(0)
    class_files = []
    for c, name in enumerate(CLASSES):
        entries = []
        for i in range(5):
            p = tmp_path / name / f"{i}.png"
            if (c, i) in ((0, 2), (2, 4)):
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"junk")
            else:
                write_png(p, class_image(name, rng))
            entries.append(data.FileEntry(p, 0, 0))
        class_files.append(entries)
    monkeypatch.setattr(trainset, "PROGRESS_EVERY", 4)
    calls = []
    images, labels, skipped = trainset.decode_classes(
        list(CLASSES), class_files, 16, 1, lambda *a: calls.append(a)
    )
    assert calls == [("decode", n, 15, {}) for n in (4, 8, 12, 15)]
    assert images.shape == (13, 16, 16, 1) and images.dtype == np.uint8
    assert labels.tolist() == [0] * 4 + [1] * 5 + [2] * 4
    assert [(s[0], s[1]) for s in skipped] == [
        (str(tmp_path / CLASSES[0] / "2.png"), data.UNREADABLE),
        (str(tmp_path / CLASSES[2] / "4.png"), data.UNREADABLE),
    ]
    assert all(s[2] for s in skipped)


def test_decode_classes_names_a_class_left_without_images(tmp_path):
    from imgclean.pipeline.fit.trainset import FitError, decode_classes

    good = write_png(tmp_path / "a" / "0.png", class_image(CLASSES[0], np.random.default_rng(0)))
    bad = tmp_path / "b" / "0.png"
    bad.parent.mkdir()
    bad.write_bytes(b"junk")
    with pytest.raises(FitError, match="'b'"):
        decode_classes(["a", "b"], [[data.FileEntry(good, 0, 0)], [data.FileEntry(bad, 0, 0)]], 16, 1)


def test_decode_folder_keeps_walk_order_and_lists_what_it_skipped(tmp_path):
    from imgclean.pipeline.fit.headfit import HeadError, decode_folder

    rng = np.random.default_rng(0)
    for i in range(6):
        write_png(tmp_path / "sub" / f"{i}.png", np.full((16, 16), 40 * i, dtype=np.uint8))
    (tmp_path / "sub" / "2.png").write_bytes(b"junk")
    (tmp_path / "z.png").symlink_to(tmp_path / "sub" / "1.png")  # the walk skips links
    write_png(tmp_path / "a.png", class_image(CLASSES[1], rng))
    images, skipped = decode_folder(tmp_path, 16, 1)
    assert images.shape == (6, 16, 16, 1)
    assert [int(a[0, 0, 0]) for a in images[1:]] == [0, 40, 120, 160, 200]
    assert [(s[0], s[1]) for s in skipped] == [
        (str(tmp_path / "z.png"), data.SKIPPED),
        (str(tmp_path / "sub" / "2.png"), data.UNREADABLE),
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HeadError, match="no readable images"):
        decode_folder(empty, 16, 1)
