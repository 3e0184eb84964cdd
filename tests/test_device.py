"""Where tensors live, and the CUDA test tier.

The CPU half runs in `make test` and guards the GPU path without a GPU: a recipe's parts (the pruner's masks, a
plugin's buffers) are built on the CPU before the loop picks the device, and once crashed the first non-event
step on CUDA. Moving a recipe to the `meta` device must leave no tensor of it behind.

The `cuda` tier runs every check on CUDA where there is one (`make test-gpu`) and skips with a reason where there
is none; the device-parametrized tests also run on the CPU, so the checks themselves are exercised in CI.
"""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from harness import data, models
from harness.recipe import BuildContext, stray_tensors
from harness.registry import get_method, make_settings, use_plugins
from harness.tasks import get_task
from harness.train import Hooks, LoopConfig, evaluate, resolve_precision, set_attention, tf32, train
from spd.pruning import PRUNED_MATRICES
from tests.conftest import REPO, tiny_bert
from tests.helpers import fast_run

PLUGIN = REPO / "examples" / "oneshot_kd" / "oneshot_kd.py"
CUDA = pytest.mark.cuda
# make test-gpu sets SPD_BENCH_REQUIRE_CUDA: there a missing GPU fails the tier instead of skipping it.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() and not os.environ.get("SPD_BENCH_REQUIRE_CUDA"),
                                reason="no CUDA device here (make test-gpu on a GPU machine runs the cuda tier)")
DEVICES = ["cpu", pytest.param("cuda", marks=[CUDA, needs_cuda])]
# 16 pruning steps for 12 events: steps 2, 6, 10 and 14 are not events, so the masks must already be where the
# weights are (an event makes fresh masks on the weights' device, which hid the bug in short smoke runs).
LONG_PRUNING = ["prune_epochs=4", "graft_epochs=1", "finetune_epochs=1", "lr=1e-3"]
METHOD_SETTINGS = {"spd": LONG_PRUNING, "sparse-kd": LONG_PRUNING, "sparse-progressive": LONG_PRUNING,
                   "sparse-ft": LONG_PRUNING, "theseus": ["epochs=3", "lr=1e-3"],
                   "dense": [], "oneshot-kd": ["epochs=2"]}


