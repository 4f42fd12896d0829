"""Learning from a review: a person's decisions -> a learned rule, held-out evidence, a default method.

What teaches (each a row of deep features, saved when the file was moved or embedded when it is
still there, so a deleted file still teaches):
  belongs: "restored" (a false reject put back) and "accepted" (a file marked as belonging);
  rejects: "rejected" (a miss the reviewer rejected), "deleted" (deleted from the quarantine)
           and "left" (still in the quarantine: no decision, counted as a reject at no cost);
  plus the training images (belongs), as features.

learn() fits detectors/reviewed.ReviewedDetector on all of it, and decides whether it becomes the
model's default method by evidence on held-out decisions: K-fold cross-validation over the
decisions gives every decision a verdict from a rule that did not learn from it, and the
label-free rule (the method the model was fitted with, usually mahalanobis, which never learns
from decisions) gives its own. Only the decisions on which the two disagree tell them apart: with
b = held-out decisions only the learned rule gets right and c = those only the label-free rule
gets right, the learned rule becomes the default when a one-sided exact binomial (McNemar) test
says b > c at `alpha` (5%); a chance surplus on a handful of decisions does not switch it.

Too few decisions (fewer than `min_decisions` made by a person, or fewer than `min_rejects`
rejects, "left" included) change nothing, with the reason. learn() never prints and never writes:
the caller saves the detector and result.config_update() as a new model version.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from ...detectors import registry
from ...detectors.base import check_features
from ...detectors.reviewed import ReviewedDetector
from ...errors import ImgcleanError

log = logging.getLogger(__name__)

LEARNED_METHOD = ReviewedDetector.name
BELONGS = ("restored", "accepted")
REJECTS = ("rejected", "deleted", "left")
KINDS = BELONGS + REJECTS
NOT_DECISIONS = ("left",)  # a file left in the quarantine: a reject for learning, no one's decision


class LearnError(ImgcleanError):
    """What was given cannot be learned from (the message says what to fix)."""


@dataclass(frozen=True)
class LabelledFeatures:
    """The review as numbers: one row of deep features (and optionally logits) per file, with its kind."""

    features: np.ndarray
    kinds: tuple[str, ...]
    logits: np.ndarray | None = None

    def __post_init__(self):
        kinds = tuple(str(k) for k in self.kinds)
        bad = sorted(set(kinds) - set(KINDS))
        if bad:
            raise LearnError(f"unknown decision kind(s) {', '.join(map(repr, bad))}; expected {', '.join(KINDS)}")
        try:
            feats = check_features(self.features, "decision features")
            logits = None if self.logits is None else check_features(self.logits, "decision logits")
        except ValueError as exc:
            raise LearnError(str(exc)) from None
        if len(kinds) != len(feats) or (logits is not None and len(logits) != len(feats)):
            raise LearnError(f"{len(feats)} feature rows but {len(kinds)} decision kinds"
                             + ("" if logits is None else f" and {len(logits)} rows of logits"))
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "logits", logits)

    @property
    def belongs(self) -> np.ndarray:
        return np.isin(np.array(self.kinds, dtype=object), BELONGS)

    def counts(self) -> dict[str, int]:
        return {k: int(sum(1 for x in self.kinds if x == k)) for k in KINDS}


@dataclass(frozen=True)
class LearnSettings:
    min_decisions: int = 10  # made by a person: restored + accepted + rejected + deleted
    min_rejects: int = 20  # rejects of any kind, "left" included
    folds: int = 5  # also the number of MLPs in the learned rule (one left out of each fold)
    alpha: float = 0.05  # one-sided level of the held-out test that makes the learned rule the default
    fit_rows: int = 8000  # training images the rule is fitted on (a sample; the rest are not needed)
    calibration_rows: int = 4000  # training images held out of the fit, for its threshold
    belongs_share: float = 0.3  # share of the "belongs" weight given to restored/accepted files
    detector: dict = field(default_factory=dict)  # ReviewedDetector settings (hidden, members, ...)


@dataclass(frozen=True)
class RuleStats:
    """One rule's verdicts on the held-out decisions."""

    method: str
    errors: int
    rejects_caught: float  # share of the held-out rejects it rejects
    belongs_rejected: float  # share of the held-out restored/accepted files it rejects (nan: none)
    auroc: float  # belongs vs rejects among the held-out decisions (nan without both)


