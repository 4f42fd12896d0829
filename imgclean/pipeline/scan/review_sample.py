"""The scan's review sample: the accepted files whose labels would teach the most.

Four parts, dealt in turn so that any first k files of the sample hold each part in proportion:
- "boundary": the current rule's accepted files nearest its threshold (highest scores);
- "other": nearest the threshold of the other rule (the learned one while the label-free rule
  is the default, the label-free one while the learned rule is): where the two disagree or
  nearly do, a label settles which is right. Without a learned rule its share goes to "spread";
- "spread": farthest-first (k-center) over the deep features: one of each kind of picture,
  including kinds no rule is unsure about (the misses nobody looks at otherwise);
- "random": a uniform spot check, the only part whose share of rejects says how many misses the
  accepted files hold.
The two boundary parts are themselves spread: of the `POOL` times as many candidates nearest the
threshold, farthest-first picks, so that twenty shirts just under the threshold are one pick, not
twenty. Deterministic for a seed. Feature rows only: it works the same for files gone since.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...detectors import registry
from ..learn.rule import LEARNED_METHOD, current_default, label_free_method

PARTS = ("boundary", "other", "spread", "random")
POOL = 4  # boundary candidates per pick
MAX_SPREAD_ROWS = 20_000  # farthest-first runs over at most this many rows (a uniform sample)


@dataclass(frozen=True)
class SampleShares:
    boundary: float = 0.3
    other: float = 0.3
    spread: float = 0.2
    random: float = 0.2


@dataclass(frozen=True)
class ReviewSample:
    indices: np.ndarray  # into the given rows, in the order to show them
    parts: tuple[str, ...]  # why each was picked (one of PARTS)


def farthest_first(x: np.ndarray, n: int, first: int) -> list[int]:
    """Greedy k-center: start at `first`, then repeatedly the row farthest from those chosen."""
    if n <= 0 or len(x) == 0:
        return []
    chosen = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    while len(chosen) < min(n, len(x)):
        i = int(np.argmax(dist))
        if dist[i] <= 0:  # only duplicates of chosen rows are left
            break
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    return chosen


def spread_nearest(x: np.ndarray, closeness: np.ndarray, n: int, available: np.ndarray) -> list[int]:
    """n rows among `available`: farthest-first among the POOL * n closest to a threshold, starting at the closest."""
    rows = available[np.argsort(closeness[available], kind="stable")[: POOL * n]]
    return [int(rows[i]) for i in farthest_first(x[rows], n, 0)]


def other_rule_scores(bundle, features: np.ndarray) -> np.ndarray | None:
    """The scores of the rule that is not the default (learned vs label-free), or None without a learned rule."""
    if LEARNED_METHOD not in bundle.detectors:
        return None
    if current_default(bundle.config) == LEARNED_METHOD:
        method = label_free_method(bundle.config)
        if any("logits" in registry.detector_class(m).inputs for m in registry.members(method)):
            method = registry.DEFAULT_METHOD  # features are all a sample has
        return registry.score_method(bundle.detectors, method, features=features)
    return bundle.detectors[LEARNED_METHOD].score(features=features)


def _quotas(n: int, shares: SampleShares, have_other: bool) -> dict[str, int]:
    raw = {p: getattr(shares, p) for p in PARTS}
    if not have_other:
        raw["spread"] += raw.pop("other")
    total = sum(raw.values())
    exact = {p: n * v / total for p, v in raw.items()}
    out = {p: int(np.floor(v)) for p, v in exact.items()}
    for p in sorted(exact, key=lambda p: out[p] - exact[p])[: n - sum(out.values())]:
        out[p] += 1  # largest remainders first
    return out


def review_sample(bundle, features, scores, n: int, rng: np.random.Generator | int = 0,
                  shares: SampleShares | None = None, random_rows=None) -> ReviewSample:
    """Pick n of the accepted files (rows of `features`, `scores` by the current default method).

    `random_rows`: the rows the random part draws from first (a uniform sample of all the
    accepted files, when the rows given are mostly those nearest the threshold: a scan's
    candidates, pipeline/scan/sample_pass.py); the rest of the rows after them. None: every row."""
    x = np.asarray(features, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or s.shape != (len(x),):
        raise ValueError("features must be rows x dimensions and scores one per row")
    rng = np.random.default_rng(rng)
    n = max(0, min(int(n), len(x)))
    if n == 0:
        return ReviewSample(np.zeros(0, dtype=np.int64), ())
    other = other_rule_scores(bundle, x)
    quotas = _quotas(n, shares or SampleShares(), other is not None)
    taken = np.zeros(len(x), dtype=bool)
    picks: dict[str, list[int]] = {}

    def free() -> np.ndarray:
        return np.flatnonzero(~taken)

    def keep(part: str, rows: list[int]) -> None:
        picks[part] = rows
        taken[rows] = True

    closeness = np.abs(np.log(np.maximum(s, 1e-12)))
    keep("boundary", spread_nearest(x, closeness, quotas["boundary"], free()))
    if other is not None:
        keep("other", spread_nearest(x, np.abs(np.log(np.maximum(other, 1e-12))), quotas["other"], free()))
    rest = free()
    if len(rest) > MAX_SPREAD_ROWS:
        rest = np.sort(rng.choice(rest, MAX_SPREAD_ROWS, replace=False))
    keep("spread", [int(rest[i]) for i in farthest_first(x[rest], quotas["spread"], int(rng.integers(len(rest))))]
         if len(rest) else [])
    left = n - int(taken.sum())
    pool = free()
    if random_rows is not None:
        first = np.zeros(len(x), dtype=bool)
        first[np.asarray(random_rows, dtype=np.int64)] = True
        pool = np.concatenate([rng.permutation(pool[first[pool]]), rng.permutation(pool[~first[pool]])])
    else:
        pool = rng.permutation(pool)
    keep("random", [int(i) for i in pool[:left]])
    return _interleave(picks)


def _interleave(picks: dict[str, list[int]]) -> ReviewSample:
    """Parts dealt in proportion: each row's place is (its rank in its part + 1/2) / the part's size."""
    order = sorted(((k + 0.5) / len(rows), PARTS.index(part), row, part)
                   for part, rows in picks.items() for k, row in enumerate(rows))
    return ReviewSample(np.array([o[2] for o in order], dtype=np.int64), tuple(o[3] for o in order))