@pytest.fixture(autouse=True)
def keep_parameter_identity():
    """CPU -> CUDA moves keep a Parameter's identity (the pruner holds the model's weights by reference); a move
    to `meta` does so only when torch swaps tensors on conversion, as it does here."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    yield
    torch.__future__.set_swap_module_params_on_conversion(before)


def build_recipe(method_name: str, task_name: str = "rte", sparsity: float = 0.5):
    use_plugins([PLUGIN])
    method = get_method(method_name)
    task = get_task(task_name)
    ctx = BuildContext(teacher=tiny_bert(num_labels=task.num_labels), task=task, steps_per_epoch=4,
                       sparsity=sparsity if method.prunes else 0.0, seed=1,
                       load_pretrained=lambda: tiny_bert(num_labels=task.num_labels, seed=2))
    return method.build(make_settings(method, {}), ctx)


@pytest.mark.parametrize("method_name", sorted(METHOD_SETTINGS))
def test_recipe_to_moves_every_tensor_its_parts_hold(method_name):
    recipe = build_recipe(method_name)
    meta = torch.device("meta")
    recipe.to(meta)
    assert stray_tensors(recipe, meta) == []
    if recipe.pruner is not None:
        recipe.pruner.step(10**6)          # not an event: re-applies the masks it holds
        assert {m.device for m in recipe.pruner.masks.values()} == {meta}


def test_masks_follow_their_weights_when_the_model_moves_again():
    recipe = build_recipe("spd")
    recipe.to("cpu")
    recipe.model.to("meta")                # moved behind the recipe's back (surgery, a user's hook)
    recipe.pruner.step(10**6)
    assert {m.device.type for m in recipe.pruner.masks.values()} == {"meta"}
    assert stray_tensors(recipe, torch.device("meta")) == []


def test_stray_tensors_names_what_was_left_behind():
    recipe = build_recipe("spd")
    recipe.model.to("meta")                # what the old loop did: the model moved, the recipe's masks did not
    stray = stray_tensors(recipe, torch.device("meta"))
    assert stray and all(s.startswith("recipe.pruner.masks[") for s in stray)


def test_precision_resolution():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_precision("auto", None, cuda) == "bf16"
    assert resolve_precision("auto", None, cpu) == "fp32"
    assert resolve_precision("auto", "fp32", cuda) == "fp32"     # a preset's fp32 (official code)
    assert resolve_precision("bf16", "fp32", cuda) == "bf16"     # the user's explicit choice wins


def _matrices(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if k.startswith("bert.encoder.layer.") and
            any(f".{m}.weight" in k for m in PRUNED_MATRICES)}


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method_name", sorted(METHOD_SETTINGS))
def test_every_method_trains_through_the_loop_on_the_device(method_name, device, tmp_path, cache_dir):
    out = tmp_path / "run"
    extra = ["--plugin", PLUGIN] if method_name == "oneshot-kd" else []
    sparsity = 0.9 if method_name == "oneshot-kd" else 0.5
    assert fast_run(method_name, "rte", out, cache_dir, sparsity=sparsity, settings=METHOD_SETTINGS[method_name],
                    extra=[f"device={device}", *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method_name
    matrices = _matrices(load_file(out / "model" / "model.safetensors"))
    if not get_method(method_name).prunes:
        return
    report = json.loads((out / "sparsity.json").read_text())
    assert report["overall"] == pytest.approx(sparsity, abs=1e-3)
    if method_name != "oneshot-kd":    # per-matrix pruning: exactly round(s * n) zeros in every matrix
        for name, w in matrices.items():
            assert int((w == 0).sum()) == round(sparsity * w.numel()), name


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task_name", ["rte", "stsb"])
def test_saved_metric_is_what_the_saved_checkpoint_gives(task_name, device, tmp_path, cache_dir):
    """Under the run's default precision (bf16 autocast on CUDA): the head is fp32, so no scores tie."""
    out = tmp_path / "run"
    assert fast_run("spd", task_name, out, cache_dir, extra=[f"device={device}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    task = get_task(task_name)
    model = models.load_checkpoint(out / "model").to(device)
    tokenizer = models.load_tokenizer("tiny")
    dev = data.tokenize(data.load_split(task, "dev", "samples").select(range(64)), tokenizer, 128, None)
    loader = data.make_loader(dev, tokenizer, 128, shuffle=False, seed=0)
    again, predictions = evaluate(model, loader, task, torch.device(device), metrics["precision"])
    assert again["score"] == pytest.approx(metrics["final"]["dev"]["score"], abs=1e-9)
    if task.is_regression:  # fp32 scores: most of them are not representable in bf16 (which made ties)
        scores = torch.from_numpy(predictions)
        assert scores.dtype == torch.float32 and (scores.bfloat16().float() != scores).float().mean() > 0.5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluation_scores_are_fp32_under_any_precision(precision):
    model = tiny_bert(num_labels=1)
    task = get_task("stsb")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (64, 12), generator=g)
    batches = [{"input_ids": ids[i:i + 16], "attention_mask": torch.ones(16, 12, dtype=torch.long),
                "token_type_ids": torch.zeros(16, 12, dtype=torch.long), "labels": torch.rand(16, generator=g)}
               for i in range(0, 64, 16)]
    _, predictions = evaluate(model, batches, task, torch.device("cpu"), precision)
    assert predictions.dtype == "float32" and len(set(predictions.tolist())) == 64


def _one_spd_step(device: str) -> tuple[float, dict]:
    task = get_task("rte")
    method = get_method("spd")
    ctx = BuildContext(teacher=tiny_bert(), task=task, steps_per_epoch=4, sparsity=0.5, seed=1)
    recipe = method.build(make_settings(method, {"prune_epochs": 4, "graft_epochs": 1, "finetune_epochs": 1}), ctx)
    recipe.phases = recipe.phases[:1]
    recipe.phases[0].steps = 2                      # step 1 and 2: not pruning events on a 16-step stage
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():   # a student that is still its teacher has gradients of rounding noise only
        for name, p in recipe.model.named_parameters():
            if ".student." in name:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    ids = torch.randint(5, 200, (8, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[:3, 11:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
             "labels": torch.randint(0, 2, (8,), generator=g)}
    losses = []
    train(recipe, task, lambda epoch: [batch, batch], [batch], torch.device(device),
          LoopConfig(precision="fp32", progress=False, seed=1, log_every=1),
          hooks=Hooks(on_step=lambda s: losses.append(float(s.loss))))
    students = {k: v.detach().cpu() for k, v in recipe.model.state_dict().items() if ".student." in k}
    return losses, students


@CUDA
@needs_cuda
def test_one_spd_step_in_fp32_is_the_same_on_cpu_and_cuda():
    """fp32 without TF32 on both: the same loss and the same updated weights to within 1e-4 relative.

    The student is moved off its teacher first (_one_spd_step): a student that is still its teacher has gradients
    of rounding noise only, which AdamW's g / (|g| + eps) turns into +-lr steps that differ between any two
    devices. Checked on the CPU against float64 arithmetic as the other device: the moved student's weights agree
    to 7.7e-7 (the unmoved one's differ by up to 2.8e-4 in 9 of 64 tensors)."""
    cpu_losses, cpu_weights = _one_spd_step("cpu")
    cuda_losses, cuda_weights = _one_spd_step("cuda")
    assert cuda_losses == pytest.approx(cpu_losses, rel=1e-4)
    for name, w in cpu_weights.items():
        torch.testing.assert_close(cuda_weights[name], w, rtol=1e-4, atol=1e-5, msg=name)


@CUDA
@needs_cuda
def test_an_explicit_cuda_index_places_everything_on_that_gpu(tmp_path, cache_dir):
    """The grid's one-GPU-per-worker path names devices cuda:N; the last visible GPU must get every tensor."""
    index = torch.cuda.device_count() - 1
    device = torch.device(f"cuda:{index}")
    recipe = build_recipe("spd")
    task = get_task("rte")
    seen = []
    ids = torch.randint(5, 200, (4, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": torch.zeros(4, dtype=torch.long)}
    recipe.phases = recipe.phases[:1]
    recipe.phases[0].steps = 3
    train(recipe, task, lambda epoch: [batch], [batch], device, LoopConfig(progress=False),
          hooks=Hooks(on_step=lambda s: seen.append(stray_tensors(recipe, device))))
    assert seen and all(s == [] for s in seen)
    out = tmp_path / "run"
    assert fast_run("spd", "rte", out, cache_dir, settings=LONG_PRUNING, extra=[f"device=cuda:{index}"]) == 0
    assert "cuda" in json.loads((out / "manifest.json").read_text())["device"]


def test_the_fp32_head_runs_without_tf32_and_a_run_gives_the_tf32_flags_back():
    """The TF32 flags are process-wide and a bf16 run on CUDA turns them on: the evaluation head must not inherit
    them (its scores are fp32), and a run leaves them as it found them."""
    model, task = tiny_bert(num_labels=1), get_task("stsb")
    ids = torch.randint(5, 200, (4, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": torch.rand(4)}
    seen = []
    model.classifier.register_forward_pre_hook(lambda m, a: seen.append(torch.backends.cuda.matmul.allow_tf32))
    recipe = build_recipe("sparse-ft")
    recipe.phases, recipe.phases[0].steps = recipe.phases[:1], 1
    labels = {**batch, "labels": torch.zeros(4, dtype=torch.long)}
    with tf32(True):
        evaluate(model, [batch], task, torch.device("cpu"), "bf16")
        train(recipe, get_task("rte"), lambda epoch: [labels], [labels], torch.device("cpu"),
              LoopConfig(progress=False))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert seen == [False]


def test_evaluation_leaves_the_attention_implementation_as_it_found_it():
    model = tiny_bert()
    task = get_task("rte")
    ids = torch.randint(5, 200, (4, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": torch.zeros(4, dtype=torch.long)}
    for implementation in ("sdpa", "eager"):
        set_attention(model, implementation)
        evaluate(model, [batch], task, torch.device("cpu"))
        assert model.config._attn_implementation == implementation
