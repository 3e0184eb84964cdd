"""One cell: data -> teacher (cached) -> method surgery -> the training loop -> evaluation -> a run directory.

Run directory (complete exactly when metrics.json exists; written atomically):
  config.json       resolved run config and method settings
  manifest.json     git SHA, package versions, device, seed, times
  metrics.json      final and best-during-training dev metrics (with their step), teacher's, #params
  sparsity.json     zeros / size / sparsity of every prunable matrix of the saved model
  predictions.jsonl dev predictions (idx, prediction, label): any metric can be recomputed
  history.jsonl     metrics logged during training (for curves)
  model/            the final model, a Hugging Face checkpoint (safetensors) with its tokenizer
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from filelock import FileLock

from harness import data, modelcard, models, store
from harness.errors import UserError
from harness.recipe import BuildContext, Phase, Recipe, all_parameters, epochs_to_steps
from harness.registry import coerce, get_method, make_settings
from harness.tasks import Task, get_task
from harness.train import Hooks, LoopConfig, TrainResult, train
from spd.distill import TaskLoss
from spd.pruning import encoder_layers, matrix_report, prunable_matrices

TEACHER_FORMAT = 1  # bump when a change makes cached teachers invalid
datasets.disable_progress_bars()  # tokenizing a split takes a second; our own bars show a run's progress


@dataclass
class RunConfig:
    task: str
    method: str = "spd"
    model: str = models.DEFAULT_MODEL
    sparsity: float = 0.9
    seed: int = 42
    glue_dir: str | None = None          # a glue_data dir, 'hub', or None (GLUE_DIR, else built-in samples)
    batch_size: int = 32
    eval_batch_size: int = 128
    max_seq_length: int = 128
    pad_to_max_length: bool = False      # True: pad every example to max_seq_length (official code)
    eval_steps: int = 0                  # 0: about 20 evaluations per run
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    train_eval_examples: int = 256       # train examples scored at each evaluation (train-dev gap, Fig. 5)
    teacher_lr: float = 3e-5
    teacher_epochs: float = 4.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    device: str | None = None
    # 'auto': bf16 autocast + TF32 on CUDA, fp32 on the CPU (a method preset may ask for fp32: official-code);
    # 'bf16' or 'fp32' force it. Evaluation logits are fp32 whatever this says (docs/gpu.md).
    precision: str = "auto"
    tensorboard: bool = False            # TensorBoard scalars in <run dir>/tensorboard/ (extra 'tensorboard')
    settings: dict = field(default_factory=dict)   # method-specific settings

    def validate(self) -> tuple[Task, object, object]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in coerce(RunConfig, values, "the run").items():
            object.__setattr__(self, name, value)
        task = get_task(self.task)
        method = get_method(self.method)
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {self.sparsity}")
        for name in ("batch_size", "eval_batch_size", "max_seq_length"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        settings = make_settings(method, self.settings)
        return task, method, settings


def run_config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(RunConfig)} - {"settings"}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPD_BENCH_CACHE", Path.home() / ".cache" / "spd-bench"))


class TaskData:
    """Tokenized train/dev splits and their loaders for one run."""

    def __init__(self, cfg: RunConfig, task: Task, tokenizer, cache_dir: Path):
        self.source = data.resolve_source(cfg.glue_dir)
        self.fingerprint = data.data_fingerprint(task, self.source)
        train_raw = data.load_split(task, "train", self.source)
        dev_raw = data.load_split(task, "dev", self.source)
        if cfg.max_train_examples:
            train_raw = train_raw.shuffle(seed=cfg.seed).select(range(min(cfg.max_train_examples, len(train_raw))))
        if cfg.max_eval_examples:
            dev_raw = dev_raw.select(range(min(cfg.max_eval_examples, len(dev_raw))))
        self.dev_idx = list(dev_raw["idx"])
        tok_cache = cache_dir / "tokenized"
        self.train = data.tokenize(train_raw, tokenizer, cfg.max_seq_length, tok_cache)
        self.dev = data.tokenize(dev_raw, tokenizer, cfg.max_seq_length, tok_cache)
        self.tokenizer, self.cfg = tokenizer, cfg
        self.steps_per_epoch = max(1, len(self.train) // cfg.batch_size)

    def _loader(self, ds, batch_size, shuffle, seed=0, pad_to_max_length: bool = False):
        padded = self.cfg.pad_to_max_length or pad_to_max_length
        pad = {"pad_to": self.cfg.max_seq_length} if padded else {}
        return data.make_loader(ds, self.tokenizer, batch_size, shuffle=shuffle, seed=seed, **pad)

    def train_loader(self, seed: int, pad_to_max_length: bool = False):
        return self._loader(self.train, self.cfg.batch_size, True, seed, pad_to_max_length)

    def dev_loader(self):
        return self._loader(self.dev, self.cfg.eval_batch_size, False)

    def train_eval_loader(self):
        if not self.cfg.train_eval_examples:
            return None
        subset = self.train.select(range(min(self.cfg.train_eval_examples, len(self.train))))
        return self._loader(subset, self.cfg.eval_batch_size, False)


def teacher_fields(cfg: RunConfig) -> dict:
    """Everything the teacher depends on except the data's content (see teacher_key)."""
    return {"format": TEACHER_FORMAT, "model": cfg.model, "task": get_task(cfg.task).name,
              "lr": cfg.teacher_lr, "epochs": cfg.teacher_epochs, "batch_size": cfg.batch_size,
              "max_seq_length": cfg.max_seq_length, "pad": cfg.pad_to_max_length, "seed": cfg.seed,
              "max_train_examples": cfg.max_train_examples, "weight_decay": cfg.weight_decay}


