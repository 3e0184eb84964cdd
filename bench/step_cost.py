"""The cost of one SPD training step against one plain fine-tuning step of the same model and batch.

Both steps are the exact work harness/train.py does per batch (its own helpers are called where it has them):

  plain   BertForSequenceClassification (eager attention), forward with labels, backward, clip over all
          parameters, AdamW step over all parameters, LR scheduler step, zero_grad
  spd     the SPD recipe built as the harness builds it (get_method('spd').build(make_settings(...),
          BuildContext(...))): grafting draw, the teacher's forward (train._teacher_outputs: the grafted model
          with every slot on its teacher layers, eval mode, no_grad), the student's forward with attentions
          and hidden states, kd_loss, the finite check, backward, clip, AdamW over the student modules,
          scheduler, zero_grad, pruner.step (mask re-application; no pruning event)

Measured in one process, variants interleaved, medians reported. The target is SPD <= 1.35x plain: a teacher
forward (~1/3 of a plain step) plus the student's forward and backward (~1 plain step, a little less since
embeddings, pooler and classifier are frozen) is about 4/3.

    .venv/bin/python bench/step_cost.py [--quick] [--reps N] [--profile]
"""
from __future__ import annotations

import copy
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, interleave, machine, median, section_header, spread, publish  # noqa: E402

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402
from transformers import get_linear_schedule_with_warmup  # noqa: E402

from harness import models  # noqa: E402
from harness.recipe import BuildContext  # noqa: E402
from harness.registry import get_method, make_settings  # noqa: E402
from harness.tasks import get_task  # noqa: E402
from harness.train import LoopConfig, _optimizer, _set_trainable, _teacher_outputs  # noqa: E402
from spd import grafting  # noqa: E402
from spd.distill import kd_loss  # noqa: E402

PARTS_SPD = ("draw", "teacher fwd", "student fwd", "kd_loss", "backward", "clip", "adamw+sched", "zero_grad",
             "pruner.step")
PARTS_PLAIN = ("forward", "backward", "clip", "adamw+sched", "zero_grad")


class Timer:
    def __init__(self):
        self.parts: dict[str, list[float]] = {}
        self._t = None
        self._cur: dict[str, float] = {}

    def start(self):
        self._cur = {}
        self._t = time.perf_counter()

    def lap(self, name: str):
        now = time.perf_counter()
        self._cur[name] = self._cur.get(name, 0.0) + now - self._t
        self._t = now

    def commit(self):
        for k, v in self._cur.items():
            self.parts.setdefault(k, []).append(v)


def random_batch(batch: int, seq: int, vocab: int, num_labels: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102     # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, num_labels, (batch,), generator=g)}


class SPDStep:
    """The KD branch of harness/train.py's loop body, on the SPD recipe's first phase."""

    def __init__(self, teacher, task, steps_per_epoch: int, sparsity: float, p: float | None, seed: int = 42):
        method = get_method("spd")
        ctx = BuildContext(teacher=teacher, task=task, steps_per_epoch=steps_per_epoch, sparsity=sparsity, seed=seed)
        torch.manual_seed(seed)
        self.recipe = method.build(make_settings(method, {}), ctx)
        self.model, self.task, self.cfg = self.recipe.model, task, LoopConfig(progress=False)
        phase = self.recipe.phases[0]
        self.params = _set_trainable(self.model, phase.trainable(self.model))
        self.optimizer = _optimizer(self.params, self.cfg, phase.lr)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, 0, 10**6)
        self.generator = torch.Generator().manual_seed(seed)
        self.recipe.pruner.prune_to(sparsity)              # masks as they are after pruning
        # a completed-step count at which no pruning event falls: pruner.step only re-applies the masks
        self.quiet_step = next(k for k in range(10**6, 2 * 10**6) if k not in self.recipe.pruner.schedule)
        self.p = p if p is not None else self.recipe.grafting(0)   # None: the pruning stage's p0
        self.model.train()
        self.timer = Timer()

    def __call__(self, batch):
        t, model = self.timer, self.model
        batch = dict(batch)
        t.start()
        labels = batch.pop("labels")
        grafting.sample_grafting(model, self.p, self.generator)
        draws = [s.use_student for s in grafting.slots(model)]
        t.lap("draw")
        teacher_out = _teacher_outputs(model, batch, torch.device("cpu"))
        grafting.use_students(model, draws)
        t.lap("teacher fwd")
        out = model(**batch, output_attentions=True, output_hidden_states=True)
        t.lap("student fwd")
        loss, parts = kd_loss(out, teacher_out, labels, regression=self.task.is_regression,
                              temperature=self.recipe.kd_temperature, reduction=self.recipe.kd_reduction)
        if not torch.isfinite(loss):
            raise RuntimeError("loss not finite")
        t.lap("kd_loss")
        if loss.requires_grad:
            loss.backward()
            t.lap("backward")
            torch.nn.utils.clip_grad_norm_([p_ for _, p_ in self.params], self.cfg.max_grad_norm)
            t.lap("clip")
            self.optimizer.step()
            self.scheduler.step()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        t.lap("adamw+sched")
        self.optimizer.zero_grad(set_to_none=True)
        t.lap("zero_grad")
        self.recipe.pruner.step(self.quiet_step)
        t.lap("pruner.step")
        loss.item()                                         # the progress bar's postfix
        t.commit()


