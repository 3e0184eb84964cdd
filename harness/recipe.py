"""The composition language of methods: a method turns a fine-tuned teacher into a `Recipe`.

A recipe says which model the loop trains (after surgery), in which phases (each its own AdamW + linear
warm-up/decay schedule), which parameters train in each phase, which loss, whether and how grafting
probability moves, which pruner runs, and what gets saved. The one training loop in harness/train.py
executes any recipe; no method has a loop of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from torch import nn
from transformers import PreTrainedModel

from harness.tasks import Task
from spd.pruning import MagnitudePruner

NamedParams = Iterable[tuple[str, nn.Parameter]]


@dataclass
class Phase:
    name: str
    steps: int
    lr: float
    trainable: Callable[[nn.Module], NamedParams]
    warmup_ratio: float = 0.0
    # SPD's paper uses a fresh optimizer per phase ("two independent optimizers", Fig. 9); the official
    # code keeps one AdamW and only switches the LR schedule.
    fresh_optimizer: bool = True
    # Model surgery at the start of the phase (Theseus: drop the predecessors before compact fine-tuning).
    before: Callable[[nn.Module], nn.Module] | None = None


@dataclass
class Recipe:
    model: nn.Module
    phases: list[Phase]
    # The loss is a part the recipe composes (spd.distill.LayerwiseKD, TaskLoss, or a plugin's own): a callable
    # `loss(student_out, labels, batch, teacher_out) -> (loss, parts)`; its `needs_teacher` attribute says
    # whether the loop runs the teacher's forward (and asks for attentions and hidden states).
    loss: Callable
    grafting: Callable[[int], float] | None = None   # replacement probability at global step t; None: no draws
    pruner: MagnitudePruner | None = None
    export: Callable[[nn.Module], PreTrainedModel] = lambda m: m
    # Whether the model at global step t has its final shape, for the "best at target" reporting protocol
    # (the official code reports the best evaluation during training). None: the pruner has reached its final
    # sparsity (always true without a pruner).
    final_shape: Callable[[int], bool] | None = None
    # Gradients of parameters outside a batch's path: None (paper: an undrawn module is not updated) or zeros
    # (official code's zero_grad(): AdamW's momentum still moves it).
    zero_grad_to_none: bool = True
    clip_all_parameters: bool = False           # official code clips the norm over every model parameter
    precision: str | None = None                # 'fp32' forces fp32 (official-code preset); None: the run's
    pad_to_max_length: bool = False             # official code pads every training batch to max_seq_length
    # Everything a method wants recorded about itself (resolved settings, stage boundaries, ...).
    info: dict = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)


@dataclass
class BuildContext:
    """What a method gets to build its recipe from."""
    teacher: PreTrainedModel          # a private copy of the fine-tuned dense teacher: the method may modify it
    task: Task
    steps_per_epoch: int
    sparsity: float
    seed: int
    load_pretrained: Callable[[], PreTrainedModel] | None = None  # the pre-trained (not fine-tuned) model


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    return max(0, round(epochs * steps_per_epoch))


def all_parameters(model: nn.Module) -> NamedParams:
    return list(model.named_parameters())


def student_parameters(model: nn.Module) -> NamedParams:
    """Only the student modules of a grafted model (what SPD and Theseus optimise)."""
    return [(n, p) for n, p in model.named_parameters() if ".student." in n]
