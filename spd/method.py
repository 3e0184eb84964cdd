"""SPD as a recipe: grafted model, gradual magnitude pruning of the student modules, progressive grafting,
layer-wise KD, only student modules train, three stages under two LR phases.

  stage 1 (pruning)     t in [0, t1):   p = p0, matrices pruned to the target on the cubic schedule
  stage 2 (grafting)    t in [t1, t2):  p rises linearly from p0 to 1
  stage 3 (fine-tuning) t in [t2, t3):  p = 1
  LR phase A covers stage 1; LR phase B covers stages 2 + 3, each with linear warm-up/decay.

Presets: 'paper' (default: Algorithm 1 and §4.1) and 'official-code' (the released run_glue.py recipe:
p fixed at p0 = 0.8 for the whole run, one AdamW whose LR schedule is switched after pruning,
soft cross-entropy averaged over batch x classes, lr 6.4e-4, 30 of 60 epochs pruning, every example
padded to 128 tokens). docs/spd.md lists every difference.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UserError
from harness.recipe import BuildContext, Phase, Recipe, epochs_to_steps, student_parameters
from harness.registry import register_method
from spd import grafting
from spd.distill import LayerwiseKD, TaskLoss
from spd.pruning import MagnitudePruner, prunable_matrices

# Per-task values the paper gives (appendix; §4.1); tasks it is silent on fall back to the official README.
PAPER_LR = {"cola": 5.0e-4, "stsb": 5.0e-4, "mrpc": 6.4e-4, "rte": 3.0e-5}
PAPER_P0 = {"rte": 0.6, "cola": 0.8, "stsb": 0.8, "mrpc": 0.8}
README_LR, README_P0 = 6.4e-4, 0.8
# Stage lengths in epochs, inside the paper's ranges (pruning 10-30, grafting 5-20, fine-tuning 5-10):
# the appendix's 60 epochs with 30 pruning for the small tasks; the low ends for the large ones.
SMALL_TASK_EPOCHS = (30.0, 20.0, 10.0)
LARGE_TASK_EPOCHS = (10.0, 5.0, 5.0)
LARGE_TASKS = {"mnli", "qqp", "qnli", "sst2"}
PRESETS = ("paper", "official-code")


@dataclass
class SPDSettings:
    preset: str = "paper"
    prune_epochs: float | None = None      # None: per-task default above
    graft_epochs: float | None = None
    finetune_epochs: float | None = None
    lr: float | None = None                # both LR phases, unless prune_lr / graft_lr are set
    prune_lr: float | None = None
    graft_lr: float | None = None
    p0: float | None = None                # initial grafting probability
    grafting: str | None = None            # 'progressive' (paper) | 'constant' (official code: p = p0 throughout)
    fresh_optimizer: bool | None = None    # paper: a new AdamW after pruning; official code: keep it
    num_prune_events: int = 12
    warmup_ratio: float = 0.0
    temperature: float = 1.0
    kd_reduction: str | None = None        # 'batchmean' (paper) | 'elementmean' (official code)
    kd_mask_padding: bool | None = None    # MSE over real tokens (paper) | over every padded position (code)

    def __post_init__(self):  # fail before any training, not at build time
        choices = {"preset": (self.preset, PRESETS), "grafting": (self.grafting, ("progressive", "constant")),
                   "kd_reduction": (self.kd_reduction, ("batchmean", "elementmean"))}
        for name, (value, valid) in choices.items():
            if value is not None and value not in valid:
                raise UserError(f"unknown SPD {name} {value!r}; valid: {', '.join(valid)}")
        if self.p0 is not None and not 0.0 <= self.p0 <= 1.0:
            raise UserError(f"p0 must be in [0, 1], got {self.p0}")


def resolve(settings: SPDSettings, task: str) -> dict:
    """Every SPD setting with preset and per-task defaults filled in."""
    official = settings.preset == "official-code"
    epochs = LARGE_TASK_EPOCHS if task in LARGE_TASKS else SMALL_TASK_EPOCHS
    if official:
        epochs = (30.0, 20.0, 10.0)  # README: 30 pruning epochs of 60; p never changes, so stages 2/3 are one
    lr = settings.lr if settings.lr is not None else (README_LR if official else PAPER_LR.get(task, README_LR))
    p0 = settings.p0 if settings.p0 is not None else (README_P0 if official else PAPER_P0.get(task, README_P0))
    r = {
        "preset": settings.preset,
        "prune_epochs": settings.prune_epochs if settings.prune_epochs is not None else epochs[0],
        "graft_epochs": settings.graft_epochs if settings.graft_epochs is not None else epochs[1],
        "finetune_epochs": settings.finetune_epochs if settings.finetune_epochs is not None else epochs[2],
        "prune_lr": settings.prune_lr if settings.prune_lr is not None else lr,
        "graft_lr": settings.graft_lr if settings.graft_lr is not None else lr,
        "p0": p0,
        "grafting": settings.grafting or ("constant" if official else "progressive"),
        "fresh_optimizer": settings.fresh_optimizer if settings.fresh_optimizer is not None else not official,
        "num_prune_events": settings.num_prune_events,
        "warmup_ratio": settings.warmup_ratio,
        "temperature": settings.temperature,
        "kd_reduction": settings.kd_reduction or ("elementmean" if official else "batchmean"),
        "kd_mask_padding": settings.kd_mask_padding if settings.kd_mask_padding is not None else not official,
    }
    return r


def grafting_schedule(p0: float, t1: int, t2: int, kind: str = "progressive"):
    """p(t): p0 while pruning, linear to 1 over grafting, 1 while fine-tuning ('constant': p0 throughout)."""
    def p(t: int) -> float:
        if kind == "constant" or t < t1:
            return p0
        if t >= t2:
            return 1.0
        return p0 + (1.0 - p0) * (t - t1) / (t2 - t1)
    return p


def stage_steps(r: dict, ctx: BuildContext) -> tuple[int, int, int]:
    t1 = epochs_to_steps(r["prune_epochs"], ctx.steps_per_epoch)
    if ctx.sparsity > 0:
        t1 = max(1, t1)  # a pruning stage needs at least one step to reach its target
    t2 = t1 + epochs_to_steps(r["graft_epochs"], ctx.steps_per_epoch)
    t3 = t2 + epochs_to_steps(r["finetune_epochs"], ctx.steps_per_epoch)
    return t1, t2, t3


def sparse_student_recipe(ctx: BuildContext, r: dict, *, kd: bool, grafted: bool) -> Recipe:
    """The recipe SPD and its ablations share: pruned student modules on the grafted model, two LR phases.

    kd=False trains on the gold labels instead of SPD's layer-wise KD.
    grafted=False keeps every student module in place (p = 1 from the first step: no progressive grafting).
    """
    model = grafting.graft(ctx.teacher, compress_ratio=1)
    t1, t2, t3 = stage_steps(r, ctx)
    pruner = MagnitudePruner(prunable_matrices(grafting.student_layers(model)), ctx.sparsity,
                             prune_steps=t1, num_events=r["num_prune_events"])
    schedule = grafting_schedule(r["p0"], t1, t2, r["grafting"]) if grafted else (lambda t: 1.0)
    phases = [
        Phase("pruning", t1, r["prune_lr"], student_parameters, r["warmup_ratio"]),
        Phase("grafting+finetuning", t3 - t1, r["graft_lr"], student_parameters, r["warmup_ratio"],
              fresh_optimizer=r["fresh_optimizer"]),
    ]
    regression = ctx.task.is_regression
    loss = (LayerwiseKD(regression, r["temperature"], r["kd_reduction"], r["kd_mask_padding"]) if kd else TaskLoss(regression))
    return Recipe(model=model, phases=[ph for ph in phases if ph.steps > 0], loss=loss, grafting=schedule,
                  pruner=pruner, export=grafting.extract_student, info={**r, "stage_ends": [t1, t2, t3]})


@register_method("spd", settings=SPDSettings, uses_teacher_for_loss=True,
                 description="Sparse Progressive Distillation: pruning + progressive grafting + layer-wise KD")
def build_spd(settings: SPDSettings, ctx: BuildContext) -> Recipe:
    return sparse_student_recipe(ctx, resolve(settings, ctx.task.name), kd=True, grafted=True)
