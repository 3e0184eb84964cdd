"""TensorBoard logs of a cell's training (run setting `tensorboard=true` -> `<run dir>/tensorboard/`).

Fed by the loop's `Hooks`; nothing here reaches into the loop. Scalars (TensorBoard tags):

  every `every` steps   loss/total, loss/<part> (the recipe's loss parts), schedule/grafting_p,
                        schedule/sparsity (the pruner's current target), schedule/lr
  at every evaluation   dev/<metric> (score = the paper's metric × 100, and every other metric),
                        train/<metric> (the train subset, where the run scores one), eval/sparsity, eval/grafting_p

Tensors are read (`.item()`, a GPU synchronisation) only on the steps that are logged. The `tensorboard`
package is the optional extra `spd-bench[tensorboard]`; it is imported only when logging is on.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from harness.errors import UserError
from harness.train import Hooks, StepEnd

LOG_EVERY_MAX = 50  # steps between logged steps on a long run (the loop's CUDA log_every)


def log_every(total_steps: int) -> int:
    """Log about 100 points per run, at least every LOG_EVERY_MAX steps: every step of a short run."""
    return max(1, min(LOG_EVERY_MAX, total_steps // 100))


def summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("tensorboard=true needs the tensorboard package: pip install 'spd-bench[tensorboard]'") from None
    return SummaryWriter(log_dir=str(log_dir))


class TensorBoardLog:
    """A SummaryWriter fed by the loop's hooks. `pruner_sparsity()` gives the pruner's current target."""

    def __init__(self, log_dir: Path, every: int, pruner_sparsity=lambda: 0.0):
        self.writer = summary_writer(log_dir)
        self.every = max(1, int(every))
        self.pruner_sparsity = pruner_sparsity

    def on_step(self, s: StepEnd) -> None:
        if s.step % self.every:
            return
        w = self.writer
        w.add_scalar("loss/total", s.loss.item(), s.step)
        for name, value in s.parts.items():
            w.add_scalar(f"loss/{name}", float(value.item() if hasattr(value, "item") else value), s.step)
        w.add_scalar("schedule/grafting_p", float(s.p), s.step)
        w.add_scalar("schedule/sparsity", float(self.pruner_sparsity()), s.step)
        w.add_scalar("schedule/lr", float(s.lr), s.step)

    def on_eval(self, entry: dict) -> None:
        step, w = entry["step"], self.writer
        for split in ("dev", "train"):
            for name, value in (entry.get(split) or {}).items():
                w.add_scalar(f"{split}/{name}", float(value), step)
        for key, tag in (("sparsity", "eval/sparsity"), ("p", "eval/grafting_p")):
            if entry.get(key) is not None:
                w.add_scalar(tag, float(entry[key]), step)
        w.flush()

    def hooks(self, inner: Hooks | None = None) -> Hooks:
        """`inner`'s hooks with this log's added after them."""
        inner = inner or Hooks()

        def on_step(s: StepEnd) -> None:
            if inner.on_step:
                inner.on_step(s)
            self.on_step(s)

        def on_eval(entry: dict) -> None:
            if inner.on_eval:
                inner.on_eval(entry)
            self.on_eval(entry)
        return dataclasses.replace(inner, on_step=on_step, on_eval=on_eval)

    def close(self) -> None:
        self.writer.close()


def for_recipe(run_dir: Path, recipe) -> TensorBoardLog:
    """The log of one cell's training: `<run_dir>/tensorboard/`, spaced for the recipe's length."""
    return TensorBoardLog(Path(run_dir) / "tensorboard", log_every(recipe.total_steps),
                          lambda: recipe.pruner.current_sparsity if recipe.pruner is not None else 0.0)
