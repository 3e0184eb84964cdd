import torch

from spd import grafting
from tests.conftest import deep


def test_p0_equals_teacher_and_p1_equals_students(bert, batch):
    bert.eval()
    teacher_logits = bert(**batch).logits
    model = grafting.graft(deep(bert))
    for slot in grafting.slots(model):  # make students differ from the teacher
        torch.nn.init.normal_(slot.student.output.dense.weight)
    g = torch.Generator().manual_seed(0)
    model.eval()
    grafting.sample_grafting(model, 0.0, g)
    assert torch.equal(model(**batch).logits, teacher_logits)
    grafting.sample_grafting(model, 1.0, g)
    students = grafting.extract_student(model).eval()
    assert torch.equal(model(**batch).logits, students(**batch).logits)
    assert not torch.allclose(students(**batch).logits, teacher_logits)


def test_replacement_rate_matches_p(bert):
    model = grafting.graft(bert)
    g = torch.Generator().manual_seed(0)
    for p in (0.2, 0.6, 0.9):
        draws = [d for _ in range(2000) for d in grafting.sample_grafting(model, p, g)]
        assert abs(sum(draws) / len(draws) - p) < 0.02


def test_outputs_have_every_layer_and_attention(bert, batch):
    model = grafting.graft(bert)
    grafting.sample_grafting(model, 0.5, torch.Generator().manual_seed(3))
    out = model(**batch, output_attentions=True, output_hidden_states=True)
    assert len(out.hidden_states) == 5 and len(out.attentions) == 4
    assert out.attentions[0].shape == (4, 4, 12, 12)


def test_theseus_ratio_two_groups_pairs_and_copies_first_half(bert, batch):
    original = [deep(l) for l in bert.bert.encoder.layer]
    model = grafting.graft(bert, compress_ratio=2)
    slots = grafting.slots(model)
    assert len(slots) == 2
    assert all(len(s.teacher) == 2 for s in slots)
    for i, s in enumerate(slots):
        for a, b in zip(s.student.parameters(), original[i].parameters()):
            assert torch.equal(a, b)
    compact = grafting.extract_student(model)
    assert compact.config.num_hidden_layers == 2 and len(compact.bert.encoder.layer) == 2
    assert compact(**batch).logits.shape == (4, 2)