class PlainStep:
    """The task-loss branch of harness/train.py with every parameter trainable (a teacher's fine-tuning step),
    the loss computed by the model from its labels."""

    def __init__(self, model, lr: float = 3e-5):
        self.model, self.cfg = model, LoopConfig(progress=False)
        self.params = _set_trainable(model, list(model.named_parameters()))
        self.optimizer = _optimizer(self.params, self.cfg, lr)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, 0, 10**6)
        self.model.train()
        self.timer = Timer()

    def __call__(self, batch):
        t = self.timer
        t.start()
        loss = self.model(**batch).loss
        if not torch.isfinite(loss):
            raise RuntimeError("loss not finite")
        t.lap("forward")
        loss.backward()
        t.lap("backward")
        torch.nn.utils.clip_grad_norm_([p for _, p in self.params], self.cfg.max_grad_norm)
        t.lap("clip")
        self.optimizer.step()
        self.scheduler.step()
        t.lap("adamw+sched")
        self.optimizer.zero_grad(set_to_none=True)
        t.lap("zero_grad")
        loss.item()
        t.commit()


def profile(step, batch, label: str, rows: int = 18) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        step(batch)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"### torch.profiler: one {label} step, top ops by self CPU time\n\n```\n{table}\n```"


def parts_table(timer: Timer, parts, total: float) -> list[list]:
    rows = []
    for name in parts:
        if name in timer.parts:
            m = median(timer.parts[name])
            rows.append([name, f"{m:.3f}", f"{100 * m / total:.0f}%"])
    return rows


def measure(steps: dict, batch, reps: int, warmup: int, threads: int) -> dict:
    """Interleaved timings of the variants at `threads` torch threads, with their parts."""
    torch.set_num_threads(threads)
    variants = {name: (lambda s=s: s(batch)) for name, s in steps.items()}
    for s in steps.values():
        s.timer.parts.clear()
    times = interleave(variants, reps, warmup)
    for s in steps.values():         # warm-up steps do not count in the parts either
        s.timer.parts = {k: v[-reps:] for k, v in s.timer.parts.items()}
    base = median(times["plain"])
    r = {"threads": threads, "times": times, "base": base,
         "ratio": median(times["spd p=1"]) / base, "ratio_p0": median(times["spd p=p0"]) / base,
         # ratios per interleaved pair: less sensitive to load drifting during the run
         "pair_ratio": median([a / b for a, b in zip(times["spd p=1"], times["plain"])])}
    rows = [[name, f"{median(ts):.3f}", spread(ts), f"{median(ts) / base:.2f}x"] for name, ts in times.items()]
    r["summary"] = tabulate(rows, headers=["step", "median s", "min-max s", "vs plain"], tablefmt="github")
    spd_parts = parts_table(steps["spd p=1"].timer, PARTS_SPD, median(times["spd p=1"]))
    plain_parts = parts_table(steps["plain"].timer, PARTS_PLAIN, base)
    plain_parts += [None] * (len(spd_parts) - len(plain_parts))
    r["parts"] = tabulate([[*a, *b] if b else [*a, "", "", ""] for a, b in zip(spd_parts, plain_parts)],
                          headers=["spd p=1 part", "median s", "share", "plain part", "median s", "share"],
                          tablefmt="github")
    pruner = steps["spd p=1"].recipe.pruner
    r["event"] = median(interleave({"event": lambda: pruner.prune_to(0.9)}, reps=3, warmup=0)["event"])
    r["apply"] = median(interleave({"apply": pruner.apply}, reps=5, warmup=1)["apply"])
    return r


