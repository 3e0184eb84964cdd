"""#12 points 3 and 4 as behaviour: the paper preset's KD loss does not depend on padding, and a student module
left out of a batch moves under the official code's zero_grad() (AdamW momentum) and not under the paper's."""
import copy

import pytest
import torch

from harness.recipe import Phase, Recipe, student_parameters
from harness.tasks import get_task
from harness.train import Hooks, LoopConfig, _teacher_outputs, train
from spd import grafting
from spd.distill import LayerwiseKD
from tests.conftest import tiny_bert


def _kd(loss: LayerwiseKD, model, batch, pad_to: int | None):
    if pad_to is not None:
        extra = pad_to - batch["input_ids"].shape[1]
        batch = {k: torch.nn.functional.pad(v, (0, extra)) for k, v in batch.items()}
    grafting.use_students(model, False)
    teacher = _teacher_outputs(model, batch, torch.device("cpu"), "fp32")
    grafting.use_students(model, [True, False, True, False])
    model.eval()   # no dropout: the same forward whatever the padding
    student = model(**batch, output_attentions=True, output_hidden_states=True)
    return loss(student, torch.tensor([0, 1, 1, 0]), batch, teacher)[0].item()


def test_paper_kd_loss_is_the_same_padded_per_batch_or_to_the_model_length_and_the_official_one_is_not(batch):
    model = grafting.graft(tiny_bert(num_labels=2))
    with torch.no_grad():    # students unlike their teachers, so the MSE terms are not zero
        for slot in grafting.slots(model):
            for p in slot.student.parameters():
                p.add_(0.05 * torch.randn_like(p))
    batch = dict(batch)
    paper, official = LayerwiseKD(False, mask_padding=True), LayerwiseKD(False, mask_padding=False)
    assert _kd(paper, model, batch, None) == pytest.approx(_kd(paper, model, batch, 64), rel=1e-5)
    assert _kd(official, model, batch, None) != pytest.approx(_kd(official, model, batch, 64), rel=1e-3)


@pytest.mark.parametrize("zero_grad_to_none, moves", [(True, False), (False, True)])
def test_an_undrawn_student_moves_only_under_the_official_zero_grad(zero_grad_to_none, moves, monkeypatch):
    ids = torch.randint(5, 200, (4, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": torch.tensor([0, 1, 0, 1])}
    loop = LoopConfig(progress=False, eval_steps=1000)
    # step 1: every student drawn (momentum builds); step 2: student 1 left out of the path
    model2 = grafting.graft(tiny_bert())
    draws = iter([[True] * 4, [True, False, False, False]])
    monkeypatch.setattr(grafting, "sample_grafting", lambda m, p, g: grafting.use_students(m, next(draws)))
    recipe = Recipe(model=model2, phases=[Phase("one", 2, 1e-2, student_parameters)], loss=LayerwiseKD(False),
                    grafting=lambda t: 0.5, zero_grad_to_none=zero_grad_to_none)
    seen = []
    train(recipe, get_task("rte"), lambda epoch: [batch, batch], [batch], torch.device("cpu"), loop,
          hooks=Hooks(on_step=lambda s: seen.append(copy.deepcopy(grafting.slots(model2)[1].student.state_dict()))))
    first, second = seen
    assert any(not torch.equal(first[k], second[k]) for k in first) == moves
