"""One cell: data -> teacher (cached) -> method surgery -> the training loop -> evaluation -> a run directory.

Run directory (written atomically by store.atomic_dir; complete exactly when its completion record
complete.json verifies: every file below with the size and sha256 it was written with; metrics.json is
written last of the run's own files, so a record without it cannot exist):
  config.json       resolved run config and method settings
  manifest.json     git SHA, package versions, device, seed, times
  metrics.json      final and best-during-training dev metrics (with their step), teacher's, #params
  sparsity.json     zeros / size / sparsity of every prunable matrix of the saved model
  predictions.jsonl dev predictions (idx, prediction, label): any metric can be recomputed
  history.jsonl     metrics logged during training (for curves)
  model/            the final model, a Hugging Face checkpoint (safetensors) with its tokenizer
  .spd-bench        marker: spd-bench made this directory (so it may replace or clean it up)
  complete.json     the completion record, written last

A run writes into a new directory, an empty one, or a finished run directory of the same config that holds
only what spd-bench wrote (replaced when the new run finishes); anything else is refused before training
(claim_out_dir): a run never removes what it did not create.
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
from typing import Annotated, Callable, Literal

import datasets
import torch
from filelock import FileLock
from pydantic import Field

from harness import data, modelcard, models, store
from harness.errors import UserError
from harness.recipe import BuildContext, Phase, Recipe, all_parameters, epochs_to_steps
from harness.registry import get_method, make_settings
from harness.resume import Checkpointer, identity_of
from harness.tasks import Task, get_task
from harness.train import Hooks, LoopConfig, TrainResult, train
from harness.validation import Count, Device, Positive, Rate, check_fields
from spd.distill import TaskLoss
from spd.pruning import encoder_layers, matrix_report, prunable_matrices

TEACHER_FORMAT = 1  # bump when a change makes cached teachers invalid
datasets.disable_progress_bars()  # tokenizing a split takes a second; our own bars show a run's progress




@dataclass
class RunConfig:
    task: str
    method: str = "spd"
    model: str = models.DEFAULT_MODEL
    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    seed: Count = 42
    glue_dir: str | None = None          # a glue_data dir, 'hub', or None (GLUE_DIR, else built-in samples)
    batch_size: Positive = 32
    eval_batch_size: Positive = 128
    # at least [CLS] a [SEP] b [SEP] and some text; below that the tokenizer stops truncating pairs
    max_seq_length: Annotated[int, Field(ge=8)] = 128
    pad_to_max_length: bool = False      # True: pad every example to max_seq_length (official code)
    eval_steps: Count = 0                # 0: about 20 evaluations per run
    max_train_examples: Positive | None = None
    max_eval_examples: Positive | None = None
    train_eval_examples: Count = 256     # train examples scored at each evaluation (train-dev gap, Fig. 5)
    teacher_lr: Rate = 3e-5
    teacher_epochs: Annotated[float, Field(gt=0)] = 4.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Rate = 1.0
    device: Device | None = None
    # 'auto': bf16 autocast + TF32 on CUDA, fp32 on the CPU (a method preset may ask for fp32: official-code);
    # 'bf16' or 'fp32' force it. Evaluation logits are fp32 whatever this says (docs/gpu.md).
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # Minutes between mid-training checkpoints of the whole training state (also written at SIGTERM); a re-run
    # of an interrupted cell continues from the newest one (harness/resume.py). 0: only at SIGTERM.
    checkpoint_minutes: Annotated[float, Field(ge=0)] = 30.0
    # False: the run directory keeps everything but model/ (the weights), so a grid output stays a few MB and
    # can be committed or carried to a fresh machine; tables, status and plots need no weights.
    save_model: bool = True
    # True: torch's deterministic algorithms (and CUBLAS_WORKSPACE_CONFIG) on CUDA, so a teacher retrained on
    # another machine of the same kind is the same teacher. Slower; the CPU is deterministic anyway.
    deterministic: bool = False
    tensorboard: bool = False            # TensorBoard scalars in <run dir>/tensorboard/ (extra 'tensorboard')
    settings: dict = field(default_factory=dict)   # method-specific settings

    def validate(self) -> tuple[Task, object, object]:
        """Check every field, the task, the method and its settings, and max_seq_length against the model's
        positions, before anything is trained; fields are coerced in place ('2e-3' -> 0.002)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in check_fields(RunConfig, values).items():
            object.__setattr__(self, name, value)
        task = get_task(self.task)
        method = get_method(self.method)
        models.check_max_seq_length(self.model, self.max_seq_length)
        settings = make_settings(method, self.settings)
        return task, method, settings

    def key(self) -> str:
        return config_key(dataclasses.asdict(self), type(self))


