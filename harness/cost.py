"""`spd-bench plan`: how many cells a grid has, which are done, and what they cost. Two estimates:

**FLOP model** (the default; needs no device). A forward pass costs 2 FLOPs per parameter that the token passes
through plus the attention products (4 * layers * seq * hidden); a backward pass twice the forward. A KD step adds
the teacher's forward. Tokens per example: the mean BERT word-piece length of the task times 1.3 for dynamic
padding (the longest example of a batch sets its length), or max_seq_length when padding to it. Divided by an
assumed sustained throughput (30 % of the GPU's dense bf16 peak), this is a planning figure, not a measurement.

**Calibrated** (`--calibrate`): measured on the device at hand. One probe per distinct (method, settings, model,
task, batch, padded length, precision): the recipe is built as the harness builds it, on a randomly initialised
model of the grid's geometry, and each of its phases runs `warmup + steps` steps through the real loop
(harness.train.train) on random batches of the task's expected padded length; `Hooks.on_step` timestamps the
last `steps` (the device is synchronised only at the window's edges). A pruning event and an evaluation pass
(harness.train.evaluate) are timed on their own. A cell then costs

    sum over phases (steps x seconds per step) + pruning events x seconds per event
    + evaluations x padded tokens evaluated x seconds per evaluated token
    + outside the loop: reading the task's splits, building the recipe, export, checkpoint save and load
      (and, for a teacher, tokenizing the data its cells then read from the cache)

Both estimates take steps per phase, pruning events and evaluations from each cell's real recipe, built on a
meta-device model (no weights, no data), so they follow every method's schedule. Padded lengths and the time to
read and tokenize the data are measured on the data where it is local (built-in samples, a glue_data directory);
otherwise lengths follow the rule above and data handling is not counted. Starting the process is not counted.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tabulate import tabulate
from transformers import BertConfig, BertForSequenceClassification

from harness.gridconfig import Grid
from harness.models import TINY_CONFIG
from harness.recipe import BuildContext, Phase, Recipe, all_parameters, epochs_to_steps
from harness.registry import get_method, make_settings
from harness.tasks import Task, get_task
from harness.train import Hooks, LoopConfig, StepEnd, evaluate, resolve_precision, train
from spd import grafting
from spd.distill import TaskLoss

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
# Dense bf16 (v100: fp16) tensor-core peaks, TFLOP/s; the FLOP model assumes 30 % of them sustained.
PEAK_TFLOPS = {"a100": 312, "h100": 989, "v100": 125, "rtx6000": 130}
GPU_TFLOPS = {gpu: 0.30 * peak for gpu, peak in PEAK_TFLOPS.items()}
KNOWN_CONFIGS = {
    "bert-base-uncased": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072),
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    "tiny": TINY_CONFIG,
}
NEVER = 10 ** 9   # eval_steps that never falls inside a probe


def _config(model: str, num_labels: int) -> BertConfig:
    if model in KNOWN_CONFIGS:
        return BertConfig(**KNOWN_CONFIGS[model], num_labels=num_labels)
    from transformers import AutoConfig

    from harness.models import unloadable, from_cache_or_hub
    try:   # as a run loads it: the cache first, the hub only if it answers (plan used to retry for half a minute)
        return from_cache_or_hub(lambda path, **kw: AutoConfig.from_pretrained(path, num_labels=num_labels, **kw),
                                 model)
    except (OSError, ValueError) as err:
        raise unloadable(model, err) from None


def random_model(model: str, task: Task) -> BertForSequenceClassification:
    """A randomly initialised classifier with `model`'s geometry (no weights to download): steps cost the same."""
    cfg = _config(model, task.num_labels)
    cfg.problem_type = "regression" if task.is_regression else "single_label_classification"
    cfg._attn_implementation = "eager"
    return BertForSequenceClassification(cfg)


def build_recipe(method_name: str, settings: dict, teacher, task: Task, steps_per_epoch: int, sparsity: float,
                 seed: int) -> Recipe:
    """The method's recipe, built as harness/run.py builds it (a method that wants the pre-trained model gets a
    fresh random one of the same geometry)."""
    method = get_method(method_name)
    config = copy.deepcopy(teacher.config)
    ctx = BuildContext(teacher=teacher, task=task, steps_per_epoch=steps_per_epoch,
                       sparsity=sparsity if method.prunes else 0.0, seed=seed,
                       load_pretrained=lambda: type(teacher)(config))
    return method.build(make_settings(method, settings), ctx)