def teacher_identity(cfg: RunConfig) -> str:
    """Groups cells that share a teacher, without reading the data."""
    return json.dumps({**teacher_fields(cfg), "source": cfg.glue_dir}, sort_keys=True)


def teacher_key(cfg: RunConfig, fingerprint: str) -> tuple[str, dict]:
    fields = {**teacher_fields(cfg), "data": fingerprint}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return f"{get_task(cfg.task).name}-{Path(cfg.model).name}-seed{cfg.seed}-{digest}", fields


def ensure_teacher(cfg: RunConfig, task: Task, td: TaskData, device, cache_dir: Path, progress: bool) -> Path:
    """The fine-tuned dense teacher's directory, training it once per key; shared by every method."""
    key, fields = teacher_key(cfg, td.fingerprint)
    teacher_dir = cache_dir / "teachers" / key
    teacher_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(teacher_dir) + ".lock"):
        if (teacher_dir / "metrics.json").exists():
            return teacher_dir
        model = models.load_pretrained(cfg.model, task, cfg.seed)
        steps = max(1, epochs_to_steps(cfg.teacher_epochs, td.steps_per_epoch))
        recipe = Recipe(model=model, phases=[Phase("finetune", steps, cfg.teacher_lr, all_parameters)],
                        loss=TaskLoss(task.is_regression))
        result = _train(recipe, task, td, device, cfg, progress)
        with store.atomic_dir(teacher_dir) as tmp:
            recipe.model.save_pretrained(tmp / "model", safe_serialization=True)
            td.tokenizer.save_pretrained(tmp / "model")
            modelcard.write_teacher_card(tmp / "model", task, fields, result, td.source, recipe.model)
            store.write_json(tmp / "metrics.json", {"key": fields, "final": result.final, "best": result.best})
    return teacher_dir


def _train(recipe: Recipe, task: Task, td: TaskData, device, cfg: RunConfig, progress: bool,
           history_file: Path | None = None, hooks: Hooks | None = None) -> TrainResult:
    loop = LoopConfig(eval_steps=cfg.eval_steps, max_grad_norm=cfg.max_grad_norm, weight_decay=cfg.weight_decay,
                      seed=cfg.seed, progress=progress, precision=cfg.precision)
    hooks = hooks or Hooks()
    user_on_eval = hooks.on_eval

    def on_eval(entry):
        if history_file is not None:
            with open(history_file, "a") as f:
                f.write(json.dumps(entry) + "\n")
        if user_on_eval:
            user_on_eval(entry)

    def train_loader(epoch: int):  # epoch e's shuffle is seed*1000 + e: the data order is reproducible
        return td.train_loader(cfg.seed * 1000 + epoch, pad_to_max_length=recipe.pad_to_max_length)

    hooks = dataclasses.replace(hooks, on_eval=on_eval)
    tb = None
    if cfg.tensorboard and history_file is not None:  # a cell's training, not its teacher's (harness/tblog.py)
        from harness import tblog
        tb = tblog.for_recipe(history_file.parent, recipe)
        hooks = tb.hooks(hooks)
    torch.manual_seed(cfg.seed)  # dropout
    try:
        return train(recipe, task, train_loader, td.dev_loader(), device, loop,
                     train_eval_loader=td.train_eval_loader(), hooks=hooks)
    finally:
        if tb is not None:
            tb.close()


