"""`dense`: the fine-tuned teacher as a row of its own. Nothing trains; the run evaluates and saves it."""
from __future__ import annotations

from dataclasses import dataclass

from harness.recipe import BuildContext, Recipe
from harness.registry import register_method
from spd.distill import TaskLoss


@dataclass
class DenseSettings:
    pass


@register_method("dense", settings=DenseSettings, prunes=False,
                 description="the fine-tuned dense teacher, unchanged (Table 1's teacher row)")
def build_dense(settings: DenseSettings, ctx: BuildContext) -> Recipe:
    return Recipe(model=ctx.teacher, phases=[], loss=TaskLoss(ctx.task.is_regression))