def teacher_recipe(model, task: Task, steps: int, lr: float) -> Recipe:
    """The teacher's fine-tuning as harness/run.py's ensure_teacher trains it: every parameter, task loss."""
    return Recipe(model=model, phases=[Phase("finetune", steps, lr, all_parameters)], loss=TaskLoss(task.is_regression))


def _layer_params(cfg: BertConfig) -> int:
    h, f = cfg.hidden_size, cfg.intermediate_size
    return 4 * h * h + 2 * h * f + 9 * h + f


def _forward_flops_per_token(cfg: BertConfig, layers: float, seq: float) -> float:
    return 2 * layers * _layer_params(cfg) + 4 * layers * seq * cfg.hidden_size


def step_flops_per_token(cfg: BertConfig, run_layers: float, seq: float, needs_teacher: bool) -> float:
    """Forward + backward through the layers a step runs, plus the teacher's forward (all layers) for KD."""
    flops = 3 * _forward_flops_per_token(cfg, run_layers, seq)
    if needs_teacher:
        flops += _forward_flops_per_token(cfg, cfg.num_hidden_layers, seq)
    return flops


def n_evaluations(phase_steps: list[int], eval_steps: int = 0) -> int:
    """How many evaluations harness/train.py makes: every eval_steps (0: ceil(total / 20)) except at a phase's
    last step, plus one at the end of every phase (one in all for a recipe with no phases)."""
    if not phase_steps:
        return 1
    total = sum(phase_steps)
    every = eval_steps or max(1, math.ceil(total / 20))
    ends = {sum(phase_steps[:i + 1]) for i in range(len(phase_steps))} - {0}
    return total // every - sum(1 for e in ends if e % every == 0) + len(phase_steps)


@dataclass
class CellPlan:
    """What a cell (or a teacher) runs, from its recipe: no weights, no data."""
    phases: list[tuple[str, int, float]]   # (name, steps, expected encoder layers a step runs)
    needs_teacher: bool
    events: int                            # pruning events (each a top-k over every pruned matrix)
    evaluations: int
    train_n: int
    dev_n: int
    train_eval_n: int
    pad: bool                              # every training batch padded to max_seq_length
    tokenizes: bool = False                # a teacher: the first to read its task, it tokenizes the data

    @property
    def steps(self) -> int:
        return sum(n for _, n, _ in self.phases)


def _sizes(cell_cfg) -> tuple[int, int]:
    from harness import data
    if data.resolve_source(cell_cfg.glue_dir) == data.SAMPLES:
        from harness.samples import DEV_SIZE, TRAIN_SIZE
        return TRAIN_SIZE, DEV_SIZE
    return GLUE_SIZES[get_task(cell_cfg.task).name]


