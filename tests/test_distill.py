import math
from types import SimpleNamespace

import pytest
import torch

from spd.distill import kd_loss, soft_cross_entropy


def outputs(logits, hidden, attn):
    return SimpleNamespace(logits=torch.tensor(logits), hidden_states=[torch.tensor(h) for h in hidden],
                           attentions=[torch.tensor(a) for a in attn])


def test_kd_loss_classification_by_hand():
    s = outputs([[1.0, 0.0]], hidden=[[[0.0, 1.0]], [[2.0, 2.0]]], attn=[[[[0.5, 0.5]]]])
    t = outputs([[0.0, 1.0]], hidden=[[[1.0, 1.0]], [[2.0, 0.0]]], attn=[[[[1.0, 0.0]]]])
    loss, parts = kd_loss(s, t, torch.tensor([1]), regression=False, temperature=2.0)
    attn = (0.25 + 0.25) / 2
    hidden = (1 + 0) / 2 + (0 + 4) / 2
    pt = [math.exp(0) / (math.exp(0) + math.exp(0.5)), math.exp(0.5) / (math.exp(0) + math.exp(0.5))]
    zs = [0.5, 0.0]
    logz = math.log(sum(math.exp(z) for z in zs))
    pred = -sum(p * (z - logz) for p, z in zip(pt, zs))
    assert parts["attn"] == pytest.approx(attn)
    assert parts["hidden"] == pytest.approx(hidden)
    assert parts["pred"] == pytest.approx(pred)
    assert loss.item() == pytest.approx(attn + hidden + pred)
    # the official code's reduction divides by the number of classes
    assert soft_cross_entropy(s.logits, t.logits, 2.0, "elementmean").item() == pytest.approx(pred / 2)


def test_kd_loss_regression_uses_gold_score():
    s = outputs([[2.5], [1.0]], hidden=[[[1.0]], [[1.0]]], attn=[[[[1.0]]]])
    t = outputs([[9.0], [9.0]], hidden=[[[1.0]], [[1.0]]], attn=[[[[1.0]]]])
    loss, parts = kd_loss(s, t, torch.tensor([3.0, 0.0]), regression=True)
    assert parts["pred"] == pytest.approx(((2.5 - 3.0) ** 2 + 1.0) / 2)
    assert parts["attn"] == 0 and parts["hidden"] == 0
    assert loss.item() == pytest.approx(parts["pred"])
