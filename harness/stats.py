"""Paired bootstrap over dev examples: does a method differ from SPD beyond resampling noise?

Both methods are scored on the same resampled dev sets (the same indices for every seed); the score
of a method on a resample is the mean over its seeds. The two-sided p-value is how often the
resampled difference falls on the other side of zero (Koehn 2004; Dror et al. 2018).
"""
from __future__ import annotations

import numpy as np

from harness.tasks import Task


def paper_score(task: Task, predictions: np.ndarray, labels: np.ndarray) -> float:
    """The paper's metric x 100, as harness.tasks.compute_metrics gives it (tests/test_report.py checks they
    agree), computed from counts: a bootstrap scores thousands of resamples, and scikit-learn's checks of its
    inputs cost more than the metric (20 ms per CoLA resample)."""
    if task.is_regression:   # Spearman: Pearson of the average ranks; a constant side has none (0)
        from scipy.stats import rankdata
        a, b = rankdata(predictions), rankdata(labels)
        a, b = a - a.mean(), b - b.mean()
        denominator = np.sqrt((a * a).sum() * (b * b).sum())
        return 100.0 * float((a * b).sum() / denominator) if denominator > 0 else 0.0
    predictions, labels = predictions.astype(int), labels.astype(int)
    if task.metric == "accuracy":
        return 100.0 * float(np.mean(predictions == labels))
    if task.metric == "f1":  # positive class 1; no positive predicted nor gold: 0 (zero_division=0)
        tp = int(np.sum((predictions == 1) & (labels == 1)))
        wrong = int(np.sum(predictions != labels))
        return 100.0 * tp / (tp + wrong / 2) if tp + wrong else 0.0
    # MCC over the confusion matrix (scikit-learn's multiclass formula; 0 where a side is constant)
    n = int(max(predictions.max(), labels.max())) + 1
    confusion = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n).astype(float)
    t, p, c, s = confusion.sum(1), confusion.sum(0), np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return 100.0 * float((c * s - t @ p) / denominator) if denominator > 0 else 0.0


def paired_bootstrap(task: Task, preds_a: list, preds_b: list, labels, n_resamples: int = 1000,
                     seed: int = 0) -> tuple[float, float]:
    """(observed score difference a - b, two-sided p-value). preds_*: one array per seed, in dev order."""
    labels = np.asarray(labels)
    a = [np.asarray(p) for p in preds_a]
    b = [np.asarray(p) for p in preds_b]

    def score(preds, idx):
        return float(np.mean([paper_score(task, p[idx], labels[idx]) for p in preds]))

    full = np.arange(len(labels))
    observed = score(a, full) - score(b, full)
    rng = np.random.default_rng(seed)
    flips = 0
    for _ in range(n_resamples):
        idx = rng.integers(0, len(labels), len(labels))
        diff = score(a, idx) - score(b, idx)
        if (diff <= 0 < observed) or (diff >= 0 > observed) or observed == 0:
            flips += 1
    return observed, min(1.0, 2 * flips / n_resamples)


def paired_seed_test(differences: list[float]) -> float | None:
    """Two-sided p-value of a paired t-test over seeds (the differences a - b, one per seed), for a measure with
    no per-example predictions to resample (the train-dev gap: train scores are kept, train predictions not).
    None where it cannot be computed: fewer than two seeds, or every difference the same."""
    from scipy.stats import ttest_1samp
    if len(differences) < 2 or len(set(differences)) < 2:
        return None
    return float(ttest_1samp(differences, 0.0).pvalue)