def cell_plan(cell_cfg, sizes: tuple[int, int] | None = None, teacher: bool = False) -> CellPlan:
    """The cell's schedule (teacher=True: its teacher's fine-tuning) from its recipe on the meta device."""
    task = get_task(cell_cfg.task)
    sizes = sizes or _sizes(cell_cfg)
    train_n = min(sizes[0], cell_cfg.max_train_examples or sizes[0])
    dev_n = min(sizes[1], cell_cfg.max_eval_examples or sizes[1])
    steps_per_epoch = max(1, train_n // cell_cfg.batch_size)
    with torch.device("meta"):
        model = random_model(cell_cfg.model, task)
    if teacher:
        steps = max(1, epochs_to_steps(cell_cfg.teacher_epochs, steps_per_epoch))
        recipe = teacher_recipe(model, task, steps, cell_cfg.teacher_lr)
    else:
        recipe = build_recipe(cell_cfg.method, cell_cfg.settings, model, task, steps_per_epoch, cell_cfg.sparsity,
                              cell_cfg.seed)
    phases, model, step = [], recipe.model, 0
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
        phases.append((phase.name, phase.steps, run_layers))
        step += phase.steps
    return CellPlan(phases, bool(getattr(recipe.loss, "needs_teacher", False)),
                    len(recipe.pruner.schedule) if recipe.pruner else 0,
                    n_evaluations([n for _, n, _ in phases], cell_cfg.eval_steps), train_n, dev_n,
                    min(cell_cfg.train_eval_examples, train_n), cell_cfg.pad_to_max_length or recipe.pad_to_max_length,
                    tokenizes=teacher)


def _padded_length(cell_cfg, task, pad: bool | None = None) -> float:
    """The FLOP model's tokens per example: the padded length, teacher and cells alike."""
    if cell_cfg.pad_to_max_length if pad is None else pad:
        return cell_cfg.max_seq_length
    return min(cell_cfg.max_seq_length, MEAN_TOKENS.get(task.name, 64) * DYNAMIC_PADDING_FACTOR)


def cell_flops(cell_cfg, sizes: tuple[int, int], teacher: bool = False) -> float:
    task = get_task(cell_cfg.task)
    cfg = _config(cell_cfg.model, task.num_labels)
    plan = cell_plan(cell_cfg, sizes, teacher)
    seq = _padded_length(cell_cfg, task, plan.pad)
    flops = sum(n * step_flops_per_token(cfg, layers, seq, plan.needs_teacher) * cell_cfg.batch_size * seq
                for _, n, layers in plan.phases)
    evaluated = plan.evaluations * (plan.dev_n + plan.train_eval_n) * seq
    return flops + evaluated * _forward_flops_per_token(cfg, cfg.num_hidden_layers, seq)


def teacher_flops(cell_cfg, sizes) -> float:
    return cell_flops(cell_cfg, sizes, teacher=True)


def _grid_header(grid: Grid, out: Path | None, teachers: int) -> str:
    from harness.grid import cell_state
    states = Counter(cell_state(out, c) if out else "pending" for c in grid.cells)
    return (f"grid {grid.name}: {len(grid.cells)} cells ({states['done']} done, {states['failed']} failed, "
            f"{states['pending']} pending), {teachers} teachers")


def _teacher_cells(grid: Grid) -> dict:
    from harness.run import teacher_identity
    teachers = {}
    for cell in grid.cells:
        teachers.setdefault(teacher_identity(cell.cfg), cell.cfg)
    return teachers


def plan_grid(grid: Grid, out: Path | None, tflops: float | None = None, gpu: str = "a100") -> str:
    if tflops is None:
        if gpu not in GPU_TFLOPS:
            from harness.errors import unknown_name
            raise unknown_name("gpu", gpu, GPU_TFLOPS)
        tflops = GPU_TFLOPS[gpu]
    by_method = Counter()
    for cell in grid.cells:
        by_method[(cell.cfg.method, cell.cfg.sparsity)] += cell_flops(cell.cfg, _sizes(cell.cfg))
    teachers = _teacher_cells(grid)
    total_teachers = sum(teacher_flops(c, _sizes(c)) for c in teachers.values())
    total = sum(by_method.values())
    hours = lambda f: f / (tflops * 1e12) / 3600  # noqa: E731
    rows = []
    for (method, sparsity), f in sorted(by_method.items()):
        n = sum(1 for c in grid.cells if (c.cfg.method, c.cfg.sparsity) == (method, sparsity))
        rows.append([method, f"{sparsity:g}", n, f"{f:.3g}", f"{hours(f):.1f}"])
    rows.append(["(teachers)", "-", len(teachers), f"{total_teachers:.3g}", f"{hours(total_teachers):.1f}"])
    lines = [_grid_header(grid, out, len(teachers)),
             tabulate(rows, headers=["method", "sparsity", "cells", "FLOPs", "GPU-hours"]),
             f"total: {total + total_teachers:.3g} FLOPs = {hours(total + total_teachers):.1f} GPU-hours at "
             f"{tflops:.3g} TFLOP/s sustained ({gpu if tflops == GPU_TFLOPS.get(gpu) else 'given'}); "
             f"cost model in harness/cost.py (a measured estimate for the device at hand: --calibrate)"]
    return "\n".join(lines)


# ---- Timing steps through the real loop (also what bench/ measures with) ----

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, clock: Callable[[], float] = time.perf_counter,
          reps: int = 2) -> float:
    """The fastest of `reps` calls of fn, in seconds, the device synchronised around each."""
    best = math.inf
    for _ in range(reps):
        synchronize(device)
        t0 = clock()
        fn()
        synchronize(device)
        best = min(best, clock() - t0)
    return best


