"""The one training loop. It runs any `Recipe`: phases in order, each with its own AdamW and linear
warm-up/decay schedule; per batch a grafting draw, the teacher's forward when the loss needs it, the student's
forward, the recipe's loss, backward, gradient clipping, an optimizer step, then the pruner (masks re-applied
after every step). Dev evaluation runs every `eval_steps` and at the end of every phase, always on the student.

On CUDA the loop never waits for the GPU inside a step: the loss is read (progress bar, finiteness check) every
`log_every` steps, the grafting draws come from a CPU generator, AdamW is fused and the masks are re-applied in
one foreach call. Attention probabilities are computed (eager attention) only while a loss needs them; other
passes use sdpa on CUDA. On the CPU the loop computes exactly what it always did (tests/test_pinned.py).

Tools attach through `Hooks` (bench/ times a step's parts with `lap`; logs and checkpoints use `on_step` and
`on_eval`) instead of copying the loop.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from harness.errors import Preempted, UserError
from harness.recipe import Recipe
from harness.resume import Checkpointer, rng_state, set_rng_state
from harness.tasks import Task, compute_metrics
from spd import grafting

PRECISIONS = ("auto", "bf16", "fp32")


class TrainingDiverged(UserError):
    """The loss became NaN or inf: the run stops and no metrics are written."""


@dataclass
class LoopConfig:
    eval_steps: int = 0          # 0: about 20 evaluations over the run
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    seed: int = 42
    progress: bool = True
    precision: str = "auto"      # see resolve_precision
    log_every: int = 50          # CUDA: steps between reads of the loss (each read waits for the GPU)
    checkpoint: Checkpointer | None = None   # mid-training state, saved periodically and at SIGTERM


@dataclass
class StepEnd:
    """What `Hooks.on_step` sees after an optimizer step. Tensors are unread: reading one waits for the GPU."""
    step: int
    phase: str
    loss: torch.Tensor
    parts: dict
    p: float
    lr: float
    model: nn.Module


@dataclass
class Hooks:
    on_step: Callable[[StepEnd], None] | None = None
    on_eval: Callable[[dict], None] | None = None      # every history entry, as it is recorded
    # The boundaries of a step's parts ('batch', 'draw', 'teacher', 'student', 'loss', 'backward', 'optimizer',
    # 'pruner'): bench/ times them here. Called only when set.
    lap: Callable[[str], None] | None = None
    on_resume: Callable[[list], None] | None = None    # a resumed run's history so far, before it goes on


@dataclass
class TrainResult:
    final: dict
    best: dict                   # best dev evaluation of the final model shape (the official code's protocol)
    best_any: dict               # best dev evaluation of any shape (mid-pruning included)
    history: list = field(default_factory=list)
    final_predictions: np.ndarray | None = None
    train_seconds: float = 0.0
    step_seconds: float = 0.0
    precision: str = "fp32"


def resolve_precision(requested: str, recipe_precision: str | None, device: torch.device) -> str:
    """'bf16' or 'fp32': an explicit run setting wins, then the recipe's (official-code: fp32), then the device's
    default (bf16 autocast + TF32 on CUDA, fp32 on the CPU)."""
    if requested not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return recipe_precision or ("bf16" if device.type == "cuda" else "fp32")


def autocast(device: torch.device, precision: str = "bf16"):
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for CUDA's fp32 matmuls while the block runs (part of 'bf16'), the flags as they were afterwards: they
    are process-wide, and a later fp32 evaluation in the same process must not inherit them."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def set_attention(model: nn.Module, implementation: str) -> None:
    """Switch every config in the model (grafted students hold deep copies) to 'eager' or 'sdpa'."""
    seen = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and id(config) not in seen:
            seen.add(id(config))
            config._attn_implementation = implementation


def fast_attention(device: torch.device) -> str:
    # sdpa wherever no loss needs the probabilities; on the CPU eager stays, so CPU results do not move.
    return "sdpa" if device.type == "cuda" else "eager"


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def predict(model: nn.Module, loader, task: Task, device: torch.device,
            precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """(predictions, references) on the student path: class ids, or scores for regression.

    The encoder runs under the run's precision; the pooler and classifier run in fp32, so scores do not tie
    (bf16 has 8 bits of mantissa) and the saved metric is what the saved checkpoint gives."""
    was_training, attention = model.training, model.config._attn_implementation
    model.eval()
    grafting.use_students(model, True)
    set_attention(model, fast_attention(device))
    preds, refs = [], []
    for batch in loader:
        batch = to_device(batch, device)
        labels = batch.pop("labels")
        with autocast(device, precision):
            hidden = model.bert(**batch).last_hidden_state
        with torch.autocast(device.type, enabled=False), tf32(False):
            logits = model.classifier(model.bert.pooler(hidden.float()))
        preds.append(logits.view(-1) if task.is_regression else logits.argmax(-1))
        refs.append(labels)
    set_attention(model, attention)
    model.train(was_training)
    return torch.cat(preds).cpu().numpy(), torch.cat(refs).cpu().numpy()


def evaluate(model, loader, task, device, precision: str = "fp32") -> tuple[dict, np.ndarray]:
    predictions, references = predict(model, loader, task, device, precision)
    return compute_metrics(task, predictions, references), predictions


def _optimizer(params, cfg: LoopConfig, lr: float, device: torch.device):
    decay = [p for n, p in params if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in params if n.endswith("bias") or "LayerNorm" in n]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for the whole update on CUDA; the CPU keeps torch's default path (pinned results).
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=lr, eps=cfg.adam_eps, **fused)


def _set_trainable(model: nn.Module, trainable, every_gradient: bool = False) -> tuple[list, list]:
    """(the phase's trainable (name, parameter) pairs, the parameters outside them that still get gradients).

    `every_gradient`: the official code's recipes never turn `requires_grad` off, so the embeddings, the
    classifier and the drawn teacher layers get gradients that AdamW never steps but that count in the norm
    they clip (`clip_grad_norm_(model.parameters())`); those parameters are the second list."""
    params = list(trainable)
    if not params:
        raise ValueError("a phase with nothing to train")
    chosen = {id(p) for _, p in params}
    for p in model.parameters():
        p.requires_grad_(every_gradient or id(p) in chosen)
    return params, [p for p in model.parameters() if every_gradient and id(p) not in chosen]


def _zero_grads(tensors: list, set_to_none: bool) -> None:
    """What `optimizer.zero_grad` does, for parameters no optimizer holds."""
    grads = [p.grad for p in tensors if p.grad is not None]
    if set_to_none:
        for p in tensors:
            p.grad = None
    elif grads:
        torch._foreach_zero_(grads)


def _teacher_outputs(model, batch, device, precision: str = "bf16"):
    """The teacher's forward on the same grafted model: every slot on its teacher layers, no dropout."""
    grafting.use_students(model, False)
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        out = model(**batch, output_attentions=True, output_hidden_states=True)
    model.train()
    return out


class _BatchStream:
    """Epochs until the recipe's step budget is spent, each with its own shuffle; knows its position, so a
    resumed run sees the batches the interrupted one would have seen next."""

    def __init__(self, make_loader: Callable[[int], object], epoch: int = 0, index: int = 0):
        self.make_loader, self.epoch, self.index = make_loader, epoch, index
        self._it: Iterator[dict] | None = None

    def __next__(self) -> dict:
        while True:
            if self._it is None:
                self._it = iter(self.make_loader(self.epoch))
                for _ in range(self.index):      # resuming mid-epoch: skip what was already trained on
                    next(self._it)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it, self.epoch, self.index = None, self.epoch + 1, 0
                continue
            self.index += 1
            return batch


class _NonFinite:
    """Watches the loss on the device; `check` reads it (a host synchronisation) and raises if it went bad."""

    def __init__(self):
        self.bad, self.since = None, 0

    def add(self, loss: torch.Tensor) -> None:
        flag = ~torch.isfinite(loss.detach())
        self.bad = flag if self.bad is None else self.bad | flag

    def check(self, step: int, phase: str) -> None:
        if self.bad is not None and bool(self.bad):
            window = f"at step {step}" if self.since == step - 1 else f"between steps {self.since + 1} and {step}"
            raise TrainingDiverged(f"loss became non-finite {window} (phase {phase}); "
                                   f"no metrics written — try a lower learning rate")
        self.bad, self.since = None, step


def _at_final_shape(recipe: Recipe, step: int) -> bool:
    if recipe.final_shape is not None:
        return bool(recipe.final_shape(step))
    pruner = recipe.pruner
    return pruner is None or pruner.current_sparsity >= pruner.final_sparsity - 1e-12


def train(recipe: Recipe, task: Task, make_train_loader: Callable[[int], object], dev_loader,
          device: torch.device, cfg: LoopConfig, train_eval_loader=None, hooks: Hooks | None = None) -> TrainResult:
    """Run `recipe`. `make_train_loader(epoch)` gives the epoch's shuffled batches (the data order is a function
    of the epoch, so a run can be replayed)."""
    restore_sigterm = cfg.checkpoint.watch_sigterm() if cfg.checkpoint else (lambda: None)
    try:  # TF32 is part of 'bf16' on CUDA; 'fp32' means the official code's full fp32
        precision = resolve_precision(cfg.precision, recipe.precision, device)
        with tf32(device.type == "cuda" and precision == "bf16"):
            return _train(recipe, task, make_train_loader, dev_loader, device, cfg, train_eval_loader, hooks,
                          precision)
    finally:  # however the run ends (finished, preempted, diverged, crashed), SIGTERM and TF32 are as they were
        restore_sigterm()


def _train(recipe: Recipe, task: Task, make_train_loader: Callable[[int], object], dev_loader,
           device: torch.device, cfg: LoopConfig, train_eval_loader, hooks: Hooks | None,
           precision: str) -> TrainResult:
    hooks = hooks or Hooks()
    lap = hooks.lap or (lambda name: None)
    recipe.to(device)
    model = recipe.model
    total = recipe.total_steps
    eval_every = cfg.eval_steps or max(1, math.ceil(total / 20))
    sync_every = cfg.log_every if device.type == "cuda" else 1   # on the CPU a read costs nothing
    generator = torch.Generator().manual_seed(cfg.seed)           # grafting draws: CPU, never a GPU sync
    batches = _BatchStream(make_train_loader)
    history, best, best_any, step = [], None, None, 0
    started, step_time = time.perf_counter(), 0.0
    optimizer, nonfinite = None, _NonFinite()
    ckpt = cfg.checkpoint
    saved = ckpt.load() if ckpt else None     # (model tensors, masks, loop state) of an interrupted run

    def run_eval(phase_name: str, extra: dict) -> dict:
        nonlocal best, best_any
        metrics, predictions = evaluate(model, dev_loader, task, device, precision)
        entry = {"step": step, "phase": phase_name, "dev": metrics, **extra,
                 "final_shape": _at_final_shape(recipe, step)}
        if train_eval_loader is not None:
            entry["train"] = evaluate(model, train_eval_loader, task, device, precision)[0]
        record = {"step": step, "phase": phase_name, "dev": metrics}
        if best_any is None or metrics["score"] > best_any["dev"]["score"]:
            best_any = record
        if entry["final_shape"] and (best is None or metrics["score"] > best["dev"]["score"]):
            best = record
        history.append(entry)
        if hooks.on_eval:
            hooks.on_eval(entry)
        return {"metrics": metrics, "predictions": predictions}

    def state_now(**extra) -> dict:
        return {"p": recipe.grafting(step) if recipe.grafting else 1.0,
                "sparsity": recipe.pruner.current_sparsity if recipe.pruner else 0.0, **extra}

    def save_state(phase_index: int, next_i: int, optimizer, scheduler) -> None:
        masks = recipe.pruner.masks if recipe.pruner else {}
        ckpt.save(step, model, masks, {
            "step": step, "phase_index": phase_index, "next_i": next_i, "epoch": batches.epoch,
            "index": batches.index, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(), "rng": rng_state(), "history": history, "best": best,
            "best_any": best_any, "step_time": step_time,
            "sparsity": recipe.pruner.current_sparsity if recipe.pruner else 0.0})

    bar = tqdm(total=total, desc=f"{task.name}", disable=not cfg.progress, leave=False)
    last = None
    for phase_index, phase in enumerate(recipe.phases):
        if phase.before is not None:
            recipe.model = phase.before(model)
            recipe.to(device)
            model = recipe.model
        if saved is not None and phase_index < saved[2]["phase_index"]:
            continue  # resuming: this phase's surgery is replayed above, its training is done
        params, untrained = _set_trainable(model, phase.trainable(model), recipe.clip_all_parameters)
        clipped = list(model.parameters()) if recipe.clip_all_parameters else [p_ for _, p_ in params]
        if optimizer is None or phase.fresh_optimizer:
            optimizer = _optimizer(params, cfg, phase.lr, device)
        else:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = phase.lr
        scheduler = get_linear_schedule_with_warmup(
            optimizer, round(phase.warmup_ratio * phase.steps), max(1, phase.steps))
        needs_teacher = recipe.loss.needs_teacher
        set_attention(model, "eager" if needs_teacher else fast_attention(device))
        model.train()
        first = 0
        if saved is not None:  # the saved phase: load everything, then continue at its next step
            tensors, masks, state = saved
            model.load_state_dict(tensors, strict=True)
            if recipe.pruner is not None:
                recipe.pruner.masks = {k: m.to(device) for k, m in masks.items()}
                recipe.pruner.current_sparsity = state["sparsity"]
            optimizer.load_state_dict(state["optimizer"])
            if not recipe.zero_grad_to_none:
                # Zeroed (not freed) gradients persist: every parameter AdamW has stepped holds a zero gradient
                # between steps and is stepped again even when out of the next batch's path. Restore them.
                for _, p_ in params:
                    if optimizer.state.get(p_):
                        p_.grad = torch.zeros_like(p_)
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            set_rng_state(state["rng"])
            batches = _BatchStream(make_train_loader, state["epoch"], state["index"])
            step, first, history = state["step"], state["next_i"], state["history"]
            best, best_any, step_time = state["best"], state["best_any"], state["step_time"]
            saved = None
            bar.update(step)
            if hooks.on_resume:
                hooks.on_resume(history)
        loss = None
        for i in range(first, phase.steps):
            t0 = time.perf_counter()
            batch = to_device(next(batches), device)
            labels = batch.pop("labels")
            lap("batch")
            if recipe.grafting:
                p = recipe.grafting(step)
                grafting.sample_grafting(model, p, generator)
            else:
                p = 1.0
                grafting.use_students(model, True)
            lap("draw")
            teacher_out = None
            if needs_teacher:
                draws = [s.use_student for s in grafting.slots(model)]
                teacher_out = _teacher_outputs(model, batch, device, precision)
                grafting.use_students(model, draws)
                lap("teacher")
            with autocast(device, precision):
                out = model(**batch, output_attentions=needs_teacher, output_hidden_states=needs_teacher)
            lap("student")
            loss, parts = recipe.loss(out, labels, batch, teacher_out)
            nonfinite.add(loss)
            lap("loss")
            # A draw that puts no trainable module in the path (every slot on its teacher layers) leaves
            # nothing to update; the step still counts, as in the official code. (Clipping over all parameters
            # keeps every gradient on, so there the loss always has one and the official step is taken.)
            if loss.requires_grad:
                loss.backward()
                lap("backward")
                torch.nn.utils.clip_grad_norm_(clipped, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
            else:  # keep the LR schedule on the global step; torch warns when optimizer.step() was skipped
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
            # set_to_none=False is the official code's zero_grad(): modules out of the next batch's path then
            # keep a zero gradient and AdamW's momentum still moves them.
            optimizer.zero_grad(set_to_none=recipe.zero_grad_to_none)
            _zero_grads(untrained, recipe.zero_grad_to_none)
            lap("optimizer")
            step += 1
            if recipe.pruner is not None:
                recipe.pruner.step(step)
            lap("pruner")
            step_time += time.perf_counter() - t0
            bar.update(1)
            evaluating = step % eval_every == 0 and i != phase.steps - 1  # a phase's last step: evaluated below
            if step % sync_every == 0 or evaluating or i == phase.steps - 1:
                nonfinite.check(step, phase.name)
                bar.set_postfix(loss=f"{loss.item():.4f}", p=f"{p:.2f}", refresh=False)
            if hooks.on_step:
                hooks.on_step(StepEnd(step, phase.name, loss.detach(), parts, p, scheduler.get_last_lr()[0], model))
            if evaluating:
                run_eval(phase.name, state_now(loss=loss.item(), **{k: v.item() for k, v in parts.items()},
                                               p=p, lr=scheduler.get_last_lr()[0]))
            if ckpt is not None and ckpt.due():
                save_state(phase_index, i + 1, optimizer, scheduler)
                if ckpt.preempted:
                    raise Preempted(f"stopped by SIGTERM at step {step}; its state is in {ckpt.directory}: "
                                    f"run the same command again to continue")
        last = run_eval(phase.name, state_now())
    bar.close()
    if last is None:  # a recipe with no training (dense): evaluate as is
        last = run_eval("eval", {"p": 1.0, "sparsity": 0.0})
    if best is None:  # no evaluation at the final shape (a recipe that never reaches it): say so, keep the last
        best = {**history[-1], "final_shape": False}
        best = {k: best[k] for k in ("step", "phase", "dev", "final_shape")}
    return TrainResult(final={"step": step, "dev": last["metrics"]}, best=best, best_any=best_any, history=history,
                       final_predictions=last["predictions"], train_seconds=time.perf_counter() - started,
                       step_seconds=step_time, precision=precision)
