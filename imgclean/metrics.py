"""Evaluation metrics as plain numpy functions.

Out-of-distribution metrics take `labels` (1 = out-of-distribution, the positive class; 0 = in
distribution) and `scores` (higher = more out-of-distribution).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length ({y.size} vs {s.size})")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y, s


def _need_both(y: np.ndarray) -> bool:
    return bool(y.any() and (~y).any())


def auroc(labels, scores) -> float:
    """Area under the ROC curve via ranks (Mann-Whitney U); ties count one half. NaN without both classes."""
    y, s = _check(labels, scores)
    if not _need_both(y):
        return float("nan")
    ranks = rankdata(s)  # average ranks: ties handled
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(labels, scores) -> float:
    """AUPR as average precision: sum over distinct thresholds of (R_n - R_{n-1}) * P_n."""
    y, s = _check(labels, scores)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each block of tied scores
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for the rule score >= threshold, from (0, 0) to (1, 1)."""
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.zeros(0, dtype=int)
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    thresholds = np.r_[np.inf, s[last]]
    return fpr, tpr, thresholds


def fpr_at_tpr(labels, scores, tpr_target: float = 0.95) -> float:
    """The smallest false positive rate at which at least `tpr_target` of the positives are caught."""
    y, s = _check(labels, scores)
    if not _need_both(y):
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    return float(fpr[np.argmax(tpr >= tpr_target - 1e-12)])


def precision_recall_f1(labels, predicted) -> dict[str, float]:
    """Precision, recall and F1 of a positive (out-of-distribution) decision; 0 where undefined."""
    y = np.asarray(labels).astype(bool).ravel()
    p = np.asarray(predicted).astype(bool).ravel()
    tp = int(np.sum(p & y))
    fp = int(np.sum(p & ~y))
    fn = int(np.sum(~p & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if y_true.size else float("nan")


def macro_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    """Mean per-class F1 over the classes present in either array (or 0..num_classes-1)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = range(num_classes) if num_classes is not None else np.union1d(y_true, y_pred)
    scores = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def trapezoid_auc(fpr, tpr) -> float:
    """Area under a curve given as points (sorted by fpr first)."""
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    order = np.lexsort((tpr, fpr))
    return float(np.trapezoid(tpr[order], fpr[order]) if hasattr(np, "trapezoid") else np.trapz(tpr[order], fpr[order]))
