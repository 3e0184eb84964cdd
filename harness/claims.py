"""The paper's claims as data, and the one rule that judges them (`spd-bench report`, docs/report.md).

A claim names rows (method, sparsity, variant) in the order it asserts, and the tasks it covers: each row scores
higher than the next on the dev set (measure "dev"), or has the larger train-dev gap (measure "gap"). Adding a
claim is adding an entry to CLAIMS; nothing else changes. The decision rule is `task_verdict`, `pair_verdict`
and `claim_verdict` below, and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_TESTED = "holds", "does not hold", "inconclusive", "not tested"
ALPHA = 0.05         # two-sided
MIN_SEEDS = 2        # one seed cannot tell a method's effect from a seed's


@dataclass(frozen=True)
class Row:
    """A table row: a method's runs at a sparsity (None: a method that does not prune) with the variant
    settings (harness.tables.VARIANTS; none named: the defaults, as in the tables)."""
    label: str
    method: str
    sparsity: float | None = None
    variant: tuple[tuple[str, str], ...] = ()

    @property
    def settings(self) -> dict:
        return dict(self.variant)


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    source: str                       # where the paper makes it
    rows: tuple[Row, ...]             # in the asserted order: each above the next
    tasks: tuple[str, ...]
    measure: str = "dev"              # "dev": final dev score | "gap": train - dev score at the final evaluation
    caveat: str = ""                  # what the grid cannot match of the paper's setting

    def ordered_pairs(self) -> list[tuple[Row, Row]]:
        """Each row against the next: the order's links."""
        return list(zip(self.rows, self.rows[1:]))


TABLE1_TASKS = ("mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte")
TABLE2_TASKS = ("cola", "stsb", "mrpc", "rte")
TEACHER = Row("teacher (dense)", "dense")
SPD_50, SPD_90 = Row("SPD 50 %", "spd", 0.5), Row("SPD 90 %", "spd", 0.9)
SPD_666, SPD_95 = Row("SPD 66.6 %", "spd", 0.666), Row("SPD 95 %", "spd", 0.95)
KD_50, KD_90 = Row("Sparse + KD 50 %", "sparse-kd", 0.5), Row("Sparse + KD 90 %", "sparse-kd", 0.9)
PROGRESSIVE_50 = Row("Sparse + Progressive 50 %", "sparse-progressive", 0.5)
FT_90 = Row("sparse fine-tuning 90 %", "sparse-ft", 0.9)
THESEUS = Row("Theseus", "theseus")

CLAIMS = (
    Claim("a", "At 90 % sparsity, SPD > Sparse + KD > sparse fine-tuning.",
          "Table 2 and §4.3 (SPD above SparseBERT at high sparsity); Figure 5 (d) > (c) > (a)",
          (SPD_90, KD_90, FT_90), TABLE2_TASKS),
    Claim("b1", "Pruning during fine-tuning overfits: sparse fine-tuning at 90 % has a larger train−dev gap than "
                "the dense teacher.", "Figure 2 (the gap grows with sparsity)", (FT_90, TEACHER), TABLE2_TASKS,
          measure="gap",
          caveat="The teacher trains for teacher_epochs, sparse fine-tuning for its whole schedule: a longer run "
                 "can widen the gap without pruning. Figure 2 compares sparsities under one schedule."),
    Claim("b2", "SPD shrinks the train−dev gap: sparse fine-tuning > Sparse + KD > SPD at 90 %.",
          "Figure 5: the gap shrinks from (a) no progressive, no KD to (c) KD to (d) progressive + KD",
          (FT_90, KD_90, SPD_90), TABLE2_TASKS, measure="gap"),
    Claim("c", "Table 3 at 50 %: SPD > Sparse + Progressive > Sparse + KD.",
          "Table 3 (Avg 84.5 > 83.4 > 83.1) and §4.4 'Compared to both sparse + KD and sparse + progressive, SPD "
          "achieves gains on performance among all tasks'", (SPD_50, PROGRESSIVE_50, KD_50), TABLE1_TASKS,
          caveat="The paper's second pair is not uniform either: Sparse + Progressive is below Sparse + KD on "
                 "MNLI (83.9 vs 84.2) and ties it on QNLI."),
    Claim("d", "Table 2's slope: SPD at 66.6 % scores above SPD at 95 % (how much it loses).",
          "Table 2 (Avg 74.9 at 66.6 % to 68.2 printed, 68.6 from its cells, at 95 %)", (SPD_666, SPD_95),
          TABLE2_TASKS),
    Claim("e", "Table 1 at 50 %: SPD > Theseus (6 of 12 layers).", "Table 1 (Avg 84.5 vs 81.2)",
          (SPD_50, THESEUS), TABLE1_TASKS),
)


