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


def test_kd_loss_is_fp32_when_the_forward_ran_in_bf16():
    """Under bf16 autocast the model's outputs are bf16; the loss must not round STS-B's gold scores (3.8 ->
    3.796875) or the soft targets to bf16 with them."""
    gold = torch.tensor([3.8, 1.23, 4.6, 0.33])
    bf16 = lambda x: torch.tensor(x, dtype=torch.bfloat16)  # noqa: E731
    s = SimpleNamespace(logits=gold.to(torch.bfloat16)[:, None], hidden_states=[bf16([[[0.1, 0.2]]])],
                        attentions=[bf16([[[[0.3, 0.7]]]])])
    t = SimpleNamespace(logits=s.logits, hidden_states=[bf16([[[0.3, 0.2]]])], attentions=[bf16([[[[0.5, 0.5]]]])])
    for mask in (None, torch.ones(1, 1)):
        loss, parts = kd_loss(s, t, gold, regression=True, attention_mask=mask)
        assert loss.dtype == torch.float32 and all(p.dtype == torch.float32 for p in parts.values())
        rounding = ((gold.to(torch.bfloat16).float() - gold) ** 2).mean()
        assert rounding > 0 and parts["pred"].item() == pytest.approx(rounding.item())
    c = SimpleNamespace(logits=bf16([[1.0, 0.0]]), hidden_states=s.hidden_states, attentions=s.attentions)
    _, parts = kd_loss(c, c, torch.tensor([0]), regression=False)
    assert parts["pred"].dtype == torch.float32
