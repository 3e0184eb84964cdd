"""Labels and a model card (README.md) for every exported model folder, so it can be shared as it is.

Every `model/` folder spd-bench writes (a run's, a cached teacher's, an evaluated checkpoint's) gets
  - `config.json` with `id2label`/`label2id` from the task (harness/tasks.py names in the task's id order;
    STS-B, a regression, has one label: "score"), and
  - `README.md`, a Hugging Face model card: method and settings, teacher, sparsity achieved, dev scores under
    both protocols (final model; best evaluation at the final shape), data source, commit and the command.

`AutoModelForSequenceClassification.from_pretrained(folder)` loads it unchanged: only label names move.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml
from transformers import AutoConfig

from harness import store
from harness.tasks import Task

CARD = "README.md"
REGRESSION_LABEL = "score"
# Base models whose hub id is known (the card's `base_model`); a local path or `tiny` has none.
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def label_names(task: Task) -> list[str]:
    """The task's label names in its id order; regression: one label, 'score'."""
    return [REGRESSION_LABEL] if task.is_regression else list(task.labels)


def set_labels(config, task: Task) -> None:
    """Give a transformers config the task's label names (id2label / label2id)."""
    names = label_names(task)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}


def label_model_dir(model_dir: Path, task: Task) -> None:
    """Rewrite a saved model's config.json with the task's labels (weights untouched)."""
    config = AutoConfig.from_pretrained(str(model_dir))
    if config.num_labels != len(label_names(task)):
        raise ValueError(f"{model_dir}: {config.num_labels} outputs, task {task.name} has {len(label_names(task))}")
    set_labels(config, task)
    config.save_pretrained(str(model_dir))


# --- the card ------------------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _scores_table(task: Task, rows: list[tuple[str, dict | None]]) -> list[str]:
    """Markdown rows: protocol | step | the paper's metric | every metric computed."""
    lines = [f"| protocol | step | {task.metric_label} (×100) | all metrics |", "|---|---|---|---|"]
    for label, record in rows:
        if not record:
            continue
        dev = record["dev"]
        others = ", ".join(f"{k} {v:.4f}" for k, v in sorted(dev.items()) if k != "score")
        lines.append(f"| {label} | {record.get('step', '—')} | {dev['score']:.2f} | {others} |")
    return lines


def _data_line(source: str | None, fingerprint: str | None) -> str:
    if source == "samples":
        where = "spd-bench's built-in samples (generated text with lexical cues, for tests and demos — not GLUE)"
    elif source == "hub":
        where = "GLUE from the Hugging Face hub (`nyu-mll/glue`)"
    elif source:
        where = f"GLUE files in the original `glue_data` layout at `{source}`"
    else:
        where = "unknown"
    return where + (f"; fingerprint `{fingerprint}`" if fingerprint else "")


def _front_matter(task: Task, tags: list[str], source: str | None, base_model: str | None) -> list[str]:
    meta = {"library_name": "transformers", "pipeline_tag": "text-classification",
            "tags": ["spd-bench", "glue", task.name, *tags], "metrics": [task.metric]}
    if source and source != "samples":
        meta["datasets"] = ["nyu-mll/glue"]
    if base_model:
        meta["base_model"] = base_model
    return ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]


def hub_base_model(model: str) -> str | None:
    """The base model's hub id where there is one (not `tiny`, not a local path)."""
    if model in HUB_IDS:
        return HUB_IDS[model]
    if model == "tiny" or Path(model).exists() or model.startswith((".", "/", "~")):
        return None
    return model


def _commit_line(manifest: dict | None) -> str:
    sha = (manifest or {}).get("git_sha")
    if not sha:
        return "unknown (no git checkout and no SPD_BENCH_GIT_SHA)"
    dirty = (manifest or {}).get("git_dirty")
    return f"`{sha}`" + (" (the checkout had uncommitted edits)" if dirty else "")