def run_config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(RunConfig)} - {"settings"}


# A cell's key is a hash of what it computes. The fields below made up every key before fields were keyed by
# their difference from the default: they stay hashed always, so grids run before keep their keys. Any other
# field, present or added later, is hashed only when its value differs from its default, so adding a field
# with a default that keeps today's behaviour leaves every existing key as it is. Never add names here.
KEY_FIELDS_V1 = frozenset({
    "task", "method", "model", "sparsity", "seed", "glue_dir", "batch_size", "eval_batch_size", "max_seq_length",
    "pad_to_max_length", "eval_steps", "max_train_examples", "max_eval_examples", "train_eval_examples",
    "teacher_lr", "teacher_epochs", "weight_decay", "max_grad_norm", "settings"})
# Fields that do not change what a cell computes, so they stay out of its key.
NOT_IN_KEY = frozenset({"device", "checkpoint_minutes", "tensorboard"})


def _defaults(cls: type) -> dict:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


def config_key(values: dict, cls: type = RunConfig) -> str:
    """The key of a run config given as a dict of its fields (see KEY_FIELDS_V1)."""
    defaults = _defaults(cls)
    keyed = {k: v for k, v in values.items()
             if k not in NOT_IN_KEY and (k in KEY_FIELDS_V1 or k not in defaults or v != defaults[k])}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:10]


def saved_key(run_dir: Path) -> str | None:
    """The key of the config a run directory was made with (its config.json), or None if unreadable."""
    try:
        config = store.read_json(Path(run_dir) / "config.json")
        fields = {f.name: config[f.name] for f in dataclasses.fields(RunConfig) if f.name in config}
        return config_key({**dataclasses.asdict(RunConfig(**fields)), "settings": config.get("requested_settings", {})})
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def claim_out_dir(out_dir: str | os.PathLike, same_config: Callable[[Path], bool]) -> Path:
    """Where a run (or an evaluation) may write, decided before anything is trained or evaluated. A run never
    removes what it did not make: `out_dir` may be new, an empty directory, or a finished run directory that
    `same_config` says is of this same config and that holds only files spd-bench wrote (then the new run
    replaces it, atomically, when it finishes). Anything else is a UserError."""
    out = Path(out_dir)
    if out.is_symlink():
        raise UserError(f"output {out} is a symbolic link; give the directory it points to")
    if not out.exists():
        return out
    if not out.is_dir():
        raise UserError(f"output {out} is an existing file, not a directory; choose another output directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return out
    foreign = store.foreign_entries(out)
    if foreign is None:
        raise UserError(f"output directory {out} exists and is not a finished spd-bench run directory (it holds "
                        f"{entries[0]!r}); nothing was run: remove it or choose another output directory")
    if foreign:
        raise UserError(f"output directory {out} holds {foreign[0]!r}, which spd-bench did not write; nothing "
                        f"was run: move it away or choose another output directory")
    if not same_config(out):
        raise UserError(f"output directory {out} holds a finished run of another config; nothing was run: "
                        f"choose another output directory (a run replaces only a run of its own config)")
    return out


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
    fields = {"format": TEACHER_FORMAT, "model": cfg.model, "task": get_task(cfg.task).name,
              "lr": cfg.teacher_lr, "epochs": cfg.teacher_epochs, "batch_size": cfg.batch_size,
              "max_seq_length": cfg.max_seq_length, "pad": cfg.pad_to_max_length, "seed": cfg.seed,
              "max_train_examples": cfg.max_train_examples, "weight_decay": cfg.weight_decay}
    if cfg.precision != "auto":  # only named when forced, so the keys of existing teachers stay
        fields["precision"] = cfg.precision
    return fields


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
        ckpt = checkpointer(cfg, teacher_dir, {"teacher": teacher_fields(cfg), "data": td.fingerprint})
        result = _train(recipe, task, td, device, cfg, progress, checkpoint=ckpt)
        with store.atomic_dir(teacher_dir) as tmp:
            recipe.model.save_pretrained(tmp / "model", safe_serialization=True)
            td.tokenizer.save_pretrained(tmp / "model")
            modelcard.write_teacher_card(tmp / "model", task, fields, result, td.source, recipe.model)
            # The weights' checksum goes into every cell trained from this teacher: a grid resumed on a fresh
            # machine retrains its teachers, and the cells then say whether theirs was the same one.
            store.write_json(tmp / "metrics.json", {
                "key": fields, "final": result.final, "best": result.best, "precision": result.precision,
                "weights_sha256": store.file_sha256(tmp / "model" / "model.safetensors")})
        ckpt.discard()
    return teacher_dir


# Settings that do not change what a run computes: a run resumed with other values is the same run.
NOT_IN_IDENTITY = ("device", "checkpoint_minutes", "tensorboard")


def checkpointer(cfg: RunConfig, final_dir: Path, extra: dict) -> Checkpointer:
    """The mid-training state of the run that will end in `final_dir`: a hidden sibling, `.<name>.state`."""
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_IDENTITY}
    return Checkpointer(final_dir.parent / f".{final_dir.name}.state", identity_of({**config, **extra}),
                        every_seconds=cfg.checkpoint_minutes * 60)


