"""The compositions are real: each method uses exactly the parts it claims to use."""
import copy

import pytest
import torch

from harness import models
from harness.recipe import BuildContext
from harness.registry import get_method, make_settings
from harness.run import RunConfig, TaskData
from harness.tasks import get_task
from harness.train import LoopConfig, train
from spd import grafting

STAGES = {"prune_epochs": 1, "graft_epochs": 1, "finetune_epochs": 1, "lr": 1e-3}


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    task = get_task("rte")
    cfg = RunConfig(task="rte", model="tiny", glue_dir="samples", batch_size=16, max_train_examples=64,
                    max_eval_examples=32, train_eval_examples=0)
    td = TaskData(cfg, task, models.load_tokenizer("tiny"), tmp_path_factory.mktemp("c"))
    teacher = models.load_pretrained("tiny", task, seed=0)
    return task, td, teacher


def build(method, setting, sparsity=0.5, **settings):
    task, td, teacher = setting
    m = get_method(method)
    ctx = BuildContext(teacher=copy.deepcopy(teacher), task=task, steps_per_epoch=td.steps_per_epoch,
                       sparsity=sparsity, seed=0)
    return m.build(make_settings(m, settings), ctx)


def fit(recipe, setting):
    task, td, _ = setting
    return train(recipe, task, lambda epoch: td.train_loader(epoch), td.dev_loader(), torch.device("cpu"),
                 LoopConfig(eval_steps=1000, progress=False))


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_spd_changes_student_modules_only(setting):
    recipe = build("spd", setting, **STAGES)
    before = state(recipe.model)
    fit(recipe, setting)
    after = state(recipe.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all(".student." in k for k in changed), sorted(k for k in changed if ".student." not in k)[:5]
    # every student module changed, and teacher layers, embeddings, pooler, classifier are bit-identical
    assert {k.split(".student.")[0] for k in changed} == {f"bert.encoder.layer.{i}" for i in range(4)}
    for k in before:
        if ".student." not in k:
            assert torch.equal(before[k], after[k]), k


def _count_teacher_layer_calls(model):
    calls = {"with_grad": 0, "no_grad": 0}

    def hook(*_):
        calls["with_grad" if torch.is_grad_enabled() else "no_grad"] += 1
    for slot in grafting.slots(model):
        for layer in slot.teacher:
            layer.register_forward_pre_hook(hook)
    return calls


def test_sparse_kd_never_grafts(setting):
    recipe = build("sparse-kd", setting, **STAGES)
    calls = _count_teacher_layer_calls(recipe.model)
    fit(recipe, setting)
    assert calls["no_grad"] > 0          # the teacher's forward for the KD loss
    assert calls["with_grad"] == 0       # teacher layers never inside the student's forward


def test_sparse_progressive_never_runs_the_teacher_for_a_loss(setting, monkeypatch):
    import harness.train
    monkeypatch.setattr(harness.train, "_teacher_outputs",
                        lambda *a, **k: pytest.fail("teacher forward for a loss"))
    recipe = build("sparse-progressive", setting, **STAGES)
    calls = _count_teacher_layer_calls(recipe.model)
    fit(recipe, setting)
    assert calls["no_grad"] == 0      # no teacher pass at all (eval runs the students only)
    assert calls["with_grad"] > 0     # but it does graft: teacher layers sit in the student's path


def test_spd_grafts_with_the_scheduled_probability(setting):
    recipe = build("spd", setting, **STAGES)
    t1, t2, t3 = recipe.info["stage_ends"]
    p = recipe.grafting
    assert p(0) == p(t1 - 1) == 0.6                      # RTE's p0 from the paper
    assert p(t1) == pytest.approx(0.6) and p((t1 + t2) // 2) == pytest.approx(0.6 + 0.4 * ((t1 + t2) // 2 - t1) / (t2 - t1))
    assert p(t2) == p(t3 - 1) == 1.0
    official = build("spd", setting, preset="official-code", **STAGES)
    assert {official.grafting(t) for t in range(t3)} == {0.8}


def test_sparse_methods_reach_exact_sparsity(setting):
    for method in ("sparse-ft", "sparse-kd", "sparse-progressive"):
        recipe = build(method, setting, sparsity=0.75, **({"prune_epochs": 1, "graft_epochs": 1,
                                                            "finetune_epochs": 1, "lr": 1e-3}))
        fit(recipe, setting)
        for name, r in recipe.pruner.report().items():
            assert r["zeros"] == round(0.75 * r["numel"]), (method, name)


def test_theseus_keeps_predecessors_and_trains_successors(setting):
    recipe = build("theseus", setting, epochs=1, lr=1e-3)
    model = recipe.model
    before = state(model)
    fit(recipe, setting)
    after = state(recipe.model)
    teacher_keys = [k for k in before if ".teacher." in k]
    student_keys = [k for k in before if ".student." in k]
    assert teacher_keys and all(torch.equal(before[k], after[k]) for k in teacher_keys)
    assert any(not torch.equal(before[k], after[k]) for k in student_keys)
    compact = recipe.export(recipe.model)
    assert compact.config.num_hidden_layers == 2 and len(compact.bert.encoder.layer) == 2
    # eval path = successors only: the grafted model in eval equals the compact model
    task, td, _ = setting
    batch = next(iter(td.dev_loader()))
    batch.pop("labels")
    recipe.model.eval()
    grafting.use_students(recipe.model, True)
    with torch.no_grad():
        assert torch.equal(recipe.model(**batch).logits, compact.eval()(**batch).logits)


def test_theseus_compact_finetuning_trains_the_compact_model(setting):
    recipe = build("theseus", setting, recipe="two-phase", replace_epochs=1, finetune_epochs=1, lr=1e-3)
    fit(recipe, setting)
    assert not grafting.slots(recipe.model)
    assert recipe.model.config.num_hidden_layers == 2
