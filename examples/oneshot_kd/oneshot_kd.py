"""An spd-bench plugin: one-shot *global* magnitude pruning, then layer-wise KD fine-tuning.

Where SPD prunes each matrix to the target gradually, this prunes once, before training, with one
threshold over all six matrices of every student module (so some matrices end sparser than others),
then trains the student modules with SPD's KD loss, every student module in place from step one.

It reuses spd-bench's parts: the grafted model (for the teacher's forward), the pruner's masks
(re-applied after every optimizer step), the KD loss and the one training loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.recipe import BuildContext, Phase, Recipe, epochs_to_steps, student_parameters
from harness.registry import register_method
from spd import grafting
from spd.distill import LayerwiseKD
from spd.pruning import MagnitudePruner, prunable_matrices


class GlobalOneShotPruner(MagnitudePruner):
    """Masks from one global magnitude threshold, computed once; no schedule."""

    def __init__(self, weights, sparsity: float):
        super().__init__(weights, sparsity, prune_steps=0)
        self.prune_to(sparsity)

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        magnitudes = torch.cat([w.detach().abs().flatten().float() for w in self.weights.values()])
        k = round(sparsity * magnitudes.numel())
        keep = torch.ones_like(magnitudes, dtype=torch.bool)
        if k:
            keep[torch.topk(magnitudes, k, largest=False).indices] = False
        start = 0
        for name, w in self.weights.items():
            self.masks[name] = keep[start:start + w.numel()].view_as(w)
            start += w.numel()
        self.current_sparsity = sparsity
        self.apply()


@dataclass
class OneShotKDSettings:
    epochs: float = 10.0
    lr: float = 1e-4
    temperature: float = 1.0


@register_method("oneshot-kd", settings=OneShotKDSettings, uses_teacher_for_loss=True,
                 description="example plugin: one-shot global magnitude pruning, then KD fine-tuning")
def build(settings: OneShotKDSettings, ctx: BuildContext) -> Recipe:
    model = grafting.graft(ctx.teacher)
    pruner = GlobalOneShotPruner(prunable_matrices(grafting.student_layers(model)), ctx.sparsity)
    steps = epochs_to_steps(settings.epochs, ctx.steps_per_epoch)
    return Recipe(model=model, phases=[Phase("kd-finetuning", steps, settings.lr, student_parameters)],
                  loss=LayerwiseKD(ctx.task.is_regression, settings.temperature), pruner=pruner,
                  export=grafting.extract_student)
