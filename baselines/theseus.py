"""`theseus`: BERT-of-Theseus (Xu et al., 2020) from the grafting parts, compress ratio 2.

Successor i stands in for predecessor layers 2i and 2i+1 and starts as a copy of layer i (the first half).
One Bernoulli draw per successor per batch; p from the official constant or linear scheduler (linear:
p_t = min(1, p0 + k t), README p0 = 0.3, k = 0.0006); the task loss only.

recipe=official (default) is the released run_glue.py as its README runs it: ONE run of 15 epochs, one AdamW
over the successors only (lines 68-75), one linear decay over the whole run (lines 64, 76-77), p rising inside
the run until the successors run alone (the successor fine-tuning happens in the same run, same optimizer,
same trainable set), gradients zeroed rather than freed (`model.zero_grad()`, line 160: AdamW keeps moving a
successor that was not drawn) and the norm clipped over every parameter of the model (line 155).
recipe=two-phase is this project's earlier reading: replacing, then the compact model alone with a fresh
AdamW and every weight trainable. It is kept because docs/results/mini-real.md was produced with it.
docs/methods.md says which is which.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UserError
from harness.recipe import BuildContext, Phase, Recipe, all_parameters, epochs_to_steps, student_parameters
from harness.registry import register_method
from harness.validation import Count, NonNegative, Positive, Probability, Rate
from spd import grafting
from spd.distill import TaskLoss

RECIPES = ("official", "two-phase")
README_EPOCHS = 15.0                    # README: --num_train_epochs 15
TWO_PHASE_EPOCHS = (10.0, 5.0)          # the README's 15 epochs, split into replacing + compact fine-tuning


@dataclass
class TheseusSettings:
    recipe: str = "official"          # 'official' (one run, run_glue.py) | 'two-phase'
    replacing_rate: Probability = 0.3 # p0 (linear) or the constant p (README: --replacing_rate 0.3)
    scheduler: str = "linear"         # 'linear' | 'constant' (README: --scheduler_type linear)
    linear_k: NonNegative = 0.0006    # README: --scheduler_linear_k 0.0006
    # constant scheduler: p = 1 from step max(n, 1) on, as ConstantReplacementScheduler does with
    # --steps_for_replacing n (the README's constant example: 2500); None: p never changes
    steps_for_replacing: Count | None = None
    epochs: Rate | None = None        # official: the run's length (None: the README's 15)
    replace_epochs: Rate | None = None    # two-phase: replacing stage (None: 10)
    finetune_epochs: NonNegative | None = None  # two-phase: compact fine-tuning (None: 5)
    lr: Rate = 2e-5                   # README: --learning_rate 2e-5
    compress_ratio: Positive = 2
    zero_grad: str | None = None      # 'zeros' (official) | 'none' (two-phase): gradients of undrawn successors
    clip_grad_over: str | None = None  # 'all' (official) | 'trainable' (two-phase)

    def __post_init__(self):
        choices = {"recipe": (self.recipe, RECIPES), "scheduler": (self.scheduler, ("linear", "constant")),
                   "zero_grad": (self.zero_grad, ("none", "zeros")),
                   "clip_grad_over": (self.clip_grad_over, ("trainable", "all"))}
        for name, (value, valid) in choices.items():
            if value is not None and value not in valid:
                raise UserError(f"unknown Theseus {name} {value!r}; valid: {', '.join(valid)}")
        if self.recipe == "official" and (self.replace_epochs is not None or self.finetune_epochs is not None):
            raise UserError("replace_epochs/finetune_epochs belong to recipe=two-phase; the official recipe is one "
                            "run of `epochs` epochs")
        if self.recipe == "two-phase" and self.epochs is not None:
            raise UserError("epochs belongs to recipe=official; recipe=two-phase takes replace_epochs and "
                            "finetune_epochs")


def replacement_schedule(s: TheseusSettings):
    """p for the batch after t optimizer steps: the official schedulers step once per optimizer step."""
    if s.scheduler == "linear":
        return lambda t: min(1.0, s.replacing_rate + s.linear_k * t)
    if s.steps_for_replacing is None:
        return lambda t: s.replacing_rate
    switch = max(1, s.steps_for_replacing)
    return lambda t: 1.0 if t >= switch else s.replacing_rate


def first_step_at_one(p, limit: int) -> int | None:
    """The first step t <= limit with p(t) = 1 (None if p stays below 1 that long); p is non-decreasing."""
    if p(limit) < 1.0:
        return None
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if p(mid) < 1.0 else (lo, mid)
    return lo


def compact(model):
    return grafting.extract_student(model) if grafting.slots(model) else model


@register_method("theseus", settings=TheseusSettings, prunes=False,
                 description="BERT-of-Theseus: progressive module replacing onto half the layers")
def build_theseus(s: TheseusSettings, ctx: BuildContext) -> Recipe:
    layers = ctx.teacher.config.num_hidden_layers
    if layers % s.compress_ratio:
        raise UserError(f"theseus needs a layer count divisible by {s.compress_ratio}; the model has {layers}")
    schedule = replacement_schedule(s)
    model = grafting.graft(ctx.teacher, compress_ratio=s.compress_ratio)
    official = s.recipe == "official"
    zero_grad = s.zero_grad or ("zeros" if official else "none")
    clip_over = s.clip_grad_over or ("all" if official else "trainable")
    if official:
        epochs = s.epochs if s.epochs is not None else README_EPOCHS
        total = epochs_to_steps(epochs, ctx.steps_per_epoch)
        phases = [Phase("replacing", total, s.lr, student_parameters)]
        predecessors_gone = total          # they stay in the model; p = 1 is what retires them
        lengths = {"epochs": epochs}
    else:
        replace = s.replace_epochs if s.replace_epochs is not None else TWO_PHASE_EPOCHS[0]
        finetune = s.finetune_epochs if s.finetune_epochs is not None else TWO_PHASE_EPOCHS[1]
        replace_steps = epochs_to_steps(replace, ctx.steps_per_epoch)
        phases = [Phase("replacing", replace_steps, s.lr, student_parameters),
                  Phase("compact-finetuning", epochs_to_steps(finetune, ctx.steps_per_epoch), s.lr,
                        all_parameters, before=compact)]
        total = sum(p.steps for p in phases)
        predecessors_gone = replace_steps + 1 if phases[1].steps else total   # evaluations after the surgery
        lengths = {"replace_epochs": replace, "finetune_epochs": finetune}
    at_one = first_step_at_one(schedule, total)
    final_from = min(x for x in (at_one, predecessors_gone, total) if x is not None)

    def final_shape(t: int) -> bool:  # predecessors no longer drawn (p = 1) or gone, or the run is over
        return t >= final_from

    info = {"recipe": s.recipe, **lengths, "lr": s.lr, "scheduler": s.scheduler, "replacing_rate": s.replacing_rate,
            "linear_k": s.linear_k, "steps_for_replacing": s.steps_for_replacing, "p_reaches_1_at": at_one,
            "final_shape_from": final_from, "zero_grad": zero_grad, "clip_grad_over": clip_over,
            "successor_layers": layers // s.compress_ratio}
    return Recipe(model=model, phases=[p for p in phases if p.steps > 0], loss=TaskLoss(ctx.task.is_regression),
                  grafting=schedule, export=compact, final_shape=final_shape,
                  zero_grad_to_none=zero_grad == "none", clip_all_parameters=clip_over == "all", info=info)