# (label, method, phase index, fixed grafting p or None for the recipe's schedule from step 0)
# Theseus measured as replacing + compact fine-tuning: its two-phase recipe (the official one is one phase)
TWO_PHASE = {"recipe": "two-phase"}
METHOD_VARIANTS = [
    ("plain fine-tuning (teacher)", "dense-ft", 0, None),
    ("spd, pruning stage (p = p0)", "spd", 0, None),
    ("spd, p = 1 (stage 3)", "spd", 0, 1.0),
    ("sparse-kd", "sparse-kd", 0, None),
    ("sparse-progressive, pruning stage", "sparse-progressive", 0, None),
    ("sparse-progressive, p = 1", "sparse-progressive", 0, 1.0),
    ("sparse-ft", "sparse-ft", 0, None),
    ("theseus, replacing (p = 0.3)", "theseus", 0, None),
    ("theseus, compact fine-tuning", "theseus", 1, None),
]


def method_steps(pretrained, task, batch, steps: int, rounds: int) -> list[list]:
    """CPU seconds per step of every method's recipe through harness.train.train itself (its step_seconds,
    evaluation excluded), on the same batch, at ONE torch thread; methods interleaved, `rounds` rounds, the
    fastest round kept. One thread and CPU time (the loop's clock swapped for time.process_time) make the
    numbers nearly immune to other jobs on the machine, which wall time at 2 threads is not."""
    import dataclasses
    import types

    import harness.train as loop
    from harness.recipe import Phase, Recipe, all_parameters
    from harness.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loop.time = types.SimpleNamespace(perf_counter=time.process_time)

    batches = [batch] * steps
    dev = [{k: v[:4] for k, v in batch.items()}]
    seconds: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, name, phase_index, p in METHOD_VARIANTS:
            teacher = copy.deepcopy(pretrained)
            if name == "dense-ft":
                recipe = Recipe(model=teacher, phases=[Phase("finetune", steps, 3e-5, all_parameters)], loss="task")
            else:
                method = get_method(name)
                ctx = BuildContext(teacher=teacher, task=task, steps_per_epoch=2490 // len(batch["labels"]),
                                   sparsity=0.9 if method.prunes else 0.0, seed=42)
                recipe = method.build(make_settings(method, TWO_PHASE if name == "theseus" else {}), ctx)
                phase = recipe.phases[phase_index]
                if phase.before is not None:     # surgery (Theseus: drop the predecessors) outside the timing
                    recipe.model = phase.before(recipe.model)
                    phase = dataclasses.replace(phase, before=None)
                recipe.phases = [dataclasses.replace(phase, steps=steps)]
                if p is not None:
                    recipe.grafting = lambda t, p=p: p
            torch.manual_seed(0)
            result = train(recipe, task, lambda: iter(batches), dev, torch.device("cpu"),
                           LoopConfig(eval_steps=10**6, progress=False))
            seconds.setdefault(label, []).append(result.step_seconds / steps)
    loop.time = time
    torch.set_num_threads(threads)
    base = min(seconds[METHOD_VARIANTS[0][0]])
    return [[label, f"{min(ts):.3f}", f"{min(ts) / base:.2f}x"] for label, ts in seconds.items()]


