"""`spd-bench eval`: a checkpoint made elsewhere, scored like a trained cell, as a named row of the tables."""
import json
import shutil

import pytest
import yaml
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from harness.errors import UserError
from harness.evaluate import align_head, default_name, label_mapping
from harness.tasks import get_task
from tests.conftest import tiny_bert
from tests.helpers import run_cli


def read(path):
    return json.loads(path.read_text())


def predictions(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def eval_cli(checkpoint, out, cache, *extra, task="rte"):
    """Evaluate on the same dev subset as tests.helpers.FAST_RUN (the first 64 examples)."""
    return run_cli("eval", checkpoint, "--task", task, "--model", "tiny", "--glue-dir", "samples",
                   "--max-eval-examples", 64, "--out", out, "--cache", cache, *extra)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("spd-bench: error: ")
    return err[0]


def relabelled_copy(src, dest, id2label, swap_rows=False):
    """The checkpoint at `src` with other id2label names (and its two classifier rows swapped)."""
    model = BertForSequenceClassification.from_pretrained(src)
    if swap_rows:
        with torch.no_grad():
            model.classifier.weight.copy_(model.classifier.weight.flip(0).clone())
            model.classifier.bias.copy_(model.classifier.bias.flip(0).clone())
    model.config.id2label = dict(enumerate(id2label))
    model.config.label2id = {n: i for i, n in enumerate(id2label)}
    model.save_pretrained(dest)
    for f in src.glob("tokenizer*"):
        shutil.copy(f, dest / f.name)
    return dest


def table_row(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in:\n{text}")


def test_eval_of_a_saved_checkpoint_reproduces_its_run_and_is_a_named_row(spd_rte_run, tmp_path, capsys):
    run, cache = spd_rte_run
    grid = tmp_path / "grid"
    shutil.copytree(run, grid / "cells" / "spd-run")
    out = grid / "checkpoints" / "mine"
    assert eval_cli(run / "model", out, cache, "--name", "MyMethod") == 0
    assert "MyMethod" in capsys.readouterr().out
    ran, ev = read(run / "metrics.json"), read(out / "metrics.json")
    assert ev["method"] == "MyMethod" and ev["task"] == "rte" and ev["model"] == "tiny"
    assert ev["final"]["dev"] == ran["final"]["dev"]
    assert ev["best"]["dev"] == ev["final"]["dev"] and ev["teacher"] is None and ev["seed"] is None
    assert ev["achieved_sparsity"] == ran["achieved_sparsity"] == pytest.approx(0.5)
    assert ev["params"] == ran["params"]
    assert predictions(out) == predictions(run)
    assert read(out / "sparsity.json") == read(run / "sparsity.json")
    assert read(out / "manifest.json")["git_sha"] == read(run / "manifest.json")["git_sha"]
    config = read(out / "config.json")
    assert config["labels"]["how"] == "id2label names" and config["data_source"] == "samples"
    assert config["checkpoint_sha256"]["model.safetensors"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "README.md").is_file()
    assert not list(out.parent.glob(".*.partial"))

    assert run_cli("table", "1", grid) == 0
    text = capsys.readouterr().out
    header = table_row(text, "Model")
    mine = table_row(text, "MyMethod (50.0% sparse) [ours only]")
    spd = table_row(text, "SPD (ours) [spd]")
    rte = header.index("RTE Acc")
    assert mine[rte] == f"{ran['final']['dev']['score']:.1f}"
    assert spd[rte].startswith(mine[rte] + " / ")
    assert mine[header.index("#Param")] == f"{ran['params']['nonzero'] / 1e6:.1f}M"
    assert "— seeds: 1\n" in text  # the checkpoint's unknown seed is not listed as a seed
    # one name, one evaluation without a seed and one with: what sorts results by seed takes both
    assert eval_cli(run / "model", grid / "checkpoints" / "mine-seed7", cache, "--name", "MyMethod",
                    "--seed", "7") == 0
    assert run_cli("plot", grid, "--dest", tmp_path / "figures") == 0
    assert run_cli("table", "1", grid) == 0
    assert table_row(capsys.readouterr().out, "MyMethod (50.0% sparse) [ours only]")[rte] == mine[rte] + "±0.0"


def test_eval_out_is_claimed_before_anything_is_evaluated_and_never_replaces_another_run(spd_rte_run, tmp_path,
                                                                                         capsys):
    """--out follows `run --out`'s rule: new, empty, or a finished evaluation of this same config. A training run,
    another evaluation and a folder of the user's are refused in one line, and left as they were."""
    run, cache = spd_rte_run
    trained = tmp_path / "trained"
    shutil.copytree(run, trained)
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    assert eval_cli(run / "model", trained, cache) == 2
    assert "holds a finished run of another config; nothing was run" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's\n")
    assert eval_cli(run / "model", mine, cache) == 2
    assert "notes.txt" in one_error_line(capsys) and not list(tmp_path.glob(".*"))
    ev = tmp_path / "ev"
    assert eval_cli(run / "model", ev, cache) == 0
    assert eval_cli(run / "model", ev, cache) == 0                       # the same evaluation again: replaced
    assert eval_cli(run / "model", ev, cache, "--name", "Other") == 2      # another one: refused
    assert "another config" in one_error_line(capsys) and read(ev / "metrics.json")["method"] == "eval:run"


def test_permuted_label_names_are_mapped_back_to_the_task_order(spd_rte_run, tmp_path):
    run, cache = spd_rte_run
    swapped = relabelled_copy(run / "model", tmp_path / "swapped", ["NOT_ENTAILMENT", "Entailment"], swap_rows=True)
    out = tmp_path / "ev"
    assert eval_cli(swapped, out, cache, "--name", "swapped") == 0
    assert read(out / "metrics.json")["final"]["dev"] == read(run / "metrics.json")["final"]["dev"]
    assert predictions(out) == predictions(run)
    assert "permuted" in read(out / "config.json")["labels"]["how"]
    # the saved copy is in the task's order again: the run's own classifier, with the task's names
    saved = BertForSequenceClassification.from_pretrained(out / "model")
    original = BertForSequenceClassification.from_pretrained(run / "model")
    assert torch.equal(saved.classifier.weight, original.classifier.weight)
    assert saved.config.id2label == {0: "entailment", 1: "not_entailment"}


def test_generic_label_names_are_assumed_in_the_task_order_and_recorded(spd_rte_run, tmp_path):
    run, cache = spd_rte_run
    generic = relabelled_copy(run / "model", tmp_path / "generic", ["LABEL_0", "LABEL_1"])
    out = tmp_path / "ev"
    assert eval_cli(generic, out, cache) == 0
    metrics = read(out / "metrics.json")
    assert metrics["method"] == "eval:generic" and "assumed the task's order" in metrics["labels"]
    assert "assumed" in read(out / "config.json")["labels"]["how"]
    assert metrics["final"]["dev"] == read(run / "metrics.json")["final"]["dev"]


def test_label_order_states_what_generic_names_do_not(spd_rte_run, tmp_path):
    run, cache = spd_rte_run
    swapped = relabelled_copy(run / "model", tmp_path / "swapped", ["LABEL_0", "LABEL_1"], swap_rows=True)
    out = tmp_path / "ev"
    assert eval_cli(swapped, out, cache, "--label-order", "not_entailment,entailment") == 0
    assert predictions(out) == predictions(run)
    assert read(out / "config.json")["labels"]["how"].startswith("--label-order")


def _bin_only(src, dest):
    dest.mkdir()
    shutil.copy(src / "config.json", dest / "config.json")
    torch.save(BertForSequenceClassification.from_pretrained(src).state_dict(), dest / "pytorch_model.bin")
    return dest


def _no_head(src, dest):
    BertModel(BertConfig.from_pretrained(src)).save_pretrained(dest)
    return dest


def _no_head_no_architectures(src, dest):
    _no_head(src, dest)
    config = json.loads((dest / "config.json").read_text())
    del config["architectures"]
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def _not_bert(src, dest):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification
    DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2,
                                                         hidden_dim=32)).save_pretrained(dest)
    return dest


