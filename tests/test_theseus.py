"""BERT-of-Theseus against the released code (JetRunner/BERT-of-Theseus at 09de324), on the tiny model.

Written while checking why Theseus scored near trivial on real MiniLM data (docs/results/mini-real.md): the
grafted model with every predecessor kept is the teacher, bit for bit; the successors start as the teacher's
first half (run_glue.py: `deepcopy(model.bert.encoder.layer[ix]) for ix in range(scc_n_layer)`), so the
compact model at step 0 is the teacher truncated to its first layers and scores far below it; only the
successors train, and a short run moves the compact model's loss down from that start.
"""
import copy

import torch

from harness.recipe import BuildContext, Phase, Recipe, all_parameters
from harness.registry import get_method, make_settings
from harness.tasks import get_task
from harness.train import LoopConfig, train
from spd import grafting
from spd.distill import TaskLoss
from tests.conftest import tiny_bert


def build(teacher, **settings):
    m = get_method("theseus")
    ctx = BuildContext(teacher=copy.deepcopy(teacher), task=get_task("rte"), steps_per_epoch=4, sparsity=0.0, seed=0)
    return m.build(make_settings(m, settings), ctx)


def batches(n=4, size=16, seed=0):
    """Learnable: the label is whether token 7 occurs in the sequence."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(8, 200, (size, 10), generator=g)
        labels = torch.randint(0, 2, (size,), generator=g)
        ids[labels == 1, 3] = 7
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def logits(model, data):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in data])


def test_keeping_every_predecessor_is_the_teacher_and_step_zero_is_the_truncated_teacher():
    teacher = tiny_bert(layers=4).eval()
    data = batches()
    recipe = build(teacher)
    model = recipe.model
    grafting.use_students(model, False)     # p = 0: both predecessors of every slot, in order
    assert torch.equal(logits(model, data), logits(teacher, data))
    first_half = copy.deepcopy(teacher)
    first_half.bert.encoder.layer = torch.nn.ModuleList(list(first_half.bert.encoder.layer)[:2])
    grafting.use_students(model, True)      # what evaluation runs: successors 0, 1 = teacher layers 0, 1
    assert torch.equal(logits(model, data), logits(first_half, data))
    assert torch.equal(logits(recipe.export(model), data), logits(first_half, data))


def fine_tuned_teacher(data):
    """The tiny model fine-tuned on `data` (every weight), as run.py fine-tunes the teacher: Theseus never trains
    the embeddings, pooler or classifier, and a random head (std 0.02) leaves the successors almost no way to move
    the logits."""
    teacher = tiny_bert(layers=4)
    recipe = Recipe(model=teacher, phases=[Phase("teacher", 30, 3e-3, all_parameters)], loss=TaskLoss(False))
    train(recipe, get_task("rte"), lambda epoch: iter(data), data, torch.device("cpu"),
          LoopConfig(eval_steps=1000, progress=False))
    return teacher


def test_a_short_run_lowers_the_compact_models_loss():
    data = batches()
    teacher = fine_tuned_teacher(data)
    recipe = build(teacher, epochs=20, lr=3e-3, linear_k=0.05)    # p reaches 1 at step 14 of 80
    labels = torch.cat([b["labels"] for b in data])
    loss = lambda m: torch.nn.functional.cross_entropy(logits(recipe.export(m), data), labels).item()
    start = loss(recipe.model)
    train(recipe, get_task("rte"), lambda epoch: iter(data), data, torch.device("cpu"),
          LoopConfig(eval_steps=1000, progress=False))
    assert loss(recipe.model) < 0.8 * start      # measured: 0.156 -> 0.114 (the teacher: 0.125)