class Stopwatch:
    """Hooks that time a window of optimizer steps: the `steps` after `warmup`. The device is synchronised at the
    window's two edges only, so inside it the loop runs as it always does. `lap` adds up the host time of each
    part of a step (on CUDA: the time to issue its work, unless a part waits for the GPU); the window's
    per-step layers run and, through `loader`, its batches' shapes are recorded for FLOP counts."""

    def __init__(self, device: torch.device, warmup: int, steps: int, clock: Callable[[], float] = time.perf_counter):
        if warmup < 1 or steps < 1:
            raise ValueError("a timing window needs at least one warm-up step and one timed step")
        self.device, self.warmup, self.total, self.clock = device, warmup, warmup + steps, clock
        self.count, self.start, self.end, self.last = 0, None, None, None
        self.parts: dict[str, float] = {}
        self.layers: list[int] = []
        self.shapes: list[tuple[int, int]] = []
        self.peak_bytes: int | None = None

    def loader(self, make_loader: Callable[[int], object]) -> Callable[[int], object]:
        def wrapped(epoch: int):
            for batch in make_loader(epoch):
                self.shapes.append(tuple(batch["input_ids"].shape))
                yield batch
        return wrapped

    def _edge(self) -> float:
        synchronize(self.device)
        return self.clock()

    def on_step(self, end: StepEnd) -> None:
        self.count += 1
        if self.count == self.warmup:
            self.start = self.last = self._edge()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
        elif self.warmup < self.count <= self.total:
            now = self._edge() if self.count == self.total else self.clock()
            self.parts["bookkeeping"] = self.parts.get("bookkeeping", 0.0) + now - self.last
            self.last = now
            slots = grafting.slots(end.model)
            self.layers.append(sum(1 if s.use_student else len(s.teacher) for s in slots) if slots
                               else end.model.config.num_hidden_layers)
            if self.count == self.total:
                self.end = now
                if self.device.type == "cuda":
                    self.peak_bytes = torch.cuda.max_memory_allocated(self.device)

    def lap(self, name: str) -> None:
        if self.start is not None and self.end is None:
            now = self.clock()
            self.parts[name] = self.parts.get(name, 0.0) + now - self.last
            self.last = now

    @property
    def timed_steps(self) -> int:
        return self.total - self.warmup

    @property
    def seconds_per_step(self) -> float:
        return (self.end - self.start) / self.timed_steps

    def per_step(self) -> dict[str, float]:
        return {k: v / self.timed_steps for k, v in self.parts.items()}

    def window_shapes(self) -> list[tuple[int, int]]:
        return self.shapes[self.warmup:self.total]


def _chain(*fns):
    fns = [f for f in fns if f is not None]
    return (lambda *args: [f(*args) for f in fns]) if fns else None