def _train(recipe: Recipe, task: Task, td: TaskData, device, cfg: RunConfig, progress: bool,
           history_file: Path | None = None, hooks: Hooks | None = None,
           checkpoint: Checkpointer | None = None) -> TrainResult:
    loop = LoopConfig(eval_steps=cfg.eval_steps, max_grad_norm=cfg.max_grad_norm, weight_decay=cfg.weight_decay,
                      seed=cfg.seed, progress=progress, precision=cfg.precision, checkpoint=checkpoint)
    hooks = hooks or Hooks()
    user_on_eval, user_on_resume = hooks.on_eval, hooks.on_resume

    def on_eval(entry):
        if history_file is not None:
            with open(history_file, "a") as f:
                f.write(json.dumps(entry) + "\n")
        if user_on_eval:
            user_on_eval(entry)

    def on_resume(history):  # the interrupted run's curve, so history.jsonl is whole
        if history_file is not None:
            store.write_text(history_file, "".join(json.dumps(entry) + "\n" for entry in history))
        if user_on_resume:
            user_on_resume(history)

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
                     train_eval_loader=td.train_eval_loader(),
                     hooks=dataclasses.replace(hooks, on_resume=on_resume))
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
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for reproducible GEMMs
    torch.use_deterministic_algorithms(cfg.deterministic)  # per run: one run's choice does not leak into the next
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
    cfg.validate()   # the output directory is judged by the cell's key, of the validated config
    out_dir = claim_out_dir(out_dir, lambda d: saved_key(d) == cfg.key())
    task, method, settings, cache_dir, device, tokenizer, td = _setup(cfg, cache_dir)
    teacher_dir = ensure_teacher(cfg, task, td, device, cache_dir, progress)
    teacher_metrics = store.read_json(teacher_dir / "metrics.json")
    teacher = models.load_checkpoint(teacher_dir / "model")
    ctx = BuildContext(teacher=teacher, task=task, steps_per_epoch=td.steps_per_epoch,
                       sparsity=cfg.sparsity if method.prunes else 0.0, seed=cfg.seed,
                       load_pretrained=lambda: models.load_pretrained(cfg.model, task, cfg.seed))
    torch.manual_seed(cfg.seed)
    recipe = method.build(settings, ctx)
    with store.atomic_dir(out_dir) as tmp:
        ckpt = checkpointer(cfg, out_dir, {"settings": dataclasses.asdict(settings), "data": td.fingerprint,
                                            "teacher": teacher_dir.name})
        result = _train(recipe, task, td, device, cfg, progress, history_file=tmp / "history.jsonl",
                        checkpoint=ckpt)
        final_model = recipe.export(recipe.model).cpu()
        if cfg.save_model:
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
                   "teacher_weights_sha256": teacher_metrics.get("weights_sha256"),
                   "params": models.count_parameters(final_model),
                   "encoder_layers": final_model.config.num_hidden_layers}
        if cfg.save_model:  # model/: task labels + README.md (harness/modelcard.py)
            modelcard.write_run_card(tmp, task, metrics)
        store.write_json(tmp / "metrics.json", metrics)  # last: marks the directory complete
    ckpt.discard()  # the run is whole: its mid-training state has done its job
    return metrics
