"""The one training loop. It runs any `Recipe`: phases in order, each with its own AdamW and linear
warm-up/decay schedule; per batch a grafting draw, the student's forward/backward, the teacher's forward
when the loss is KD, gradient clipping, an optimizer step, then the pruner (masks re-applied after every
step). Dev evaluation runs every `eval_steps` and at the end of every phase, always on the student.
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

from harness.errors import UserError
from harness.recipe import Recipe
from harness.tasks import Task, compute_metrics
from spd import grafting


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


@dataclass
class TrainResult:
    final: dict
    best: dict
    history: list = field(default_factory=list)
    final_predictions: np.ndarray | None = None
    train_seconds: float = 0.0
    step_seconds: float = 0.0


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def predict(model: nn.Module, loader, task: Task, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, references) on the student path: class ids, or scores for regression."""
    was_training = model.training
    model.eval()
    grafting.use_students(model, True)
    preds, refs = [], []
    for batch in loader:
        batch = to_device(batch, device)
        labels = batch.pop("labels")
        with autocast(device):
            logits = model(**batch).logits.float()
        preds.append(logits.view(-1) if task.is_regression else logits.argmax(-1))
        refs.append(labels)
    model.train(was_training)
    return torch.cat(preds).cpu().numpy(), torch.cat(refs).cpu().numpy()


def evaluate(model, loader, task, device) -> tuple[dict, np.ndarray]:
    predictions, references = predict(model, loader, task, device)
    return compute_metrics(task, predictions, references), predictions


def _batches(make_loader: Callable[[], object]) -> Iterator[dict]:
    while True:  # epochs until the recipe's step budget is spent; each pass reshuffles
        yield from make_loader()


def _optimizer(params, cfg: LoopConfig, lr: float):
    decay = [p for n, p in params if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in params if n.endswith("bias") or "LayerNorm" in n]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, eps=cfg.adam_eps)


def _set_trainable(model: nn.Module, trainable) -> list:
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(trainable)
    for _, p in params:
        p.requires_grad_(True)
    if not params:
        raise ValueError("a phase with nothing to train")
    return params


def _teacher_outputs(model, batch, device):
    """The teacher's forward on the same grafted model: every slot on its teacher layers, no dropout."""
    grafting.use_students(model, False)
    model.eval()
    with torch.no_grad(), autocast(device):
        out = model(**batch, output_attentions=True, output_hidden_states=True)
    model.train()
    return out


def train(recipe: Recipe, task: Task, make_train_loader: Callable[[], object], dev_loader,
          device: torch.device, cfg: LoopConfig, train_eval_loader=None,
          on_eval: Callable[[dict], None] | None = None) -> TrainResult:
    model = recipe.model.to(device)
    total = recipe.total_steps
    eval_every = cfg.eval_steps or max(1, math.ceil(total / 20))
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = _batches(make_train_loader)
    history, best, step = [], None, 0
    started, step_time = time.perf_counter(), 0.0
    optimizer = None

    def run_eval(phase_name: str, extra: dict) -> dict:
        nonlocal best
        metrics, predictions = evaluate(model, dev_loader, task, device)
        entry = {"step": step, "phase": phase_name, "dev": metrics, **extra}
        if train_eval_loader is not None:
            entry["train"] = evaluate(model, train_eval_loader, task, device)[0]
        if best is None or metrics["score"] > best["dev"]["score"]:
            best = {"step": step, "phase": phase_name, "dev": metrics}
        history.append(entry)
        if on_eval:
            on_eval(entry)
        return {"metrics": metrics, "predictions": predictions}

    bar = tqdm(total=total, desc=f"{task.name}", disable=not cfg.progress, leave=False)
    last = None
    for phase in recipe.phases:
        if phase.before is not None:
            model = phase.before(model).to(device)
        params = _set_trainable(model, phase.trainable(model))
        if optimizer is None or phase.fresh_optimizer:
            optimizer = _optimizer(params, cfg, phase.lr)
        else:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = phase.lr
        scheduler = get_linear_schedule_with_warmup(
            optimizer, round(phase.warmup_ratio * phase.steps), max(1, phase.steps))
        model.train()
        for i in range(phase.steps):
            t0 = time.perf_counter()
            batch = to_device(next(batches), device)
            labels = batch.pop("labels")
            if recipe.grafting:
                p = recipe.grafting(step)
                grafting.sample_grafting(model, p, generator)
            else:
                p = 1.0
                grafting.use_students(model, True)
            if recipe.loss.needs_teacher:
                draws = [s.use_student for s in grafting.slots(model)]
                teacher_out = _teacher_outputs(model, batch, device)
                grafting.use_students(model, draws)
                with autocast(device):
                    out = model(**batch, output_attentions=True, output_hidden_states=True)
            else:
                teacher_out = None
                with autocast(device):
                    out = model(**batch)
            loss, parts = recipe.loss(out, labels, batch, teacher_out)
            parts = {k: v.item() for k, v in parts.items()}
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at step {step + 1} (phase {phase.name}); "
                    f"no metrics written — try a lower learning rate")
            # A draw that puts no trainable module in the path (every slot on its teacher layers) leaves
            # nothing to update; the step still counts, as in the official code.
            if loss.requires_grad:
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p_ for _, p_ in params], cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
            else:  # keep the LR schedule on the global step; torch warns when optimizer.step() was skipped
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if recipe.pruner is not None:
                recipe.pruner.step(step)
            step_time += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", p=f"{p:.2f}", refresh=False)
            if step % eval_every == 0 and i != phase.steps - 1:   # a phase's last step: evaluated just below
                run_eval(phase.name, {"loss": loss.item(), **parts, "p": p, "lr": scheduler.get_last_lr()[0],
                                      "sparsity": recipe.pruner.current_sparsity if recipe.pruner else 0.0})
        last = run_eval(phase.name, {"p": recipe.grafting(step) if recipe.grafting else 1.0,
                                     "sparsity": recipe.pruner.current_sparsity if recipe.pruner else 0.0})
    bar.close()
    if last is None:  # a recipe with no training (dense): evaluate as is
        last = run_eval("eval", {"p": 1.0, "sparsity": 0.0})
    recipe.model = model
    return TrainResult(final={"step": step, "dev": last["metrics"]}, best=best, history=history,
                       final_predictions=last["predictions"], train_seconds=time.perf_counter() - started,
                       step_seconds=step_time)
