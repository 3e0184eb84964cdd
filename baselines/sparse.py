"""Sparse baselines built from SPD's parts: same pruner, same schedule, same matrices.

- sparse-ft:          a plain copy of the teacher, pruned while fine-tuning on the labels, every weight trains
- sparse-kd:          SPD without grafting (student modules always in place), SPD's layer-wise KD from the
                      fine-tuned teacher. student_init=finetuned (default): the students start from the
                      fine-tuned layers, Table 3's ablation "Sparse + KD"; student_init=pretrained: they start
                      from the pre-trained model's layers, SparseBERT (Xu et al. 2021: the pruned pre-trained
                      BERT is the student of the fine-tuned teacher), Tables 1 and 2's "SparseBERT" rows
- sparse-progressive: SPD's pruning and grafting schedule on the task loss alone (Table 3 "Sparse + Progressive")
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.recipe import BuildContext, Phase, Recipe, all_parameters
from harness.registry import register_method
from harness.validation import Fraction, NonNegative, Positive, Rate
from spd.distill import TaskLoss
from spd.method import SPDSettings, resolve, sparse_student_recipe, stage_steps
from spd.pruning import MagnitudePruner, encoder_layers, prunable_matrices


@register_method("sparse-kd", settings=SPDSettings, uses_teacher_for_loss=True,
                 description="Sparse + KD (SPD without grafting); student_init=pretrained: SparseBERT")
def build_sparse_kd(settings: SPDSettings, ctx: BuildContext) -> Recipe:
    return sparse_student_recipe(ctx, resolve(settings, ctx.task.name, ctx.sparsity), kd=True, grafted=False)


@register_method("sparse-progressive", settings=SPDSettings,
                 description="Sparse + Progressive: SPD's pruning and grafting schedule, task loss only, no KD")
def build_sparse_progressive(settings: SPDSettings, ctx: BuildContext) -> Recipe:
    return sparse_student_recipe(ctx, resolve(settings, ctx.task.name, ctx.sparsity), kd=False, grafted=True)


@dataclass
class SparseFTSettings:
    # The paper gives no recipe for plain sparse fine-tuning; SPD's stage lengths with a standard
    # full-model fine-tuning learning rate (SPD's 5e-4..6.4e-4 is for student modules under KD).
    lr: Rate = 3e-5
    prune_epochs: Rate | None = None
    graft_epochs: NonNegative | None = None   # named as in SPD so one grid sets one budget for all methods
    finetune_epochs: NonNegative | None = None
    num_prune_events: Positive = 12
    warmup_ratio: Fraction = 0.0


@register_method("sparse-ft", settings=SparseFTSettings,
                 description="plain sparse fine-tuning: gradual magnitude pruning on the task loss")
def build_sparse_ft(settings: SparseFTSettings, ctx: BuildContext) -> Recipe:
    r = resolve(SPDSettings(prune_epochs=settings.prune_epochs, graft_epochs=settings.graft_epochs,
                            finetune_epochs=settings.finetune_epochs, num_prune_events=settings.num_prune_events),
                ctx.task.name, ctx.sparsity)
    t1, _, t3 = stage_steps(r, ctx)
    model = ctx.teacher
    pruner = MagnitudePruner(prunable_matrices(encoder_layers(model)), ctx.sparsity, prune_steps=t1,
                             num_events=settings.num_prune_events)
    phases = [Phase("pruning", t1, settings.lr, all_parameters, settings.warmup_ratio),
              Phase("finetuning", t3 - t1, settings.lr, all_parameters, settings.warmup_ratio)]
    return Recipe(model=model, phases=[p for p in phases if p.steps > 0], loss=TaskLoss(ctx.task.is_regression),
                  pruner=pruner, final_shape=lambda t: t >= pruner.last_event_step,
                  info={"lr": settings.lr, "prune_epochs": r["prune_epochs"],
                        "finetune_epochs": r["graft_epochs"] + r["finetune_epochs"], "stage_ends": [t1, t3]})
