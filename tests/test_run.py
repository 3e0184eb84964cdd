"""End to end: `spd-bench run` on the built-in samples with the tiny model."""
import json
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from harness import data, models
from harness.tasks import TASKS, compute_metrics, get_task
from spd.pruning import PRUNED_MATRICES
from tests.helpers import fast_run


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-cache")


def recompute_dev_score(run_dir, task_name):
    """Reload the saved checkpoint with plain transformers and score the dev set again."""
    task = get_task(task_name)
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tokenizer = models.load_tokenizer("tiny")
    dev = data.load_split(task, "dev", "samples").select(range(64))
    tok = data.tokenize(dev, tokenizer, 128, None)
    preds, refs = [], []
    with torch.no_grad():
        for batch in data.make_loader(tok, tokenizer, 32, shuffle=False, seed=0):
            labels = batch.pop("labels")
            logits = model(**batch).logits
            preds.append(logits.view(-1) if task.is_regression else logits.argmax(-1))
            refs.append(labels)
    return compute_metrics(task, torch.cat(preds).numpy(), torch.cat(refs).numpy())["score"]


@pytest.mark.parametrize("task", list(TASKS))
def test_spd_runs_on_every_task_and_its_checkpoint_reproduces_the_metric(task, tmp_path, shared_cache):
    out = tmp_path / "run"
    assert fast_run("spd", task, out, shared_cache, sparsity=0.9) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    sparsity = json.loads((out / "sparsity.json").read_text())
    assert len(sparsity["matrices"]) == 4 * len(PRUNED_MATRICES)
    for name, m in sparsity["matrices"].items():
        assert m["zeros"] == round(0.9 * m["numel"]), name
    assert metrics["final"]["step"] > 0 and metrics["best"]["step"] > 0
    assert metrics["final"]["dev"]["score"] == pytest.approx(recompute_dev_score(out, task), abs=1e-6)
    for f in ("config.json", "manifest.json", "predictions.jsonl", "history.jsonl", "model/model.safetensors"):
        assert (out / f).exists(), f
    assert sum(1 for _ in open(out / "predictions.jsonl")) == 64
    # the reloaded model carries the zeros in place
    w = AutoModelForSequenceClassification.from_pretrained(out / "model").bert.encoder.layer[0].intermediate.dense.weight
    assert int((w == 0).sum()) == round(0.9 * w.numel())


def test_teacher_is_trained_once_and_reused(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert fast_run("dense", "rte", tmp_path / "a", cache) == 0
    teachers = list((cache / "teachers").glob("rte-*/metrics.json"))
    assert len(teachers) == 1
    stamp = teachers[0].stat().st_mtime_ns
    assert fast_run("spd", "rte", tmp_path / "b", cache) == 0
    assert teachers[0].stat().st_mtime_ns == stamp
    # a changed teacher hyper-parameter is a different teacher
    assert fast_run("dense", "rte", tmp_path / "c", cache, extra=["teacher_epochs=1"]) == 0
    assert len(list((cache / "teachers").glob("rte-*/metrics.json"))) == 2
    assert "dev accuracy" in capsys.readouterr().out


def test_pad_to_max_length_is_the_official_padding(tmp_path, shared_cache):
    assert fast_run("dense", "sst2", tmp_path / "r", shared_cache, extra=["pad_to_max_length=true",
                                                                          "max_seq_length=40"]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["pad_to_max_length"] is True and cfg["max_seq_length"] == 40


def test_each_evaluation_is_made_once_even_where_eval_steps_meets_a_phase_end(tmp_path, shared_cache):
    # SPD's phases here: pruning 4 steps, then grafting + fine-tuning 8. With eval_steps 4 the step-4 and
    # step-12 evaluations fall on phase ends: each must happen once (an evaluation is the cost of ~4 steps)
    assert fast_run("spd", "rte", tmp_path / "r", shared_cache, extra=["eval_steps=4"]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary (git_dirty asks `git status`)")
def test_manifest_says_whether_the_checkout_was_edited(tmp_path):
    # a result made from an edited config/source is not that commit's result: git_dirty tells them apart
    import subprocess

    from harness.store import git_dirty
    assert git_dirty(tmp_path) is None                     # not a git checkout: unknown, not "clean"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "grid.yaml").write_text("seeds: [1]\n")
    subprocess.run([*git, "add", "grid.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert git_dirty(tmp_path) is False
    (tmp_path / "grid.yaml").write_text("seeds: [1, 2]\n")
    assert git_dirty(tmp_path) is True