def _spread(schedule, start: int, length: int, warmup: int, steps: int):
    """A probe's grafting probability: the phase's own p(t), sampled evenly across its `length` real steps over
    the `steps` timed steps (warm-up steps take the phase's first p)."""
    if schedule is None:
        return None
    return lambda t: schedule(start + min(length - 1, (2 * max(0, t - warmup) + 1) * length // (2 * steps)))


def _quiet(pruner):
    """The pruner without its events (masks still re-applied every step): an event is timed on its own."""
    if pruner is None:
        return None
    quiet = copy.copy(pruner)
    quiet.schedule = {}
    return quiet


def probe_phases(recipe: Recipe, task: Task, make_loader: Callable[[int], object], eval_loader,
                 device: torch.device, *, warmup: int = 3, steps: int = 10, precision: str = "auto",
                 only: list[int] | None = None, clock: Callable[[], float] = time.perf_counter,
                 extra: Hooks | None = None, seed: int = 42) -> list[tuple[str, Stopwatch]]:
    """Run `warmup + steps` steps of each phase of `recipe` (or of the phases `only` names by index) through
    harness.train.train and return (phase name, its Stopwatch). A skipped phase's surgery still runs, so a later
    phase trains the model it would train in a run; pruning events are left out (see `_quiet`); the phase-end
    evaluation runs on `eval_loader`, outside the window. `recipe.model` is the model after the last phase."""
    model, start, results = recipe.model, 0, []
    extra = extra or Hooks()
    for index, phase in enumerate(recipe.phases):
        if only is not None and index not in only:
            if phase.before is not None:
                model = phase.before(model)
            start += phase.steps
            continue
        watch = Stopwatch(device, warmup, steps, clock)
        probe = dataclasses.replace(recipe, model=model, phases=[dataclasses.replace(phase, steps=warmup + steps)],
                                    grafting=_spread(recipe.grafting, start, phase.steps, warmup, steps),
                                    pruner=_quiet(recipe.pruner))
        hooks = Hooks(on_step=_chain(watch.on_step, extra.on_step), on_eval=extra.on_eval,
                      lap=_chain(watch.lap, extra.lap))
        torch.manual_seed(seed)
        train(probe, task, watch.loader(make_loader), eval_loader, device,
              LoopConfig(eval_steps=NEVER, progress=False, precision=precision, seed=seed), hooks=hooks)
        model = probe.model
        results.append((phase.name, watch))
        start += phase.steps
    recipe.model = model
    return results


def random_examples(lengths: list[int], task: Task, vocab_size: int, seed: int = 0):
    """Tokenized examples of random word pieces ([CLS] ... [SEP]), one per length, with random labels."""
    import datasets
    g = torch.Generator().manual_seed(seed)
    ids = [[101, *torch.randint(1000, vocab_size, (max(2, n) - 2,), generator=g).tolist(), 102] for n in lengths]
    labels = (torch.rand(len(ids), generator=g) * 5).tolist() if task.is_regression else \
        torch.randint(0, task.num_labels, (len(ids),), generator=g).tolist()
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                                       "token_type_ids": [[0] * len(x) for x in ids], "labels": labels})


def loaders(train_ds, eval_ds, batch_size: int, eval_batch_size: int, shuffle: bool = True):
    """(make_train_loader(epoch), eval loader) through harness.data.make_loader, as a run batches its data."""
    from harness import data, models
    tokenizer = models.load_tokenizer("tiny")   # bert-base-uncased's vocabulary: the collator pads with it
    make = lambda epoch: data.make_loader(train_ds, tokenizer, batch_size, shuffle=shuffle, seed=epoch)  # noqa: E731
    return make, data.make_loader(eval_ds, tokenizer, eval_batch_size, shuffle=False, seed=0)


# ---- Calibrated plan ----

@dataclass
class Lengths:
    """Padded lengths a cell computes on, and what its data costs outside the loop."""
    train: float                     # mean padded length of a training batch
    dev: float                       # padded length per dev example (evaluation batches)
    train_eval: float                # padded length per train-subset example
    measured: bool                   # from the cell's own tokenized data (False: the FLOP model's rule)
    train_batches: list[float] = dataclasses.field(default_factory=list)   # sorted padded lengths of batches
    dev_lengths: list[int] = dataclasses.field(default_factory=list)       # dev examples' lengths, in order
    read_seconds: float = 0.0        # every cell: its tokenizer, and its splits from the tokenized cache
    tokenize_seconds: float = 0.0    # tokenizing them (a teacher does it for its cells)


@dataclass
class Probe:
    step_seconds: dict[str, float]   # phase name -> seconds per step
    event_seconds: float             # one pruning event
    eval_token_seconds: float        # evaluation, per padded token
    outside_seconds: float = 0.0     # recipe build, export, checkpoint save and load, reports, manifest


def cell_seconds(plan: CellPlan, probe: Probe, lengths: Lengths) -> dict[str, float]:
    """A cell's (or teacher's) seconds from measured unit costs: the extrapolation `plan --calibrate` makes."""
    parts = {"steps": sum(n * probe.step_seconds[name] for name, n, _ in plan.phases),
             "events": plan.events * probe.event_seconds,
             "evaluation": plan.evaluations * (plan.dev_n * lengths.dev + plan.train_eval_n * lengths.train_eval)
             * probe.eval_token_seconds,
             "outside": probe.outside_seconds + lengths.read_seconds
             + (lengths.tokenize_seconds if plan.tokenizes else 0.0)}
    return {**parts, "total": sum(parts.values())}


