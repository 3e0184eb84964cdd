"""`spd-bench report`: the decision rule on synthetic results (a clear win holds, a reversal does not hold, noise
is inconclusive, missing rows are not tested), the report of a real tiny grid, and committed reports that
must render byte for byte from their committed grid outputs (so neither can drift from the other)."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.claims import (CLAIMS, DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_TESTED, claim_verdict, pair_verdict,
                            task_verdict)
from harness.compare import Comparer, paper_cells
from harness.report import GENERATED, judge, write_report
from harness.results import load_results
from harness.stats import paper_score
from harness.tasks import TASKS, compute_metrics, get_task
from tests.conftest import REPO
from tests.helpers import run_cli

CLAIM = {c.key: c for c in CLAIMS}
LABELS = np.random.default_rng(7).integers(0, 2, 400)


# -- the rule, as pure functions -----------------------------------------------------------------------------
def test_task_verdict_needs_direction_significance_and_every_seed():
    assert task_verdict(2.0, 0.01, [1.5, 2.0, 2.5]) == HOLDS
    assert task_verdict(-2.0, 0.01, [-1.5, -2.0, -2.5]) == DOES_NOT_HOLD
    assert task_verdict(2.0, 0.20, [1.5, 2.0, 2.5]) == INCONCLUSIVE      # noise
    assert task_verdict(2.0, 0.01, [5.0, 2.0, -1.0]) == INCONCLUSIVE     # one seed disagrees
    assert task_verdict(2.0, 0.01, [2.0]) == INCONCLUSIVE                # one seed decides nothing
    assert task_verdict(2.0, None, [1.5, 2.5]) == INCONCLUSIVE           # no test


def test_pair_and_claim_verdicts():
    assert pair_verdict([HOLDS, HOLDS, INCONCLUSIVE], 1.0) == HOLDS
    assert pair_verdict([HOLDS, INCONCLUSIVE], 1.0) == INCONCLUSIVE            # not more than half
    assert pair_verdict([HOLDS, HOLDS, DOES_NOT_HOLD], 1.0) == INCONCLUSIVE    # a reversal blocks it
    assert pair_verdict([HOLDS, HOLDS, HOLDS], -0.1) == INCONCLUSIVE           # the Avg must agree
    assert pair_verdict([DOES_NOT_HOLD, DOES_NOT_HOLD, INCONCLUSIVE], -1.0) == DOES_NOT_HOLD
    assert pair_verdict([NOT_TESTED], None) == NOT_TESTED
    assert claim_verdict([HOLDS, HOLDS]) == HOLDS
    assert claim_verdict([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert claim_verdict([HOLDS, NOT_TESTED]) == NOT_TESTED
    assert claim_verdict([NOT_TESTED, DOES_NOT_HOLD]) == DOES_NOT_HOLD        # a broken link breaks the order


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_bootstrap_scores_as_compute_metrics_does(task):
    t, rng = get_task(task), np.random.default_rng(len(task))
    for trial in range(30):
        n = int(rng.integers(2, 60))
        if t.is_regression:
            preds = np.full(n, 2.0) if trial == 0 else rng.integers(0, 5, n).astype(float) + rng.random(n) * (trial % 2)
            labels = rng.integers(0, 5, n).astype(float)
        else:
            preds, labels = rng.integers(0, 1 if trial == 0 else t.num_labels, n), rng.integers(0, t.num_labels, n)
        assert paper_score(t, preds, labels) == pytest.approx(compute_metrics(t, preds, labels)["score"], abs=1e-9)


def test_paper_cells_follow_the_tables_rows():
    kd_50 = CLAIM["c"].rows[2]
    assert paper_cells(kd_50)["rte"] == 70.0                  # Table 3's Sparse + KD (fine-tuned students)
    assert paper_cells(CLAIM["d"].rows[1])["rte"] == 56.7      # SPD 95 %
    assert paper_cells(CLAIM["a"].rows[1]) == {}               # Sparse + KD at 90 %: not in the paper


# -- synthetic results through the whole judging path ---------------------------------------------------------
def fake_run(root: Path, task: str, method: str, sparsity: float, seed: int, accuracy: float,
             train: float | None = None, settings: dict | None = None) -> None:
    """A finished run directory whose dev predictions are right on the first `accuracy` share of LABELS (with
    the seed shifting which examples by a few), and whose last evaluation scored `train` on its train subset."""
    d = root / f"{task}-{method}-{sparsity}-{seed}"
    d.mkdir(parents=True)
    right = np.arange(len(LABELS)) < int(accuracy * len(LABELS)) + seed
    preds = np.where(right, LABELS, 1 - LABELS)
    with open(d / "predictions.jsonl", "w") as f:
        for i, (p, label) in enumerate(zip(preds, LABELS)):
            f.write(json.dumps({"idx": i, "prediction": int(p), "label": int(label)}) + "\n")
    score = compute_metrics(get_task(task), preds, LABELS)["score"]
    dev = {"score": score}
    (d / "history.jsonl").write_text(json.dumps({"step": 10, "dev": dev, "final_shape": True,
                                                 **({"train": {"score": train}} if train is not None else {})}) + "\n")
    final = {"step": 10, "dev": dev}
    (d / "metrics.json").write_text(json.dumps({
        "task": task, "method": method, "model": "tiny", "sparsity": sparsity, "seed": seed, "metric": "acc",
        "final": final, "best": final, "best_any": final, "params": {"nonzero": 1000, "total": 2000}}))
    (d / "config.json").write_text(json.dumps({"settings": settings or {}}))


def verdicts(root: Path) -> dict:
    comparer = Comparer(load_results(root), [])
    return {key: judge(comparer, claim)[0] for key, claim in CLAIM.items()}


def test_a_clear_win_holds_a_reversal_does_not_and_noise_is_inconclusive(tmp_path):
    for seed in (1, 2, 3):
        for task in ("rte", "mrpc"):
            fake_run(tmp_path / "win", task, "spd", 0.9, seed, 0.90, train=95 - 0.2 * seed)
            fake_run(tmp_path / "win", task, "sparse-kd", 0.9, seed, 0.75, train=97 + 0.3 * seed)
            fake_run(tmp_path / "win", task, "sparse-ft", 0.9, seed, 0.60, train=99 - 0.4 * seed)
            fake_run(tmp_path / "win", task, "dense", 0.0, seed, 0.92, train=93 + seed)
            fake_run(tmp_path / "reversed", task, "spd", 0.5, seed, 0.60)
            fake_run(tmp_path / "reversed", task, "sparse-progressive", 0.5, seed, 0.75)
            fake_run(tmp_path / "reversed", task, "sparse-kd", 0.5, seed, 0.90)
            fake_run(tmp_path / "noise", task, "spd", 0.666, seed, 0.70 + 0.01 * (seed % 2))
            fake_run(tmp_path / "noise", task, "spd", 0.95, seed, 0.70 + 0.01 * ((seed + 1) % 2))
    win = verdicts(tmp_path / "win")
    assert (win["a"], win["b1"], win["b2"]) == (HOLDS, HOLDS, HOLDS)
    assert win["c"] == win["d"] == win["e"] == NOT_TESTED                   # their rows are missing
    assert verdicts(tmp_path / "reversed")["c"] == DOES_NOT_HOLD
    assert verdicts(tmp_path / "noise")["d"] == INCONCLUSIVE


def test_a_claim_missing_one_row_is_not_tested_and_says_which(tmp_path):
    for seed in (1, 2):
        fake_run(tmp_path, "rte", "spd", 0.5, seed, 0.90)
        fake_run(tmp_path, "rte", "sparse-progressive", 0.5, seed, 0.60)
    verdict, text, evidence = judge(Comparer(load_results(tmp_path), []), CLAIM["c"])
    assert verdict == NOT_TESTED
    assert "Sparse + KD 50 % not run on MNLI, QQP, QNLI, SST-2, CoLA, STS-B, MRPC, RTE" in text[-1]
    assert "SPD 50 % > Sparse + Progressive 50 %: +" in evidence       # the link that was run is still shown


def test_one_seed_decides_nothing_and_says_so(tmp_path):
    fake_run(tmp_path, "rte", "spd", 0.9, 1, 0.95)
    fake_run(tmp_path, "rte", "sparse-kd", 0.9, 1, 0.50)
    verdict, text, _ = judge(Comparer(load_results(tmp_path), []), CLAIM["a"])
    assert verdict == NOT_TESTED        # sparse-ft is missing
    table = "\n".join(text)
    assert "inconclusive" in table and "one seed: no verdict" in table


# -- a real tiny grid, end to end -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    stages = {"prune_epochs": 1, "graft_epochs": 1, "finetune_epochs": 1, "lr": 1.0e-3}
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny-report", "model": "tiny", "glue_dir": "samples", "seeds": [1], "tables": [2],
        "tasks": ["rte"], "run": {"max_train_examples": 64, "batch_size": 16, "teacher_epochs": 2,
                                  "teacher_lr": 2.0e-3, "train_eval_examples": 16, "eval_steps": 4,
                                  "max_eval_examples": 64, "save_model": False},
        "methods": [{"method": "dense"}, {"method": "spd", "sparsity": 0.9, "settings": stages},
                    {"method": "sparse-ft", "sparsity": 0.9, "settings": stages}]}))
    out = root / "grid"
    assert run_cli("run", config, "--out", out, "--quiet") == 0
    return out


def test_report_of_a_tiny_grid(tiny_grid, tmp_path):
    preamble = tmp_path / "preamble.md"
    preamble.write_text("# Tiny report\n\nWritten by hand.\n")
    assert run_cli("report", tiny_grid, "--dest", tmp_path / "doc.md", "--preamble", preamble,
                   "--figures", tmp_path / "figs") == 0
    doc = (tmp_path / "doc.md").read_text()
    assert doc.startswith("# Tiny report\n\nWritten by hand.\n")
    assert "- command: `spd-bench run " in doc and "--out " in doc            # recorded by the grid
    assert "grid: `tiny-report`, 3 cells: 3 done, 0 failed, 0 not run" in doc
    assert "## Tables (reported: best at final shape" in doc and "## Tables (reported: final)" in doc
    assert "| spd 90 %" in doc and "seed 1" in doc                         # runs without weights are read
    assert "one seed: no verdict" in doc                                  # what one seed could not do
    assert "### (a) At 90 % sparsity, SPD > Sparse + KD > sparse fine-tuning. — **not tested**" in doc
    assert "Sparse + KD 90 % not run on CoLA, STS-B, MRPC, RTE" in doc
    assert "![rte-train-dev](figs/rte-train-dev.png)" in doc and (tmp_path / "figs" / "rte-dev.png").is_file()
    assert sum(GENERATED in line for line in doc.splitlines()) == 1


def test_report_refuses_what_is_not_a_grid_output(tmp_path, capsys):
    assert run_cli("report", tmp_path / "missing") == 2
    (tmp_path / "empty").mkdir()
    assert run_cli("report", tmp_path / "empty") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("spd-bench: error:") for line in err)


def test_a_missing_preamble_is_one_line(tiny_grid, tmp_path, capsys):
    assert run_cli("report", tiny_grid, "--dest", tmp_path / "d.md", "--preamble", tmp_path / "nope.md") == 2
    assert "preamble" in capsys.readouterr().err and not (tmp_path / "d.md").exists()


# -- committed reports cannot drift from their committed grid outputs ------------------------------------------
COMMITTED = [REPO / "tests" / "data" / "report-grid"] + sorted(
    p for p in (REPO / "docs" / "results").glob("*") if (p / "cells").is_dir())


@pytest.mark.parametrize("grid", COMMITTED, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_report_renders_from_its_grid_output(grid, tmp_path):
    committed = grid.parent / f"{grid.name}.md"
    dest = tmp_path / committed.name
    write_report(grid, dest, figures=tmp_path / grid.name / "figures")   # the figures' links as committed

    def without_date(text: str) -> str:
        return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(GENERATED))

    assert without_date(dest.read_text()) == without_date(committed.read_text())


def test_the_tables_star_compares_only_the_seeds_both_rows_ran(tmp_path):
    """`spd-bench table`'s '*' (paired bootstrap against SPD) uses the seeds both rows ran, as the report does:
    another row's seeds 1-2 against SPD's seeds 3-4 are no pair, whatever the predictions say."""
    from harness.results import Result
    from harness.tables import _significance

    def result(method, seed, accuracy):
        run = tmp_path / f"{method}-{seed}"
        run.mkdir()
        correct = np.random.default_rng(seed).random(LABELS.size) < accuracy
        preds = np.where(correct, LABELS, 1 - LABELS)
        (run / "predictions.jsonl").write_text("".join(json.dumps({"prediction": int(p), "label": int(y)}) + "\n"
                                                       for p, y in zip(preds, LABELS)))
        return Result("rte", method, "tiny", 0.9, seed, accuracy * 100, 1, run)

    spd = [result("spd", s, 0.9) for s in (1, 2, 3, 4)]
    worse = [result("sparse-ft", s, 0.55) for s in (1, 2)]
    assert _significance("rte", worse, spd) == "*"                     # seeds 1 and 2 on both sides
    assert _significance("rte", worse, spd[2:]) == ""                  # SPD ran seeds 3 and 4: no pair
    assert _significance("rte", worse[:1], spd) == ""                  # one shared seed decides nothing