def sparsity_report(model) -> dict:
    report = matrix_report(prunable_matrices(encoder_layers(model)))
    zeros = sum(r["zeros"] for r in report.values())
    numel = sum(r["numel"] for r in report.values())
    return {"overall": zeros / numel, "matrices": report}


def _setup(cfg: RunConfig, cache_dir):
    task, method, settings = cfg.validate()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    device = models.pick_device(cfg.device)
    tokenizer = models.load_tokenizer(cfg.model)
    td = TaskData(cfg, task, tokenizer, cache_dir)
    return task, method, settings, cache_dir, device, tokenizer, td


def prepare_teacher(cfg: RunConfig, cache_dir=None, progress: bool = True) -> Path:
    """Train the cell's teacher if it is not cached yet (the grid runs these first)."""
    task, _, _, cache_dir, device, _, td = _setup(cfg, cache_dir)
    return ensure_teacher(cfg, task, td, device, cache_dir, progress)


def run_cell(cfg: RunConfig, out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
             progress: bool = True) -> dict:
    """Run one (task, method, model, sparsity, seed) cell into `out_dir`; returns its metrics."""
    started = time.time()
    task, method, settings, cache_dir, device, tokenizer, td = _setup(cfg, cache_dir)
    teacher_dir = ensure_teacher(cfg, task, td, device, cache_dir, progress)
    teacher_metrics = store.read_json(teacher_dir / "metrics.json")
    teacher = models.load_checkpoint(teacher_dir / "model")
    ctx = BuildContext(teacher=teacher, task=task, steps_per_epoch=td.steps_per_epoch,
                       sparsity=cfg.sparsity if method.prunes else 0.0, seed=cfg.seed,
                       load_pretrained=lambda: models.load_pretrained(cfg.model, task, cfg.seed))
    torch.manual_seed(cfg.seed)
    recipe = method.build(settings, ctx)
    out_dir = Path(out_dir)
    with store.atomic_dir(out_dir) as tmp:
        result = _train(recipe, task, td, device, cfg, progress, history_file=tmp / "history.jsonl")
        final_model = recipe.export(recipe.model).cpu()
        final_model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        with open(tmp / "predictions.jsonl", "w") as f:
            for idx, pred, label in zip(td.dev_idx, result.final_predictions.tolist(), td.dev["labels"]):
                f.write(json.dumps({"idx": idx, "prediction": pred, "label": label}) + "\n")
        sparsity = sparsity_report(final_model)
        store.write_json(tmp / "sparsity.json", sparsity)
        config = {**dataclasses.asdict(cfg), "settings": dataclasses.asdict(settings),
                  "requested_settings": cfg.settings,
                  "resolved": recipe.info, "data_source": td.source, "data_fingerprint": td.fingerprint,
                  "teacher": str(teacher_dir), "steps_per_epoch": td.steps_per_epoch,
                  "total_steps": recipe.total_steps}
        store.write_json(tmp / "config.json", config)
        finished = time.time()
        store.write_json(tmp / "manifest.json", store.manifest(
            device, cfg.seed, started, finished, train_seconds=round(result.train_seconds, 3),
            step_seconds=round(result.step_seconds, 3)))
        metrics = {"task": task.name, "method": method.name, "model": cfg.model, "sparsity": ctx.sparsity,
                   "seed": cfg.seed, "metric": task.metric, "final": result.final, "best": result.best,
                   "best_any": result.best_any, "precision": result.precision,
                   "teacher": teacher_metrics["final"], "achieved_sparsity": sparsity["overall"],
                   "params": models.count_parameters(final_model),
                   "encoder_layers": final_model.config.num_hidden_layers}
        modelcard.write_run_card(tmp, task, metrics)  # model/: task labels + README.md (harness/modelcard.py)
        store.write_json(tmp / "metrics.json", metrics)  # last: marks the directory complete
    return metrics