def main(argv=None) -> int:
    ap = bench_parser(__doc__, quick="3 steps of each, 1 warm-up, no docs update", batch_shape=True)
    ap.add_argument("--reps", type=int, default=10, help="interleaved steps of each variant (default 10)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", default=str(torch.get_num_threads()),
                    help="comma-separated torch thread counts to measure at (default: torch's, %(default)s)")
    ap.add_argument("--profile", action="store_true", help="also profile one step of each (always when > 1.35x)")
    ap.add_argument("--method-steps", type=int, default=4,
                    help="steps per method in the every-method table (0: skip it; default 4)")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.warmup, args.method_steps = 3, 1, 2
    thread_counts = [int(t) for t in args.threads.split(",")]

    m = machine()
    task = get_task(args.task)
    pretrained = models.load_pretrained(args.model, task, 42)
    cfg = pretrained.config
    batch = random_batch(args.batch, args.seq, cfg.vocab_size, task.num_labels)
    spe = 2490 // args.batch      # RTE's steps per epoch: sets the stage lengths, not the per-step work
    steps = {"plain": PlainStep(copy.deepcopy(pretrained)),
             "spd p=1": SPDStep(copy.deepcopy(pretrained), task, spe, sparsity=0.9, p=1.0),
             "spd p=p0": SPDStep(copy.deepcopy(pretrained), task, spe, sparsity=0.9, p=None)}
    p0 = steps["spd p=p0"].p
    n_matrices = len(steps["spd p=1"].recipe.pruner.weights)
    results, profiles = [], []
    for threads in thread_counts:
        print(f"{args.model} {args.task} batch {args.batch} x {args.seq} tokens, {args.warmup} warm-up + "
              f"{args.reps} interleaved steps each, torch threads {threads}", flush=True)
        r = measure(steps, batch, args.reps, args.warmup, threads)
        results.append(r)
        print(r["summary"])
        print(f"\nSPD / plain: {r['ratio']:.2f}x (median of per-pair ratios {r['pair_ratio']:.2f}x; target <= "
              f"1.35x); pruning-stage draws (p0={p0:g}): {r['ratio_p0']:.2f}x")
        print("\n" + r["parts"])
        print(f"\npruning event (prune_to), median of 3: {r['event']:.3f}s; mask re-application alone, median "
              f"of 5: {r['apply'] * 1000:.1f} ms\n", flush=True)
        if args.profile or r["ratio"] > 1.35:
            for name, label in (("spd p=1", "SPD (p=1)"), ("plain", "plain")):
                profiles.append(profile(steps[name], batch, f"{label}, {threads} threads"))
                print(profiles[-1])

    method_block = []
    if args.method_steps:
        print(f"every method through harness.train.train, {args.method_steps} steps each, 2 rounds, 1 thread, "
              f"CPU time", flush=True)
        table = tabulate(method_steps(pretrained, task, batch, args.method_steps, rounds=2),
                         headers=["recipe (first phase unless named)", "CPU s/step", "vs plain"], tablefmt="github")
        print(table)
        method_block = [
            "### Every method's step, through the real loop (1 torch thread, CPU time)",
            "",
            f"Each recipe built as the harness builds it, its first phase (Theseus also its compact phase) run "
            f"for {args.method_steps} steps by `harness.train.train` on the same batch; seconds per step are the "
            f"loop's own `step_seconds` (evaluation excluded) measured in CPU time at one torch thread (immune "
            f"to other jobs on the machine), the faster of 2 interleaved rounds. The ratios are what "
            f"`configs/mini_real.yaml` is sized with (at 2 threads SPD's ratio is the same, see above).",
            "",
            table,
            "",
        ]

    blocks = []
    for r in results:
        verdict = "within" if r["ratio"] <= 1.35 else "ABOVE"
        blocks += [
            f"### {r['threads']} torch thread{'s' if r['threads'] > 1 else ''}",
            "",
            r["summary"],
            "",
            f"**SPD / plain = {r['ratio']:.2f}x** (median of per-pair ratios {r['pair_ratio']:.2f}x), {verdict} "
            f"the 1.35x target; with the pruning stage's draws {r['ratio_p0']:.2f}x.",
            "",
            "Where the time goes (median seconds per part; timers around each line of the loop body):",
            "",
            r["parts"],
            "",
            f"A pruning event (`prune_to`: top-k of all {n_matrices} student matrices) takes {r['event']:.2f}s and "
            f"happens 12 times a run; the mask re-application that `pruner.step` does after every step takes "
            f"{r['apply'] * 1000:.0f} ms on its own.",
            "",
        ]
    body = "\n".join([
        section_header("Step cost: SPD step vs plain fine-tuning step", m),
        f"Model `{args.model}` ({sum(p.numel() for p in pretrained.parameters()) / 1e6:.1f}M parameters, "
        f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}), one batch of {args.batch} x {args.seq} "
        f"random token ids (no padding), task head {args.task}; {args.warmup} warm-up then {args.reps} steps of "
        f"each variant, interleaved. `plain`: forward with labels, backward, clip, AdamW over all parameters. "
        f"`spd p=1`: the SPD recipe's loop body with every student module in the path (stage 3: the full "
        f"student backward); `spd p=p0`: the pruning stage's draws (p0 = {p0:g}), where some slots run their "
        f"frozen teacher layer instead.",
        "",
        *blocks,
        *method_block,
        *profiles,
    ])
    publish("step_cost", body, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