def _yaml_block(data: dict) -> list[str]:
    return ["```yaml", yaml.safe_dump(data, sort_keys=True, default_flow_style=False).strip(), "```"]


def _labels_block(task: Task, extra: str = "") -> list[str]:
    names = label_names(task)
    lines = ["## Labels", "", "| id | label |", "|---|---|", *(f"| {i} | {n} |" for i, n in enumerate(names))]
    if task.is_regression:
        lines += ["", "One output: the similarity score on GLUE's 0–5 scale."]
    return lines + ([extra] if extra else []) + [""]


def _usage(task: Task) -> list[str]:
    pair = ", text_pair" if task.is_pair else ""
    return ["## Use", "", "```python",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "model = AutoModelForSequenceClassification.from_pretrained(FOLDER)",
            "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
            f"logits = model(**tokenizer(text{pair}, return_tensors='pt')).logits",
            "```", "",
            "Pruned weights are stored as zeros in dense matrices: the model is as large and as fast as a dense one "
            "until a sparse kernel or format exploits the zeros.", ""]


PROTOCOLS = ("`final` is the saved model: the number spd-bench's tables report. `best` is the best evaluation during "
             "training among those at the final model shape (the official SPD code's protocol; it selects on the dev "
             "set, so it is optimistic).")


def render(*, title: str, intro: str, task: Task, facts: list[tuple[str, str]], scores: list[tuple[str, dict | None]],
           settings: dict, command: str, source: str | None, tags: list[str], base_model: str | None,
           labels_note: str = "", scores_note: str = PROTOCOLS) -> str:
    lines = _front_matter(task, tags, source, base_model)
    lines += [f"# {title}", "", intro, "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in facts), ""]
    lines += ["## Dev scores", "", *_scores_table(task, scores), "", scores_note, ""]
    lines += _labels_block(task, labels_note)
    lines += ["## Settings", "", *_yaml_block(settings), ""]
    lines += ["## Reproduce", "", "```bash", command, "```", ""]
    lines += _usage(task)
    lines += ["_Written by spd-bench, a reproducibility harness for Sparse Progressive Distillation "
              "(Huang et al., ACL 2022)._", ""]
    return "\n".join(lines)


def _cli_value(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def run_command(config: dict) -> str:
    """The `spd-bench run` command that recomputes this one cell (grid cells included)."""
    from harness.run import RunConfig, run_config_fields
    defaults = RunConfig(task=config["task"])
    fixed = {"task", "method", "model", "sparsity", "seed", "glue_dir", "device"}
    parts = ["spd-bench", "run", "--method", config["method"], "--task", config["task"], "--model", config["model"],
             "--sparsity", f"{config['sparsity']:g}", "--seed", str(config["seed"]),
             "--glue-dir", str(config.get("data_source") or config.get("glue_dir") or "samples")]
    for name in sorted(run_config_fields() - fixed):
        if name in config and config[name] != getattr(defaults, name, None):
            parts.append(f"{name}={_cli_value(config[name])}")
    for name, value in sorted((config.get("requested_settings") or {}).items()):
        parts.append(f"{name}={_cli_value(value)}")
    return shlex.join(parts)


def write_run_card(run_dir: Path, task: Task, metrics: dict) -> None:
    """Labels + card for `run_dir/model`, from the run's config.json, manifest.json and `metrics`."""
    from harness.registry import all_methods
    model_dir = Path(run_dir) / "model"
    config = store.read_json(Path(run_dir) / "config.json")
    manifest = store.read_json(Path(run_dir) / "manifest.json")
    label_model_dir(model_dir, task)
    method = all_methods().get(metrics["method"])
    params, teacher = metrics["params"], metrics.get("teacher")
    target = metrics["sparsity"]
    facts = [("Method", f"`{metrics['method']}`" + (f" — {method.description}" if method else "")),
             ("Task", f"{task.glue_dir_name} (GLUE); metric: {task.metric}"),
             ("Base model", f"`{metrics['model']}`, {metrics.get('encoder_layers', '?')} encoder layers"),
             ("Teacher", "none" if not teacher else
              f"the dense fine-tuned `{metrics['model']}` (dev {task.metric_label} {teacher['dev']['score']:.2f}), "
              f"cached as `{Path(str(config.get('teacher', ''))).name}`"),
             ("Sparsity", f"target {_pct(target)}; achieved {_pct(metrics['achieved_sparsity'])} of the encoder's "
                          f"prunable matrices"),
             ("Parameters", f"{params['nonzero'] / 1e6:.2f}M of {params['total'] / 1e6:.2f}M non-zero"),
             ("Seed / precision", f"{metrics['seed']} / {metrics.get('precision', '?')}"),
             ("Data", _data_line(config.get("data_source"), config.get("data_fingerprint"))),
             ("Commit", _commit_line(manifest)),
             ("Made", f"{manifest.get('finished_at', '?')} on {manifest.get('device', '?')}")]
    settings = {"run": {k: v for k, v in config.items()
                        if k not in ("settings", "requested_settings", "resolved", "teacher")},
                # as the method resolved them (presets and defaults filled in), where it says
                "method_settings": config.get("resolved") or config.get("settings", {})}
    text = render(
        title=f"{metrics['method']} · {task.glue_dir_name} · {_pct(metrics['achieved_sparsity'])} sparse "
              f"{Path(metrics['model']).name}",
        intro=f"A BERT sequence classifier for GLUE {task.glue_dir_name}, made by spd-bench's `{metrics['method']}` "
              f"method from a dense fine-tuned teacher.",
        task=task, facts=facts,
        scores=[("final (saved model)", metrics["final"]), ("best at final shape", metrics["best"]),
                ("best at any shape", metrics.get("best_any"))],
        settings=settings, command=run_command(config), source=config.get("data_source"),
        tags=[metrics["method"], "sparse" if metrics["achieved_sparsity"] > 0 else "dense"],
        base_model=hub_base_model(metrics["model"]))
    store.write_text(model_dir / CARD, text)


def write_teacher_card(model_dir: Path, task: Task, fields: dict, result, source: str, model) -> None:
    """Labels + card for a cached teacher's `model/`: the dense fine-tuned model every method starts from."""
    from harness import models
    from harness.run import sparsity_report
    label_model_dir(Path(model_dir), task)
    params = models.count_parameters(model)
    facts = [("Method", "dense fine-tuning (the teacher every spd-bench method of this cell starts from)"),
             ("Task", f"{task.glue_dir_name} (GLUE); metric: {task.metric}"),
             ("Base model", f"`{fields['model']}`"),
             ("Teacher", "none (this is the teacher)"),
             ("Sparsity", f"achieved {_pct(sparsity_report(model)['overall'])} (dense)"),
             ("Parameters", f"{params['nonzero'] / 1e6:.2f}M of {params['total'] / 1e6:.2f}M non-zero"),
             ("Seed", str(fields["seed"])),
             ("Data", _data_line(source, fields.get("data"))),
             ("Commit", _commit_line({"git_sha": store.git_sha(), "git_dirty": store.git_dirty()}))]
    command = ["spd-bench", "run", "--method", "dense", "--task", task.name, "--model", fields["model"],
               "--seed", str(fields["seed"]), "--glue-dir", source,
               f"teacher_lr={fields['lr']}", f"teacher_epochs={fields['epochs']}",
               f"batch_size={fields['batch_size']}", f"max_seq_length={fields['max_seq_length']}",
               f"pad_to_max_length={str(fields['pad']).lower()}", f"weight_decay={fields['weight_decay']}"]
    if fields.get("max_train_examples"):
        command.append(f"max_train_examples={fields['max_train_examples']}")
    text = render(
        title=f"dense teacher · {task.glue_dir_name} · {Path(fields['model']).name}",
        intro=f"The dense `{fields['model']}` fine-tuned on GLUE {task.glue_dir_name}: spd-bench's cached teacher. "
              f"`spd-bench run --method dense` evaluates it unchanged.",
        task=task, facts=facts,
        scores=[("final (saved model)", result.final), ("best at final shape", result.best)],
        settings={"teacher": fields}, command=shlex.join(command), source=source, tags=["dense", "teacher"],
        base_model=hub_base_model(fields["model"]))
    store.write_text(Path(model_dir) / CARD, text)


def write_eval_card(run_dir: Path, task: Task, metrics: dict) -> None:
    """Labels + card for an evaluated checkpoint's `run_dir/model` (`spd-bench eval`)."""
    from harness.evaluate import EvalConfig, eval_command
    model_dir = Path(run_dir) / "model"
    config = store.read_json(Path(run_dir) / "config.json")
    manifest = store.read_json(Path(run_dir) / "manifest.json")
    label_model_dir(model_dir, task)
    params, labels = metrics["params"], config["labels"]
    cfg = EvalConfig(**{f: config[f] for f in EvalConfig.__dataclass_fields__ if f in config})
    origin = [f"hub commit `{config['checkpoint_commit']}`"] if config.get("checkpoint_commit") else []
    origin += [f"sha256 of {f}: `{h}`" for f, h in (config.get("checkpoint_sha256") or {}).items()]
    facts = [("Method", f"`{metrics['method']}`: a checkpoint made outside spd-bench, evaluated as it is"),
             ("Checkpoint", f"`{metrics['checkpoint']}`" + (f" ({'; '.join(origin)})" if origin else "")),
             ("Task", f"{task.glue_dir_name} (GLUE); metric: {task.metric}"),
             ("Base model", f"`{metrics['model']}`, {metrics.get('encoder_layers', '?')} encoder layers"),
             ("Teacher", "unknown (not made by spd-bench)"),
             ("Sparsity", f"achieved {_pct(metrics['achieved_sparsity'])} of the encoder's prunable matrices"),
             ("Parameters", f"{params['nonzero'] / 1e6:.2f}M of {params['total'] / 1e6:.2f}M non-zero"),
             ("Labels", labels["how"]),
             ("Precision", str(metrics.get("precision", "?"))),
             ("Data", _data_line(config.get("data_source"), config.get("data_fingerprint"))),
             ("Commit", "spd-bench at " + _commit_line(manifest)),
             ("Made", f"{manifest.get('finished_at', '?')} on {manifest.get('device', '?')}")]
    note = ("" if labels["checkpoint_id2label"] == labels["task_labels"] else
            f"\nThe checkpoint's own output names were `{', '.join(labels['checkpoint_id2label'])}`: "
            f"{labels['how']}. This copy's outputs are in the task's order above.")
    text = render(
        title=f"{metrics['method']} · {task.glue_dir_name} · {_pct(metrics['achieved_sparsity'])} sparse",
        intro=f"`{metrics['checkpoint']}` scored by `spd-bench eval` on GLUE {task.glue_dir_name} dev with the data "
              f"and metrics of spd-bench's trained cells. Nothing was trained: `final` and `best` are this one "
              f"evaluation.",
        task=task, facts=facts, scores=[("final = best (this evaluation)", metrics["final"])],
        scores_note="Nothing was trained: under both protocols (final model, best evaluation) the score is this one.",
        settings={"eval": {k: v for k, v in config.items() if k not in ("labels",)}},
        command=shlex.join(eval_command(cfg)), source=config.get("data_source"),
        tags=["evaluated-checkpoint", "sparse" if metrics["achieved_sparsity"] > 0 else "dense"],
        base_model=hub_base_model(config["model"]) if config.get("model") else None, labels_note=note)
    store.write_text(model_dir / CARD, text)
