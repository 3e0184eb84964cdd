"""Layer-wise knowledge distillation (SPD §3.2, Eq. 2; TinyBERT-style).

  L = sum_i MSE(A_i^T, A_i^S)          attention probabilities of every layer
    + sum_i MSE(H_i^T, H_i^S)          hidden states: embeddings and every layer (N + 1 terms)
    + L_pred                           soft cross-entropy of logits at temperature T,
                                       or, for regression (STS-B), MSE of the prediction against the gold score

There is no hard-label term for classification (paper and official code agree). `kd_reduction` picks how the
soft cross-entropy is averaged: 'batchmean' (a cross-entropy per example, averaged over the batch: the
paper's formula) or 'elementmean' (mean over batch x classes: the official code, which divides by the
number of classes).
"""
from __future__ import annotations

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


def kd_loss(student, teacher, labels, *, regression: bool, temperature: float = 1.0,
            reduction: str = "batchmean") -> tuple[torch.Tensor, dict[str, float]]:
    """`student`/`teacher`: model outputs with attentions, hidden_states and logits. Returns (loss, parts)."""
    if len(student.attentions) != len(teacher.attentions):
        raise ValueError("student and teacher must have the same number of layers for layer-wise KD")
    attn = sum(F.mse_loss(s, t) for s, t in zip(student.attentions, teacher.attentions))
    hidden = sum(F.mse_loss(s, t) for s, t in zip(student.hidden_states, teacher.hidden_states))
    if regression:
        pred = F.mse_loss(student.logits.view(-1), labels.view(-1).to(student.logits.dtype))
    else:
        pred = soft_cross_entropy(student.logits, teacher.logits, temperature, reduction)
    loss = attn + hidden + pred
    return loss, {"attn": attn.item(), "hidden": hidden.item(), "pred": pred.item()}


def task_loss(logits, labels, *, regression: bool) -> torch.Tensor:
    """Plain fine-tuning loss on the gold labels: cross-entropy, or MSE for regression."""
    if regression:
        return F.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
    return F.cross_entropy(logits, labels)
