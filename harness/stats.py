"""Paired bootstrap over dev examples: does a method differ from SPD beyond resampling noise?

Both methods are scored on the same resampled dev sets (the same indices for every seed); the score
of a method on a resample is the mean over its seeds. The two-sided p-value is how often the
resampled difference falls on the other side of zero (Koehn 2004; Dror et al. 2018).
"""
from __future__ import annotations

import numpy as np

from harness.tasks import Task, compute_metrics


def paired_bootstrap(task: Task, preds_a: list, preds_b: list, labels, n_resamples: int = 1000,
                     seed: int = 0) -> tuple[float, float]:
    """(observed score difference a - b, two-sided p-value). preds_*: one array per seed, in dev order."""
    labels = np.asarray(labels)
    a = [np.asarray(p) for p in preds_a]
    b = [np.asarray(p) for p in preds_b]

    def score(preds, idx):
        return float(np.mean([compute_metrics(task, p[idx], labels[idx])["score"] for p in preds]))

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
