"""`spd-bench plan`: how many cells a grid has, which are done, and what the rest costs on a GPU.

Cost model (stated, not measured): a forward pass costs 2 FLOPs per parameter that the token passes
through plus the attention products (4 * layers * seq * hidden); a backward pass twice the forward.
A KD step adds the teacher's forward. Steps per phase come from building each cell's recipe on a
meta-device model (no weights, no data), so the estimate follows every method's real schedule.
Tokens per example: the mean BERT word-piece length of the task times 1.3 for dynamic padding
(the longest example of a batch sets its length), or max_seq_length when padding to it.
"""
from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import torch
from tabulate import tabulate
from transformers import BertConfig, BertForSequenceClassification

from harness.gridconfig import Grid
from harness.models import TINY_CONFIG
from harness.recipe import BuildContext
from harness.registry import get_method, make_settings
from harness.tasks import get_task
from spd import grafting

# Official GLUE split sizes (train, dev; MNLI dev = matched).
GLUE_SIZES = {"mnli": (392702, 9815), "qqp": (363846, 40430), "qnli": (104743, 5463), "sst2": (67349, 872),
              "cola": (8551, 1043), "stsb": (5749, 1500), "mrpc": (3668, 408), "rte": (2490, 277),
              "wnli": (635, 71)}
# Mean word pieces per example (bert-base-uncased tokenizer, [CLS]/[SEP] included, truncated at 128):
# measured on the ../shared/glue dev files (the tokenizer over each file, mean length);
# MNLI and QQP estimated from their published statistics (no local copy).
MEAN_TOKENS = {"mnli": 39, "qqp": 30, "qnli": 51, "sst2": 25, "cola": 11, "stsb": 31, "mrpc": 53,
               "rte": 72, "wnli": 38}
DYNAMIC_PADDING_FACTOR = 1.3
# Sustained bf16 training throughput assumed per GPU: about 30% of the dense tensor-core peak.
GPU_TFLOPS = {"a100": 0.30 * 312, "h100": 0.30 * 989, "v100": 0.30 * 125, "rtx6000": 0.30 * 130}
KNOWN_CONFIGS = {
    "bert-base-uncased": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072),
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    "tiny": TINY_CONFIG,
}


def _config(model: str, num_labels: int) -> BertConfig:
    if model in KNOWN_CONFIGS:
        return BertConfig(**KNOWN_CONFIGS[model], num_labels=num_labels)
    from transformers import AutoConfig

    from harness.models import resolve_model
    return AutoConfig.from_pretrained(resolve_model(model), num_labels=num_labels)


def _layer_params(cfg: BertConfig) -> int:
    h, f = cfg.hidden_size, cfg.intermediate_size
    return 4 * h * h + 2 * h * f + 9 * h + f


def _forward_flops_per_token(cfg: BertConfig, layers: float, seq: float) -> float:
    return 2 * layers * _layer_params(cfg) + 4 * layers * seq * cfg.hidden_size


def _padded_length(cell_cfg, task) -> float:
    """Tokens per example as the model computes them: the padded length, teacher and cells alike."""
    if cell_cfg.pad_to_max_length:
        return cell_cfg.max_seq_length
    return min(cell_cfg.max_seq_length, MEAN_TOKENS.get(task.name, 64) * DYNAMIC_PADDING_FACTOR)