def task_verdict(mean_difference: float, p: float | None, seed_differences: list[float]) -> str:
    """One ordered pair on one task. Differences are (first row − second row), in the asserted direction.
    Holds: the mean over seeds is in the asserted direction, the paired test gives p < ALPHA, and every seed
    agrees; does not hold: the same, the other way; anything else is inconclusive. Seeds are too few for a test
    across them alone; asking every seed to agree keeps one lucky seed from deciding."""
    if len(seed_differences) < MIN_SEEDS or p is None or p >= ALPHA:
        return INCONCLUSIVE
    if mean_difference > 0 and all(d > 0 for d in seed_differences):
        return HOLDS
    if mean_difference < 0 and all(d < 0 for d in seed_differences):
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def pair_verdict(task_verdicts: list[str], avg_difference: float | None) -> str:
    """One ordered pair over its tasks (NOT_TESTED: the task was not run for both rows). Holds: it holds on
    more than half of the tested tasks, is reversed on none, and the Avg over the tested tasks is in the
    asserted direction; does not hold: mirrored; otherwise inconclusive. Untested everywhere: not tested."""
    tested = [v for v in task_verdicts if v != NOT_TESTED]
    if not tested or avg_difference is None:
        return NOT_TESTED
    holds, reversed_ = tested.count(HOLDS), tested.count(DOES_NOT_HOLD)
    if reversed_ == 0 and holds > len(tested) / 2 and avg_difference > 0:
        return HOLDS
    if holds == 0 and reversed_ > len(tested) / 2 and avg_difference < 0:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def claim_verdict(pair_verdicts: list[str]) -> str:
    """A claim is an order: one pair that does not hold breaks it; otherwise a pair not tested leaves it
    not tested, and it holds only when every pair does."""
    if DOES_NOT_HOLD in pair_verdicts:
        return DOES_NOT_HOLD
    if NOT_TESTED in pair_verdicts:
        return NOT_TESTED
    return HOLDS if all(v == HOLDS for v in pair_verdicts) else INCONCLUSIVE


RULE = (
    f"Each claim is an order of rows; each link (a row against the next) is judged on every task both rows ran, "
    f"from the final models (the only ones whose predictions a run keeps), over the seeds both ran. "
    f"**Per task**, a link *holds* when the mean difference over seeds is in the claimed direction, the paired "
    f"test gives p < {ALPHA} (two-sided; dev scores: paired bootstrap over dev examples, "
    f"harness/stats.py; train−dev gaps: paired t-test over seeds, as no train predictions are kept) and every "
    f"seed's difference points the same way; it *does not hold* when all three point the other way; anything "
    f"else is *inconclusive*; with fewer than {MIN_SEEDS} seeds nothing is decided. **Per link**, over its "
    f"tested tasks: *holds* when it holds on more than half of them, is reversed on none, and the Avg difference "
    f"is in the claimed direction; *does not hold* when mirrored; else *inconclusive*; *not tested* when no task "
    f"was run for both rows. **Per claim**: *does not hold* if any link does not hold, else *not tested* if any "
    f"link was not tested, else *holds* if every link holds, else *inconclusive*. Tasks a grid did not run are "
    f"listed as not run, never counted against a claim. No correction for the number of tasks is made; the "
    f"majority rule and the agreement of every seed are what keep one lucky task or seed from deciding.")