def batch_lengths(lengths: list[int], batch_size: int, draws: int = 256, seed: int = 0) -> list[float]:
    """Padded lengths of shuffled batches (the longest example of each), sorted: a sample of `draws` batches."""
    if len(lengths) <= batch_size:
        return [float(max(lengths))]
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor(lengths, dtype=torch.float)
    return sorted(float(t[torch.randperm(len(t), generator=g)[:batch_size]].max()) for _ in range(draws))


def sequential_length(lengths: list[int], batch_size: int) -> float:
    """Padded length per example over consecutive batches (an evaluation's loader does not shuffle)."""
    chunks = [lengths[i:i + batch_size] for i in range(0, len(lengths), batch_size)]
    return sum(max(c) * len(c) for c in chunks) / len(lengths)


def _cell_data(cell_cfg, clock, cache_dir: Path):
    """(the cell's TaskData, seconds a cell spends on its tokenizer and cached splits, seconds to tokenize them), or
    None when the data is not local (the hub: calibrating downloads nothing)."""
    from harness import data, models
    from harness.errors import UserError
    from harness.run import TaskData
    if data.resolve_source(cell_cfg.glue_dir) == data.HUB:
        return None
    task = get_task(cell_cfg.task)

    def setup():
        try:
            tokenizer = models.load_tokenizer(cell_cfg.model)
        except UserError:      # not cached offline: bert-base-uncased's vocabulary, packaged
            tokenizer = models.load_tokenizer("tiny")
        return TaskData(cell_cfg, task, tokenizer, cache_dir)
    t0 = clock()
    setup()                    # reads and tokenizes, into a scratch cache
    first = clock() - t0
    t0 = clock()
    td = setup()               # what every cell then does: the tokenized cache
    again = clock() - t0
    return td, again, max(0.0, first - again)


def cell_lengths(cell_cfg, plan: CellPlan, cache: dict, cache_dir: Path, clock=time.perf_counter,
                 limit: int = 4096) -> Lengths:
    """`cache` holds each distinct data set's TaskData (tokenized into `cache_dir`, a scratch directory)."""
    from harness.errors import UserError
    task = get_task(cell_cfg.task)
    key = json.dumps([task.name, cell_cfg.glue_dir, cell_cfg.model, cell_cfg.max_seq_length, cell_cfg.seed,
                      cell_cfg.max_train_examples, cell_cfg.max_eval_examples])
    if key not in cache:
        try:
            cache[key] = _cell_data(cell_cfg, clock, cache_dir)
        except (UserError, OSError):
            cache[key] = None
    max_len = cell_cfg.max_seq_length
    if cache[key] is None:
        rule = _padded_length(cell_cfg, task)
        return Lengths(_padded_length(cell_cfg, task, plan.pad), rule, rule, False)
    td, read, tokenize = cache[key]
    sample = td.train.shuffle(seed=0).select(range(min(limit, len(td.train))))
    train = [len(x) for x in sample["input_ids"]]
    dev = [len(x) for x in td.dev["input_ids"]]
    train_eval = [len(x) for x in td.train.select(range(max(1, plan.train_eval_n)))["input_ids"]]
    batches = [float(max_len)] if plan.pad else batch_lengths(train, cell_cfg.batch_size)
    padded = cell_cfg.pad_to_max_length   # evaluation pads only when the run pads everything
    return Lengths(sum(batches) / len(batches),
                   max_len if padded else sequential_length(dev, cell_cfg.eval_batch_size),
                   max_len if padded else sequential_length(train_eval, cell_cfg.eval_batch_size),
                   True, batches, [max_len] * len(dev) if padded else dev, read, tokenize)


