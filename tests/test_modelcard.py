"""Every exported model folder carries the task's labels and a model card, and still loads as it is."""
import dataclasses
import json
import shlex

import pytest
import yaml
from transformers import AutoModelForSequenceClassification, pipeline

from harness.cli import build_parser, parse_overrides
from harness.gridconfig import Cell
from harness.modelcard import label_names
from harness.run import RunConfig
from harness.tasks import get_task
from tests.helpers import fast_run


def read(path):
    return json.loads(path.read_text())


def card_parts(model_dir) -> tuple[dict, str]:
    """(front matter, body) of model_dir/README.md."""
    text = (model_dir / "README.md").read_text()
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def reproduce_block(body: str) -> str:
    return body.split("## Reproduce", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]


def saved_config(run_dir) -> RunConfig:
    """The cell's RunConfig as grid.is_complete reads it back."""
    config = read(run_dir / "config.json")
    cfg = RunConfig(**{f.name: config[f.name] for f in dataclasses.fields(RunConfig) if f.name in config})
    cfg.settings = config.get("requested_settings", {})
    return cfg


def command_config(command: str) -> RunConfig:
    """What `spd-bench run` would run for this command line (as cli.cmd_run builds it)."""
    argv = shlex.split(command)
    assert argv[:2] == ["spd-bench", "run"]
    args = build_parser().parse_args(argv[1:])
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
    run_over, settings = parse_overrides(args.overrides, args.method)
    cfg = RunConfig(task=args.task, method=args.method, model=args.model, sparsity=args.sparsity, seed=args.seed,
                    glue_dir=args.glue_dir, settings=settings)
    return dataclasses.replace(cfg, **run_over)


def test_a_run_model_has_task_labels_and_a_card_saying_how_it_was_made(spd_rte_run):
    run, _ = spd_rte_run
    model_dir = run / "model"
    metrics, manifest = read(run / "metrics.json"), read(run / "manifest.json")
    config = read(model_dir / "config.json")
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert config["label2id"] == {"entailment": 0, "not_entailment": 1}
    # the folder works as it is: plain transformers, and a pipeline that names the labels
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}
    classify = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir))
    assert classify({"text": "the cat sat", "text_pair": "a cat sat"})["label"] in ("entailment", "not_entailment")

    front, body = card_parts(model_dir)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-classification"
    assert {"spd-bench", "rte", "spd", "sparse"} <= set(front["tags"]) and front["metrics"] == ["accuracy"]
    assert "datasets" not in front and "base_model" not in front  # built-in samples and the random-init tiny
    final, best = metrics["final"], metrics["best"]
    assert f"| final (saved model) | {final['step']} | {final['dev']['score']:.2f} |" in body
    assert f"| best at final shape | {best['step']} | {best['dev']['score']:.2f} |" in body
    assert "target 50.0%; achieved 50.0%" in body
    params = metrics["params"]
    assert f"{params['nonzero'] / 1e6:.2f}M of {params['total'] / 1e6:.2f}M non-zero" in body
    assert f"(dev Acc {metrics['teacher']['dev']['score']:.2f})" in body
    assert "built-in samples" in body and "samples-v1:rte" in body
    assert manifest["git_sha"] and f"`{manifest['git_sha']}`" in body
    assert "| 0 | entailment |" in body and "| 1 | not_entailment |" in body
    settings = yaml.safe_load(body.split("## Settings", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0])
    assert settings["method_settings"]["prune_epochs"] == 1.0 and settings["method_settings"]["p0"] == 0.6
    assert settings["run"]["batch_size"] == 16
    # the command recomputes this very cell: the same grid key as the saved config
    assert Cell(command_config(reproduce_block(body))).key == Cell(saved_config(run)).key


def test_the_cached_teacher_has_labels_and_a_card(spd_rte_run):
    _, cache = spd_rte_run
    (teacher,) = (cache / "teachers").glob("rte-*/model")
    metrics = read(teacher.parent / "metrics.json")
    assert read(teacher / "config.json")["id2label"] == {"0": "entailment", "1": "not_entailment"}
    front, body = card_parts(teacher)
    assert "teacher" in front["tags"]
    assert f"| final (saved model) | {metrics['final']['step']} | {metrics['final']['dev']['score']:.2f} |" in body
    assert "achieved 0.0% (dense)" in body
    command = command_config(reproduce_block(body))
    assert command.method == "dense" and command.teacher_epochs == metrics["key"]["epochs"]
    assert AutoModelForSequenceClassification.from_pretrained(teacher).config.id2label[1] == "not_entailment"


def test_a_regression_model_has_one_score_label(tmp_path):
    out = tmp_path / "run"
    assert fast_run("dense", "stsb", out, tmp_path / "cache") == 0
    assert read(out / "model" / "config.json")["id2label"] == {"0": "score"}
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    front, body = card_parts(out / "model")
    assert front["metrics"] == ["spearman"] and "Spea (×100)" in body and "| 0 | score |" in body
    assert "dense" in front["tags"]


@pytest.mark.parametrize("task", ["mnli", "wnli", "sst2"])
def test_label_names_follow_the_task_ids(task):
    assert label_names(get_task(task)) == list(get_task(task).labels)