@dataclass(frozen=True)
class Evidence:
    held_out: int
    folds: int
    current: RuleStats
    learned: RuleStats
    learned_only_right: int  # b
    current_only_right: int  # c
    p_value: float  # one-sided exact binomial: P(b or more of b + c | no difference)
    alpha: float

    @property
    def learned_is_better(self) -> bool:
        return self.learned_only_right > self.current_only_right and self.p_value < self.alpha

    def to_dict(self) -> dict:
        out = asdict(self)
        out["learned_is_better"] = self.learned_is_better
        return _json_safe(out)


@dataclass
class LearnResult:
    changed: bool
    detector: ReviewedDetector | None
    default_method: str
    previous_default: str
    label_free_method: str
    counts: dict[str, int]
    reason: str
    evidence: Evidence | None = None

    @property
    def switched(self) -> bool:
        return self.default_method != self.previous_default

    def config_update(self) -> dict:
        """What config.json records: the default method and what the learned rule learned from and why."""
        return {
            "default_method": self.default_method,
            "learned": {
                "method": LEARNED_METHOD,
                "compared_with": self.label_free_method,
                "decisions": dict(self.counts),
                "default": self.default_method,
                "reason": self.reason,
                "evidence": None if self.evidence is None else self.evidence.to_dict(),
            },
        }


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def current_default(config: dict) -> str:
    return str(config.get("default_method") or registry.DEFAULT_METHOD)


def label_free_method(config: dict) -> str:
    """The rule the learned one is compared with: the model's default unless that is the learned rule."""
    method = current_default(config)
    if method == LEARNED_METHOD:
        method = str((config.get("learned") or {}).get("compared_with") or registry.DEFAULT_METHOD)
    return method


def too_few(counts: dict[str, int], settings: LearnSettings) -> str | None:
    """The reason nothing can be learned yet, or None."""
    made = sum(n for k, n in counts.items() if k not in NOT_DECISIONS)
    rejects = sum(counts[k] for k in REJECTS)
    if made < settings.min_decisions:
        return (f"too few decisions to learn from: {made} made by a person (restored, accepted, rejected or "
                f"deleted), at least {settings.min_decisions} needed; nothing changed")
    if rejects < settings.min_rejects:
        return (f"too few rejects to learn from: {rejects} (rejected, deleted or left in the quarantine), at least "
                f"{settings.min_rejects} needed; nothing changed")
    return None


# ---- fitting --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingRows:
    """The training images' features: a sample to fit on and a held-out part for the threshold."""

    fit: np.ndarray
    calibration: np.ndarray