def _no_config(src, dest):
    dest.mkdir()
    shutil.copy(src / "model.safetensors", dest / "model.safetensors")
    return dest


def _truncated(src, dest):
    shutil.copytree(src, dest)
    with open(dest / "model.safetensors", "r+b") as f:
        f.truncate(100)
    return dest


def _foreign_names(src, dest):
    return relabelled_copy(src, dest, ["yes", "no"])


@pytest.mark.parametrize("make, args, expected", [
    (_bin_only, [], ["pytorch_model.bin", "safetensors only"]),
    (_no_head, [], ["is a BertModel, not a sequence classifier"]),
    (_no_head_no_architectures, [], ["lacks 2 weight(s)", "classifier.bias", "not a fine-tuned classifier"]),
    (_not_bert, [], ["'distilbert'", "BERT"]),
    (_no_config, [], ["no config.json"]),
    (_truncated, [], ["cannot read the weights of checkpoint", "SafetensorError"]),
    (None, ["--max-eval-examples", "-1"], ["max_eval_examples must be positive, got -1"]),
    (_foreign_names, [], ["yes, no", "entailment, not_entailment", "--label-order"]),
    (None, ["--task", "mnli"], ["2 outputs", "mnli has 3 labels"]),
    (None, ["--task", "stsb"], ["regression", "2 outputs"]),
    (None, ["--name", "spd"], ["'spd' is a registered method"]),
    (None, ["--label-order", "entailment"], ["--label-order names 1 labels", "2 outputs"]),
    (None, ["--label-order", "entailment,entailment"], ["do not match"]),
    (None, ["--task", "nope"], ["unknown task 'nope'"]),
])
def test_a_checkpoint_that_cannot_be_evaluated_is_one_line_and_exit_2(make, args, expected, spd_rte_run,
                                                                      tmp_path, capsys):
    run, cache = spd_rte_run
    checkpoint = make(run / "model", tmp_path / "ckpt") if make else run / "model"
    # argparse keeps the last --task: the parametrized one wins over eval_cli's
    assert eval_cli(checkpoint, tmp_path / "out", cache, *args) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("checkpoint, expected", [
    ("./no/such/model", "checkpoint ./no/such/model not found"),
    ("no-such-org/no-such-model", "neither a local folder nor a reachable hub model"),
])
def test_a_missing_checkpoint_is_one_line(checkpoint, expected, tmp_path, capsys):
    assert run_cli("eval", checkpoint, "--task", "rte", "--out", tmp_path / "o", "--cache", tmp_path / "c") == 2
    assert expected in one_error_line(capsys)