def cell_flops(cell_cfg, sizes: tuple[int, int]) -> float:
    task = get_task(cell_cfg.task)
    method = get_method(cell_cfg.method)
    cfg = _config(cell_cfg.model, task.num_labels)
    train_n = min(sizes[0], cell_cfg.max_train_examples or sizes[0])
    dev_n = min(sizes[1], cell_cfg.max_eval_examples or sizes[1])
    seq = _padded_length(cell_cfg, task)
    steps_per_epoch = max(1, train_n // cell_cfg.batch_size)
    with torch.device("meta"):
        teacher = BertForSequenceClassification(cfg)
    ctx = BuildContext(teacher=copy.deepcopy(teacher), task=task, steps_per_epoch=steps_per_epoch,
                       sparsity=cell_cfg.sparsity if method.prunes else 0.0, seed=cell_cfg.seed)
    recipe = method.build(make_settings(method, cell_cfg.settings), ctx)
    tokens_per_step = cell_cfg.batch_size * seq
    layers = cfg.num_hidden_layers
    flops, model, step = 0.0, recipe.model, 0
    for phase in recipe.phases:
        if phase.before is not None:
            model = phase.before(model)
        slots = grafting.slots(model)
        if slots:  # expected layers run: a student module for p, its teacher layer(s) for 1 - p
            ps = [recipe.grafting(step + i * phase.steps // 20) if recipe.grafting else 1.0 for i in range(20)]
            p = sum(ps) / len(ps)
            run_layers = sum(p + (1 - p) * len(s.teacher) for s in slots)
        else:
            run_layers = model.config.num_hidden_layers
        per_token = 3 * _forward_flops_per_token(cfg, run_layers, seq)          # forward + backward
        if getattr(recipe.loss, "needs_teacher", False):
            per_token += _forward_flops_per_token(cfg, layers, seq)             # the teacher's forward
        flops += per_token * tokens_per_step * phase.steps
        step += phase.steps
    evals = 20 + len(recipe.phases)
    flops += evals * (dev_n + cell_cfg.train_eval_examples) * seq * _forward_flops_per_token(cfg, layers, seq)
    return flops


def teacher_flops(cell_cfg, sizes) -> float:
    task = get_task(cell_cfg.task)
    cfg = _config(cell_cfg.model, task.num_labels)
    train_n = min(sizes[0], cell_cfg.max_train_examples or sizes[0])
    seq = _padded_length(cell_cfg, task)
    return 3 * _forward_flops_per_token(cfg, cfg.num_hidden_layers, seq) * train_n * seq * cell_cfg.teacher_epochs


def _sizes(cell_cfg) -> tuple[int, int]:
    from harness import data
    if data.resolve_source(cell_cfg.glue_dir) == data.SAMPLES:
        from harness.samples import DEV_SIZE, TRAIN_SIZE
        return TRAIN_SIZE, DEV_SIZE
    return GLUE_SIZES[get_task(cell_cfg.task).name]


def plan_grid(grid: Grid, out: Path | None, tflops: float | None = None, gpu: str = "a100") -> str:
    from harness.grid import cell_state
    from harness.run import teacher_identity
    if tflops is None:
        if gpu not in GPU_TFLOPS:
            from harness.errors import unknown_name
            raise unknown_name("gpu", gpu, GPU_TFLOPS)
        tflops = GPU_TFLOPS[gpu]
    states = Counter(cell_state(out, c) if out else "pending" for c in grid.cells)
    rows, total, teachers = [], 0.0, {}
    by_method = Counter()
    for cell in grid.cells:
        sizes = _sizes(cell.cfg)
        f = cell_flops(cell.cfg, sizes)
        by_method[(cell.cfg.method, cell.cfg.sparsity)] += f
        teachers.setdefault(teacher_identity(cell.cfg), teacher_flops(cell.cfg, sizes))
        total += f
    total_teachers = sum(teachers.values())
    hours = lambda f: f / (tflops * 1e12) / 3600  # noqa: E731
    for (method, sparsity), f in sorted(by_method.items()):
        n = sum(1 for c in grid.cells if (c.cfg.method, c.cfg.sparsity) == (method, sparsity))
        rows.append([method, f"{sparsity:g}", n, f"{f:.3g}", f"{hours(f):.1f}"])
    rows.append(["(teachers)", "-", len(teachers), f"{total_teachers:.3g}", f"{hours(total_teachers):.1f}"])
    lines = [f"grid {grid.name}: {len(grid.cells)} cells ({states['done']} done, {states['failed']} failed, "
             f"{states['pending']} pending), {len(teachers)} teachers",
             tabulate(rows, headers=["method", "sparsity", "cells", "FLOPs", "GPU-hours"]),
             f"total: {total + total_teachers:.3g} FLOPs = {hours(total + total_teachers):.1f} GPU-hours at "
             f"{tflops:.3g} TFLOP/s sustained ({gpu if tflops == GPU_TFLOPS.get(gpu) else 'given'}); "
             f"cost model in harness/cost.py"]
    return "\n".join(lines)