def split_training(train_features, settings: LearnSettings, rng: np.random.Generator,
                   held_out=None) -> TrainingRows:
    """Calibration rows: the images the network did not train on (`held_out`: a mask or indices,
    e.g. fit's validation split) when given, else a random fifth; fit rows: a sample of the rest.

    The network's own training images lie closer to their classes than new images of the same
    classes do, so a threshold set on them rejects more new in-class files than it should."""
    try:
        x = check_features(train_features, "training features")
    except ValueError as exc:
        raise LearnError(str(exc)) from None
    if len(x) < 10:
        raise LearnError(f"{len(x)} training images are too few to learn against (at least 10)")
    order = rng.permutation(len(x))
    if held_out is not None:
        mask = held_out_mask(held_out, len(x))
        if mask.sum() >= 2 and (~mask).sum() >= 2:
            cal, rest = order[mask[order]][: settings.calibration_rows], order[~mask[order]]
            return TrainingRows(fit=x[rest[: settings.fit_rows]], calibration=x[cal])
        log.info("%d held-out training images: too few to set the threshold on; a random part is used", mask.sum())
    n_cal = max(1, min(settings.calibration_rows, len(x) // 5))
    return TrainingRows(fit=x[order[n_cal:][: settings.fit_rows]], calibration=x[order[:n_cal]])


def held_out_mask(held_out, n: int) -> np.ndarray:
    """A boolean mask of n rows from a mask or from row indices; LearnError when it cannot be one."""
    arr = np.asarray(held_out)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise LearnError(f"the held-out mask has {arr.size} entries for {n} training images")
        return arr
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu") or (arr.size and not (0 <= arr.min() and arr.max() < n)):
        raise LearnError(f"the held-out rows must be indices of the {n} training images")
    mask = np.zeros(n, dtype=bool)
    mask[arr.astype(np.int64)] = True
    return mask


def row_weights(n_train: int, kinds: tuple[str, ...], settings: LearnSettings) -> np.ndarray:
    """Weights of [training rows, decision rows]: each side (belongs, rejects) weighs 1/2 in total,
    however many rejects there are; on the belongs side the person's files get `belongs_share` of it
    (never all: the training images stay the bulk of what belongs); every reject weighs the same."""
    belongs = np.isin(np.array(kinds, dtype=object), BELONGS)
    share = settings.belongs_share if belongs.any() else 0.0
    dec = np.where(belongs, 0.5 * share / max(int(belongs.sum()), 1), 0.5 / max(int((~belongs).sum()), 1))
    return np.r_[np.full(n_train, 0.5 * (1 - share) / max(n_train, 1)), dec]


def fit_rule(rows: TrainingRows, decisions: LabelledFeatures, mahalanobis, settings: LearnSettings,
             seed: int, fold: np.ndarray) -> ReviewedDetector:
    """The learned rule: one member per fold, each trained on the training sample and every
    decision outside its fold (cross-validation bagging: the members' verdicts on their own
    folds are the held-out evidence, their mean is the rule)."""
    folds = int(fold.max()) + 1
    x = np.r_[rows.fit, decisions.features]
    y = np.r_[np.ones(len(rows.fit)), decisions.belongs.astype(float)]
    w = row_weights(len(rows.fit), decisions.kinds, settings)
    member_rows = np.ones((folds, len(x)), dtype=bool)
    member_rows[:, len(rows.fit):] = fold[None, :] != np.arange(folds)[:, None]
    det = ReviewedDetector(**{**settings.detector, "seed": seed, "members": folds})
    return det.fit(x, y, weights=w, mahalanobis=mahalanobis, calibration=rows.calibration, member_rows=member_rows)


def fold_of(kinds: tuple[str, ...], folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per decision, each kind dealt round the folds in random order (stratified)."""
    out = np.zeros(len(kinds), dtype=np.int64)
    arr = np.array(kinds, dtype=object)
    start = 0
    for kind in KINDS:
        rows = rng.permutation(np.flatnonzero(arr == kind))
        out[rows] = (start + np.arange(len(rows))) % folds
        start += len(rows)  # the next kind continues where this one stopped: folds stay even
    return out


def held_out_scores(det: ReviewedDetector, rows: TrainingRows, decisions: LabelledFeatures,
                    fold: np.ndarray) -> np.ndarray:
    """Each decision's score by the member that did not learn from it, that member calibrated alone."""
    maha_cal = det.maha_.score(rows.calibration)
    cal_raw = det.member_raw(rows.calibration)
    raw = det.member_raw(decisions.features)
    maha = det.maha_.score(decisions.features) / det.safety_
    out = np.empty(len(fold))
    for k in range(len(raw)):
        mine = fold == k
        t = det.threshold_for(cal_raw[k], maha_cal)
        out[mine] = det.combine(raw[k, mine], t, maha[mine])
    return out


# ---- evidence -------------------------------------------------------------------------------
def rule_stats(method: str, scores: np.ndarray, belongs: np.ndarray) -> RuleStats:
    from ...metrics import auroc

    rejected = scores > 1.0
    wrong = rejected == belongs
    return RuleStats(
        method=method, errors=int(wrong.sum()),
        rejects_caught=float(rejected[~belongs].mean()) if (~belongs).any() else float("nan"),
        belongs_rejected=float(rejected[belongs].mean()) if belongs.any() else float("nan"),
        auroc=auroc(~belongs, scores) if belongs.any() and (~belongs).any() else float("nan"),
    )


def one_sided_p(b: int, c: int) -> float:
    """P(X >= b) for X ~ Binomial(b + c, 1/2): how often chance alone gives the learned rule this lead."""
    from scipy.stats import binom

    return 1.0 if b + c == 0 else float(binom.sf(b - 1, b + c, 0.5))


def compare(current_method: str, current_scores: np.ndarray, learned_scores: np.ndarray,
            belongs: np.ndarray, folds: int, alpha: float) -> Evidence:
    cur_right = (current_scores > 1.0) != belongs
    new_right = (learned_scores > 1.0) != belongs
    b, c = int(np.sum(new_right & ~cur_right)), int(np.sum(cur_right & ~new_right))
    return Evidence(
        held_out=len(belongs), folds=folds, current=rule_stats(current_method, current_scores, belongs),
        learned=rule_stats(LEARNED_METHOD, learned_scores, belongs), learned_only_right=b, current_only_right=c,
        p_value=one_sided_p(b, c), alpha=alpha,
    )


# ---- the whole step -------------------------------------------------------------------------
def label_free_scores(bundle, method: str, decisions: LabelledFeatures) -> np.ndarray:
    lacking = registry.missing(method, bundle.detectors)
    if lacking:
        raise LearnError(f"the model has no {lacking[0]} detector, which its default method {method} needs")
    needs_logits = any("logits" in registry.detector_class(n).inputs for n in registry.members(method))
    if needs_logits and decisions.logits is None:
        raise LearnError(f"the default method {method} scores logits, and the decisions carry none")
    return registry.score_method(bundle.detectors, method, features=decisions.features, logits=decisions.logits)


def learn(bundle, decisions: LabelledFeatures, train_features, rng: np.random.Generator | int = 0,
          settings: LearnSettings | None = None, held_out=None) -> LearnResult:
    """Fit the learned rule on the training images' features and the review; choose the default.

    `bundle`: the model (its Mahalanobis detector and config: the current default method).
    `train_features`: deep features of the training images (belongs); `held_out`: which of them
    the network did not train on (a mask or indices; see split_training). Deterministic for a seed.
    """
    settings = settings or LearnSettings()
    rng = np.random.default_rng(rng)
    previous, baseline = current_default(bundle.config), label_free_method(bundle.config)
    counts = decisions.counts()
    unchanged = LearnResult(False, None, previous, previous, baseline, counts, "")
    reason = too_few(counts, settings)
    if reason is not None:
        unchanged.reason = reason
        return unchanged
    maha = bundle.detector
    if maha is None:
        raise LearnError("the model has no Mahalanobis detector; refit it with `imgclean fit`")
    dim = maha.means_.shape[1]
    if decisions.features.shape[1] != dim:
        raise LearnError(f"the decisions have {decisions.features.shape[1]} features, the model {dim}: they were "
                         "made with another model")
    rows = split_training(train_features, settings, rng, held_out)
    if rows.fit.shape[1] != dim:
        raise LearnError(f"the training features have {rows.fit.shape[1]} dimensions, the model {dim}")
    seed = int(rng.integers(2**31 - 1))
    current = label_free_scores(bundle, baseline, decisions)
    fold = fold_of(decisions.kinds, max(2, settings.folds), rng)
    detector = fit_rule(rows, decisions, maha, settings, seed, fold)
    learned = held_out_scores(detector, rows, decisions, fold)
    evidence = compare(baseline, current, learned, decisions.belongs, int(fold.max()) + 1, settings.alpha)
    default = LEARNED_METHOD if evidence.learned_is_better else baseline
    return LearnResult(True, detector, default, previous, baseline, counts, explain(evidence, baseline), evidence)


def explain(ev: Evidence, baseline: str) -> str:
    said = (f"on {ev.held_out} held-out decisions the learned rule was right on {ev.learned_only_right} where "
            f"{baseline} was wrong and wrong on {ev.current_only_right} where {baseline} was right "
            f"(one-sided p = {ev.p_value:.2g}, alpha = {ev.alpha:g})")
    if ev.learned_is_better:
        return f"the learned rule is the default: {said}"
    return f"{baseline} stays the default (the learned rule is not better beyond chance): {said}"