def test_mnli_names_in_another_order_permute_the_head():
    task = get_task("mnli")
    order, record = label_mapping({0: "CONTRADICTION", 1: "Neutral", 2: "entailment"}, 3, task)
    assert order == [2, 1, 0] and "permuted" in record["how"]
    model = tiny_bert(num_labels=3).eval()
    ids = torch.randint(5, 200, (3, 7), generator=torch.Generator().manual_seed(0))
    before = model(input_ids=ids).logits
    align_head(model, order, task)
    after = model(input_ids=ids).logits
    for i, j in enumerate(order):  # the checkpoint's output i is the task's label j
        assert torch.equal(after[:, j], before[:, i])
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}


def test_label_mapping_rules():
    rte, stsb = get_task("rte"), get_task("stsb")
    assert label_mapping({0: "LABEL_0", 1: "LABEL_1"}, 2, rte)[0] == [0, 1]
    assert label_mapping({0: "entailment", 1: "not entailment"}, 2, rte)[0] == [0, 1]
    assert label_mapping({0: "whatever"}, 1, stsb)[0] == [0]
    with pytest.raises(UserError, match="do not match"):  # generic names out of order say nothing certain
        label_mapping({0: "LABEL_1", 1: "LABEL_0"}, 2, rte)
    with pytest.raises(UserError, match="do not match"):
        label_mapping({0: "entailment", 1: "neutral"}, 2, rte)


def test_default_name_is_the_folder_or_its_run():
    assert default_name("runs/rte-spd-tiny/model") == "eval:rte-spd-tiny"
    assert default_name("textattack/bert-base-uncased-RTE") == "eval:bert-base-uncased-RTE"
    assert default_name("ckpts/mine/") == "eval:mine"


def test_a_grid_lists_checkpoints_as_rows_of_their_own(spd_rte_run, tmp_path, capsys):
    run, cache = spd_rte_run
    shutil.copytree(run / "model", tmp_path / "ckpts" / "mine")
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({
        "name": "mine", "model": "tiny", "glue_dir": "samples", "tasks": ["rte"], "tables": [1],
        "run": {"max_eval_examples": 64},
        # relative to the config file; label_order as one string, as on the command line
        "checkpoints": [{"path": "ckpts/mine", "name": "MyCkpt", "label_order": "entailment, not_entailment"},
                        {"path": "ckpts/mine", "name": "Wrong", "tasks": ["mnli"]}]}))
    out = tmp_path / "out"
    assert run_cli("run", config, "--out", out, "--quiet") == 1  # the mnli entry fails, the rte one is done
    assert "1/2 cells done, 1 failed" in capsys.readouterr().out
    (done,) = (out / "checkpoints").glob("rte-MyCkpt-*/metrics.json")
    assert read(done)["final"]["dev"] == read(run / "metrics.json")["final"]["dev"]
    (failure,) = (out / "failed").glob("mnli-Wrong-*.json")
    assert "3 labels" in read(failure)["error"]
    row = table_row((out / "table1.md").read_text(), "MyCkpt (50.0% sparse) [ours only]")
    assert f"{read(run / 'metrics.json')['final']['dev']['score']:.1f}" in row
    stamp = done.stat().st_mtime_ns
    assert run_cli("run", config, "--out", out, "--quiet") == 1
    assert done.stat().st_mtime_ns == stamp  # a finished evaluation is not redone


@pytest.mark.parametrize("entry, expected", [
    ({"name": "x"}, "checkpoints[0]: expected a mapping with a 'path'"),
    ({"path": "ckpts/mine", "nmae": "x"}, "checkpoints[0]: unknown key(s) nmae"),
    ({"path": "ckpts/mine", "name": "spd"}, "'spd' is a registered method"),
    ({"path": "ckpts/mine", "tasks": ["nope"]}, "unknown task 'nope'"),
    ({"path": "./no/such/ckpt"}, "checkpoints[0]: checkpoint ./no/such/ckpt not found"),   # not after every cell
])
def test_a_bad_checkpoint_entry_is_one_line(entry, expected, tmp_path, capsys):
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({"name": "g", "tasks": ["rte"], "glue_dir": "samples", "checkpoints": [entry]}))
    assert run_cli("run", config, "--out", tmp_path / "out") == 2
    assert expected in one_error_line(capsys)
