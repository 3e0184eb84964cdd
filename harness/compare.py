"""Two rows of a grid's results compared task by task: the difference per seed, its mean, the paired test, the
verdict (harness/claims.py's rule). Used by `spd-bench report` for the claims and for SPD against each row.

The dev-score test is the paired bootstrap over dev examples (harness/stats.py) on the predictions of the final
models, the only predictions a run keeps; so verdicts are judged under the `final` protocol and the `best`
protocol's difference is shown beside them. The train-dev gap has no predictions to resample (train scores are
kept, train predictions not): its test is a paired t-test over seeds.
"""
from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass

import numpy as np

from harness.claims import MIN_SEEDS, NOT_TESTED, Row, task_verdict
from harness.grid import cell_summary
from harness.paper import load_paper_numbers
from harness.results import Result, by_seed, paired_by_seed
from harness.stats import paired_bootstrap, paired_seed_test
from harness.tables import SPARSITY_TOL, VARIANTS, Cells, prunes, variant_label, variant_of
from harness.tasks import get_task

N_RESAMPLES = 1000


@dataclass
class Comparison:
    """Row a against row b on one task; differences are a − b, one per seed both rows ran."""
    task: str
    seeds: list[int]
    differences: list[float]
    best_differences: list[float] | None   # under the `best` protocol (measure dev only)
    p: float | None
    test: str                              # the test that gave p, or why there is none
    verdict: str

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.differences) if self.differences else None

    @property
    def best_mean(self) -> float | None:
        return statistics.fmean(self.best_differences) if self.best_differences else None


def row_of(result: Result) -> Row:
    """The table row a run sits on, labelled as the tables label rows of their own."""
    sparsity = result.sparsity if prunes(result.method) else None
    variant = variant_of(result.settings)
    tag = variant_label(variant)
    label = (result.method + (f" {sparsity * 100:.3g} %" if sparsity else "") + (f" ({tag})" if tag else ""))
    return Row(label, result.method, sparsity, tuple(sorted((k, v) for k, v in variant.items() if v != VARIANTS[k])))


def gap(result: Result) -> float | None:
    """Train − dev score at the run's final evaluation (None: the run scored no train subset)."""
    return cell_summary(result.run_dir)["gap"]


class Comparer:
    """Comparisons over one grid output's results, each computed once (a bootstrap takes seconds)."""

    def __init__(self, results: list[Result], failures: list[dict]):
        self.cells = Cells(results, failures)
        self._done: dict = {}

    def runs(self, row: Row, task: str) -> dict[int, Result]:
        """The row's runs on `task` by seed (the tables' selection; runs without a seed cannot be paired)."""
        return by_seed(self.select(row, task))

    def select(self, row: Row, task: str) -> list[Result]:
        return self.cells.select(row.method, row.sparsity, task, row.settings)

    def failed(self, row: Row, task: str) -> bool:
        return self.cells.failed(row.method, row.sparsity, task, row.settings)

    def compare(self, a: Row, b: Row, task: str, measure: str = "dev") -> Comparison | None:
        """None when the two rows do not share a seed on `task` (not run, failed, or other seeds)."""
        key = (a, b, task, measure)
        if key not in self._done:
            self._done[key] = self._compare(a, b, task, measure)
        return self._done[key]

    def _compare(self, a: Row, b: Row, task: str, measure: str) -> Comparison | None:
        pairs = paired_by_seed(self.select(a, task), self.select(b, task))
        if not pairs:
            return None
        seeds = [x.seed for x, _ in pairs]
        if measure == "gap":
            gaps = [(gap(x), gap(y)) for x, y in pairs]
            if any(g is None for pair in gaps for g in pair):
                return Comparison(task, seeds, [], None, None,
                                  "no train scores (run setting train_eval_examples=0)", NOT_TESTED)
            differences = [x - y for x, y in gaps]
            p = paired_seed_test(differences)
            test = "paired t-test over seeds" if p is not None else _no_test(len(seeds), "identical differences")
            return Comparison(task, seeds, differences, None, p, test, task_verdict(statistics.fmean(differences),
                                                                                   p, differences))
        differences = [x.score - y.score for x, y in pairs]
        best = [x.value("best") - y.value("best") for x, y in pairs]
        p, test = self._bootstrap(task, pairs)
        return Comparison(task, seeds, differences, best, p, test,
                          task_verdict(statistics.fmean(differences), p, differences))

    @staticmethod
    def _bootstrap(task: str, pairs: list[tuple[Result, Result]]) -> tuple[float | None, str]:
        predictions = [(x.predictions(), y.predictions()) for x, y in pairs]
        labels = predictions[0][0][1]
        if any(pa[1] != labels or pb[1] != labels for pa, pb in predictions):
            return None, "no test: the runs were scored on different dev examples"
        _, p = paired_bootstrap(get_task(task), [pa[0] for pa, _ in predictions], [pb[0] for _, pb in predictions],
                                np.asarray(labels), n_resamples=N_RESAMPLES)
        return p, (f"paired bootstrap, {N_RESAMPLES} resamples of {len(labels)} dev examples"
                   + ("" if len(pairs) >= MIN_SEEDS else f"; {_no_test(len(pairs), '')}"))


def _no_test(seeds: int, reason: str) -> str:
    if seeds < MIN_SEEDS:
        return f"one seed: no verdict (a seed's effect cannot be told from the method's with fewer than {MIN_SEEDS})"
    return f"no test: {reason}"


@functools.cache   # the YAML is parsed once, not once per comparison
def paper_cells(row: Row) -> dict[str, float]:
    """The paper's numbers for a row (any table printing it: the teacher and SPD 50 % appear in several, with
    the same cells), {} where the paper has none."""
    for table in load_paper_numbers()["tables"].values():
        for prow in table["rows"]:
            if prow.get("kind") != "reproduced" or prow.get("method") != row.method:
                continue
            sparsity = prow.get("sparsity", table.get("sparsity"))
            if row.sparsity is not None and (sparsity is None or abs(sparsity - row.sparsity) > SPARSITY_TOL):
                continue
            if _with_defaults(prow.get("settings") or {}) == _with_defaults(row.settings):
                return {t: v for t, v in prow["cells"].items() if v is not None}
    return {}


def _with_defaults(variant: dict) -> dict:
    return {k: variant.get(k, default) for k, default in VARIANTS.items()}


def paper_difference(a: Row, b: Row, task: str) -> float | None:
    pa, pb = paper_cells(a), paper_cells(b)
    return pa[task] - pb[task] if task in pa and task in pb else None
