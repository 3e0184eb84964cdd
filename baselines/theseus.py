"""`theseus`: BERT-of-Theseus (Xu et al., 2020) from the grafting parts, compress ratio 2.

Successor i stands in for predecessor layers 2i and 2i+1 and starts as a copy of layer i (the first half).
Replacing stage: one Bernoulli draw per successor per batch, p from the official constant or linear
scheduler (linear: p_t = min(1, p0 + k t), README p0 = 0.3, k = 0.0006); only successors train on the
task loss. Then the compact model (half the layers) is fine-tuned alone, every weight trainable.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UserError
from harness.recipe import BuildContext, Phase, Recipe, all_parameters, epochs_to_steps, student_parameters
from harness.registry import register_method
from spd import grafting
from spd.distill import TaskLoss


@dataclass
class TheseusSettings:
    replacing_rate: float = 0.3       # p0 (linear) or the constant p
    scheduler: str = "linear"         # 'linear' | 'constant'
    linear_k: float = 0.0006
    steps_for_replacing: int = 0      # constant scheduler: p jumps to 1 after this many steps (0: never)
    replace_epochs: float = 10.0
    finetune_epochs: float = 5.0
    lr: float = 2e-5
    compress_ratio: int = 2

    def __post_init__(self):
        if self.scheduler not in ("linear", "constant"):
            raise UserError(f"unknown Theseus scheduler {self.scheduler!r}; valid: constant, linear")
        if not 0.0 <= self.replacing_rate <= 1.0:
            raise UserError(f"replacing_rate must be in [0, 1], got {self.replacing_rate}")


def replacement_schedule(s: TheseusSettings):
    if s.scheduler == "linear":
        return lambda t: min(1.0, s.replacing_rate + s.linear_k * t)
    return lambda t: 1.0 if s.steps_for_replacing and t >= s.steps_for_replacing else s.replacing_rate


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
    phases = [Phase("replacing", epochs_to_steps(s.replace_epochs, ctx.steps_per_epoch), s.lr, student_parameters),
              Phase("compact-finetuning", epochs_to_steps(s.finetune_epochs, ctx.steps_per_epoch), s.lr,
                    all_parameters, before=compact)]
    return Recipe(model=model, phases=[p for p in phases if p.steps > 0], loss=TaskLoss(ctx.task.is_regression), grafting=schedule,
                  export=compact, info={"successor_layers": layers // s.compress_ratio})
