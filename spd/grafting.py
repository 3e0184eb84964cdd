"""The grafted model: each encoder slot holds the teacher's layer(s) and one student module.

In training, one Bernoulli(p) draw per slot per batch decides whether the student module replaces the
teacher layer(s) (the official code's granularity). In eval only student modules run. The teacher's
own forward pass for KD is the same model with every slot set to its teacher layers, so the teacher's
weights exist once.

Compress ratio 1 is SPD (student i is a copy of layer i); ratio 2 is BERT-of-Theseus (successor i
stands in for layers 2i and 2i+1 and starts as a copy of layer i).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel


class GraftedLayer(nn.Module):
    def __init__(self, teacher_layers: list[nn.Module], student: nn.Module):
        super().__init__()
        self.teacher = nn.ModuleList(teacher_layers)
        self.student = student
        self.use_student = True

    def forward(self, hidden_states, *args, **kwargs):
        if self.use_student:
            return self.student(hidden_states, *args, **kwargs)
        for layer in self.teacher:
            hidden_states = layer(hidden_states, *args, **kwargs)
        return hidden_states


def graft(model: PreTrainedModel, compress_ratio: int = 1) -> PreTrainedModel:
    """Turn a fine-tuned BERT classifier into a grafted model, in place."""
    layers = list(model.bert.encoder.layer)
    if len(layers) % compress_ratio:
        raise ValueError(f"{len(layers)} layers cannot be grouped by {compress_ratio}")
    slots = []
    for i in range(len(layers) // compress_ratio):
        group = layers[i * compress_ratio:(i + 1) * compress_ratio]
        slots.append(GraftedLayer(group, copy.deepcopy(layers[i])))
    model.bert.encoder.layer = nn.ModuleList(slots)
    return model


def slots(model: PreTrainedModel) -> list[GraftedLayer]:
    return [s for s in model.bert.encoder.layer if isinstance(s, GraftedLayer)]


def student_layers(model: PreTrainedModel) -> dict[str, nn.Module]:
    return {f"bert.encoder.layer.{i}.student": s.student for i, s in enumerate(slots(model))}


def use_students(model: PreTrainedModel, choice: bool | list[bool]) -> None:
    grafted = slots(model)
    choices = [choice] * len(grafted) if isinstance(choice, bool) else choice
    for slot, use in zip(grafted, choices, strict=True):
        slot.use_student = bool(use)


def sample_grafting(model: PreTrainedModel, p: float, generator: torch.Generator) -> list[bool]:
    """One Bernoulli(p) draw per slot; sets and returns the choice."""
    draws = (torch.rand(len(slots(model)), generator=generator) < p).tolist()
    use_students(model, draws)
    return draws


def extract_student(model: PreTrainedModel) -> PreTrainedModel:
    """A plain BertForSequenceClassification made of the student modules (deep copy; teacher layers dropped)."""
    grafted = model.bert.encoder.layer
    model.bert.encoder.layer = nn.ModuleList([s.student for s in grafted])
    try:
        student = copy.deepcopy(model)
    finally:
        model.bert.encoder.layer = grafted
    student.config.num_hidden_layers = len(student.bert.encoder.layer)
    return student