def _probe_examples(lengths: Lengths, batch_size: int, eval_batch_size: int, warmup: int, steps: int,
                    task: Task, vocab_size: int):
    """Training examples in batch order, batch i padded to the i-th of `steps` evenly spaced quantiles of the cell's
    batch lengths (warm-up batches: the median), and evaluation examples at the dev set's first lengths."""
    if lengths.train_batches:
        q = lengths.train_batches
        pick = [q[len(q) // 2]] * warmup + [q[min(len(q) - 1, (2 * i + 1) * len(q) // (2 * steps))]
                                            for i in range(steps)]
    else:
        pick = [lengths.train] * (warmup + steps)
    train = [round(x) for x in pick for _ in range(batch_size)]
    dev = (lengths.dev_lengths or [round(lengths.dev)] * 2 * eval_batch_size)[:2 * eval_batch_size]
    return random_examples(train, task, vocab_size), random_examples(dev, task, vocab_size, seed=1), \
        sum(max(c) * len(c) for c in (dev[i:i + eval_batch_size] for i in range(0, len(dev), eval_batch_size)))


def measure_probe(cell_cfg, plan: CellPlan, lengths: Lengths, device: torch.device, *, teacher: bool,
                  warmup: int, steps: int, clock: Callable[[], float] = time.perf_counter) -> Probe:
    task = get_task(cell_cfg.task)
    torch.manual_seed(cell_cfg.seed)
    model = random_model(cell_cfg.model, task)
    t0 = clock()
    if teacher:
        recipe = teacher_recipe(model, task, plan.steps, cell_cfg.teacher_lr)
    else:
        recipe = build_recipe(cell_cfg.method, cell_cfg.settings, model, task,
                              max(1, plan.train_n // cell_cfg.batch_size), cell_cfg.sparsity, cell_cfg.seed)
    build = clock() - t0
    train_ds, eval_ds, eval_tokens = _probe_examples(lengths, cell_cfg.batch_size, cell_cfg.eval_batch_size, warmup,
                                                     steps, task, model.config.vocab_size)
    make_loader, eval_loader = loaders(train_ds, eval_ds, cell_cfg.batch_size, cell_cfg.eval_batch_size,
                                       shuffle=False)
    watches = probe_phases(recipe, task, make_loader, eval_loader, device, warmup=warmup, steps=steps,
                           precision=cell_cfg.precision, clock=clock, seed=cell_cfg.seed)
    precision = resolve_precision(cell_cfg.precision, recipe.precision, device)
    recipe.to(device)
    evaluation = timed(lambda: evaluate(recipe.model, eval_loader, task, device, precision), device, clock)
    event = 0.0
    if recipe.pruner is not None and plan.events:
        event = timed(lambda: recipe.pruner.prune_to(recipe.pruner.final_sparsity), device, clock)
    with tempfile.TemporaryDirectory(prefix="spd-bench-calibrate-") as tmp:
        outside = build + timed(lambda: _outside_loop(recipe, Path(tmp), device, cell_cfg.seed), device, clock,
                                reps=1)
    return Probe({name: w.seconds_per_step for name, w in watches}, event, evaluation / eval_tokens, outside)


def _outside_loop(recipe: Recipe, tmp: Path, device: torch.device, seed: int) -> None:
    """What run_cell does around the loop with the model: export, save it with its tokenizer, report its
    sparsity and parameters, write its manifest, and load a checkpoint of its size (the cached teacher). Runs
    last: it may move the model to the CPU."""
    from harness import models, store
    from harness.run import sparsity_report
    final = recipe.export(recipe.model).cpu()
    final.save_pretrained(tmp / "model", safe_serialization=True)
    models.load_tokenizer("tiny").save_pretrained(tmp / "model")
    sparsity_report(final)
    models.count_parameters(final)
    store.write_json(tmp / "manifest.json", store.manifest(device, seed, time.time(), time.time()))
    models.load_checkpoint(tmp / "model")


def _probe_key(cell_cfg, plan: CellPlan, lengths: Lengths, teacher: bool) -> str:
    """Cells with the same key have the same step costs (the sparsity level and the seed change no step)."""
    shape = [cell_cfg.model, get_task(cell_cfg.task).name, cell_cfg.batch_size, round(lengths.train),
             cell_cfg.eval_batch_size, round(lengths.dev), cell_cfg.precision]
    if teacher:
        return json.dumps(["(teacher)", *shape])
    return json.dumps([cell_cfg.method, cell_cfg.settings, [name for name, _, _ in plan.phases], *shape],
                      sort_keys=True)


def calibrate(grid: Grid, device: torch.device, warmup: int = 3, steps: int = 10,
              clock: Callable[[], float] = time.perf_counter) -> dict:
    """Measured seconds of every cell and teacher of `grid` on `device` (see the module's docstring)."""
    started = clock()
    length_cache, probes, rows = {}, {}, []
    scratch = tempfile.TemporaryDirectory(prefix="spd-bench-calibrate-")

    def estimate(cell_cfg, teacher: bool) -> dict:
        plan = cell_plan(cell_cfg, teacher=teacher)
        lengths = cell_lengths(cell_cfg, plan, length_cache, Path(scratch.name), clock)
        as_teacher = teacher or not plan.phases   # a recipe with no steps (dense) evaluates the teacher's model
        key = _probe_key(cell_cfg, plan, lengths, as_teacher)
        if key not in probes:
            probe = probes[key] = measure_probe(cell_cfg, plan if plan.phases else cell_plan(cell_cfg, teacher=True),
                                                lengths, device, teacher=as_teacher, warmup=warmup, steps=steps,
                                                clock=clock)
            rows.extend([cell_cfg.model, cell_cfg.task, "(teacher)" if as_teacher else cell_cfg.method,
                         f"{cell_cfg.batch_size} x {lengths.train:.0f}", name, f"{1000 * seconds:.1f}",
                         f"{1e6 * probe.eval_token_seconds:.2f}", f"{1000 * probe.event_seconds:.0f}",
                         f"{probe.outside_seconds:.2f}"] for name, seconds in probe.step_seconds.items())
        return {**cell_seconds(plan, probes[key], lengths), "measured_lengths": lengths.measured}

    with scratch:
        cells = [(cell, estimate(cell.cfg, False)) for cell in grid.cells]
        teachers = {ident: estimate(cfg, True) for ident, cfg in _teacher_cells(grid).items()}
    return {"cells": cells, "teachers": teachers, "probes": rows, "seconds": clock() - started,
            "warmup": warmup, "steps": steps}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"the CPU ({torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''})"


def plan_calibrated(grid: Grid, out: Path | None, device: torch.device, warmup: int = 3, steps: int = 10) -> str:
    c = calibrate(grid, device, warmup, steps)
    teachers = list(c["teachers"].values())
    total = sum(e["total"] for _, e in c["cells"]) + sum(e["total"] for e in teachers)
    unit, scale = ("h", 3600) if total >= 7200 else ("min", 60)
    groups: dict[tuple, list] = {}
    for cell, est in c["cells"]:
        groups.setdefault((cell.cfg.method, f"{cell.cfg.sparsity:g}"), []).append(est)
    groups[("(teachers)", "-")] = teachers
    rows = [[method, sparsity, len(ests), *(f"{sum(e[k] for e in ests) / scale:.2f}"
                                          for k in ("steps", "evaluation", "events", "outside", "total"))]
            for (method, sparsity), ests in groups.items()]
    measured = all(e["measured_lengths"] for _, e in c["cells"])
    where = device_name(device)
    return "\n".join([
        _grid_header(grid, out, len(teachers)),
        f"calibrated on {where}: {len(c['probes'])} probe phases, {c['warmup']} warm-up + {c['steps']} timed steps "
        f"each through the training loop, random batches of each task's padded length ({c['seconds']:.0f} s)",
        tabulate(c["probes"], headers=["model", "task", "method", "batch", "phase", "ms/step", "eval µs/token",
                                       "event ms", "outside loop s"], disable_numparse=True),
        "",
        tabulate(rows, headers=["method", "sparsity", "cells", f"steps {unit}", f"evaluation {unit}",
                                f"pruning {unit}", f"outside loop {unit}", f"total {unit}"], disable_numparse=True),
        f"total: {total / 3600:.2f} hours ({total / 60:.1f} min) on {where} for the whole grid, one cell at a time; "
        f"padded lengths " + ("measured from the data's tokens" if measured else "from the FLOP model's rule (no "
                              "local data: reading and tokenizing it not counted)") + " (harness/cost.py)"])
