"""Layer-wise knowledge distillation (SPD §3.2, Eq. 2; TinyBERT-style).

  L = sum_i MSE(A_i^T, A_i^S)          attention probabilities of every layer
    + sum_i MSE(H_i^T, H_i^S)          hidden states: embeddings and every layer (N + 1 terms)
    + L_pred                           soft cross-entropy of logits at temperature T,
                                       or, for regression (STS-B), MSE of the prediction against the gold score

There is no hard-label term for classification (paper and official code agree). `kd_reduction` picks how the
soft cross-entropy is averaged: 'batchmean' (a cross-entropy per example, averaged over the batch: the
paper's formula) or 'elementmean' (mean over batch x classes: the official code, which divides by the
number of classes).

Padding: `mask_padding=True` (paper preset) averages the attention and hidden-state MSE over real tokens only,
so the loss of a batch does not depend on how far it was padded; False is both official codebases' plain mean
over every position (the official-code preset also pads every batch to 128, as its code does).

Losses are parts a recipe composes: `LayerwiseKD` and `TaskLoss` are callables
`loss(student_out, labels, batch, teacher_out) -> (loss, parts)`; `needs_teacher` tells the loop to run the
teacher's forward and to ask both passes for attentions and hidden states. Parts are 0-d tensors (reading them
is a host synchronisation: the loop does it only when it logs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def soft_cross_entropy(student_logits, teacher_logits, temperature: float = 1.0, reduction: str = "batchmean"):
    target = F.softmax(teacher_logits / temperature, dim=-1)
    per_class = -target * F.log_softmax(student_logits / temperature, dim=-1)
    if reduction == "batchmean":
        return per_class.sum(-1).mean()
    if reduction == "elementmean":
        return per_class.mean()
    raise ValueError(f"unknown kd_reduction {reduction!r}; valid: batchmean, elementmean")


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """MSE averaged over the entries `weight` (broadcastable, 0/1) selects; plain mean when weight is None."""
    if weight is None:
        return F.mse_loss(student.float(), teacher.float())
    squared = (student.float() - teacher.float()).pow(2) * weight
    return squared.sum() / (weight.expand_as(squared).sum()).clamp_min(1)


def kd_loss(student, teacher, labels, *, regression: bool, temperature: float = 1.0,
            reduction: str = "batchmean", attention_mask: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`student`/`teacher`: model outputs with attentions, hidden_states and logits. Returns (loss, parts).

    With `attention_mask` ([batch, length], 1 = real token) the MSE terms count real tokens only: hidden states
    at real positions, attention probabilities from a real query to a real key."""
    if len(student.attentions) != len(teacher.attentions):
        raise ValueError("student and teacher must have the same number of layers for layer-wise KD")
    token = attn_entry = None
    if attention_mask is not None:
        real = attention_mask.to(student.hidden_states[0].device, torch.float32)
        token = real[:, :, None]                                     # [B, L, 1] against [B, L, H]
        attn_entry = real[:, None, :, None] * real[:, None, None, :]  # [B, 1, L, L] against [B, heads, L, L]
    attn = sum(masked_mse(s, t, attn_entry) for s, t in zip(student.attentions, teacher.attentions))
    hidden = sum(masked_mse(s, t, token) for s, t in zip(student.hidden_states, teacher.hidden_states))
    # in fp32 whatever the forward ran in (bf16 logits would round STS-B's gold scores and the soft targets)
    logits = student.logits.float()
    if regression:
        pred = F.mse_loss(logits.view(-1), labels.view(-1).float())
    else:
        pred = soft_cross_entropy(logits, teacher.logits.float(), temperature, reduction)
    loss = attn + hidden + pred
    return loss, {"attn": attn.detach(), "hidden": hidden.detach(), "pred": pred.detach()}


def task_loss(logits, labels, *, regression: bool) -> torch.Tensor:
    """Plain fine-tuning loss on the gold labels: cross-entropy, or MSE for regression."""
    if regression:
        return F.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
    return F.cross_entropy(logits, labels)


@dataclass
class LayerwiseKD:
    """SPD's loss (Eq. 2): attention + hidden-state MSE against the teacher, plus soft CE (or MSE for STS-B)."""
    regression: bool
    temperature: float = 1.0
    reduction: str = "batchmean"
    mask_padding: bool = True
    needs_teacher = True

    def __call__(self, student, labels, batch, teacher):
        mask = batch.get("attention_mask") if self.mask_padding else None
        return kd_loss(student, teacher, labels, regression=self.regression, temperature=self.temperature,
                       reduction=self.reduction, attention_mask=mask)


@dataclass
class TaskLoss:
    """Gold labels only: cross-entropy, or MSE for regression (fine-tuning, sparse-ft, Theseus)."""
    regression: bool
    needs_teacher = False

    def __call__(self, student, labels, batch, teacher=None):
        return task_loss(student.logits.float(), labels, regression=self.regression), {}
