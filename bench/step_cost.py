"""Every method's training step on the CPU, through the real loop, and where its time goes.

Each recipe is built as the harness builds it (bench.common.recipe: default settings, RTE's stage lengths, 90 %
sparsity) on the same pre-trained model; `teacher` is the teacher's fine-tuning (every parameter, task loss): the
plain step. Each phase runs --warmup + --steps steps of harness.train.train on random batches of --batch x --seq
tokens (harness.cost.probe_phases: the phase's own grafting probabilities, sampled across it; pruning events left
out and timed on their own). --rounds rounds with the recipes interleaved, the fastest round kept: other jobs on a
shared machine slow a round, never speed it up.

The part columns are seconds per step between the loop's `Hooks.lap` boundaries (`teacher`: the teacher's forward
for KD; `optimizer`: clip, AdamW, scheduler, zero_grad; `pruner`: mask re-application; `bookkeeping`: finiteness
check, progress bar, hooks).

    .venv/bin/python bench/step_cost.py [--quick] [--threads N] [--rounds R]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (bench_parser, builtin_methods, machine, publish, random_loaders, recipe,  # noqa: E402
                          section_header)

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from harness import cost, models  # noqa: E402
from harness.tasks import get_task  # noqa: E402

PARTS = ("batch", "draw", "teacher", "student", "loss", "backward", "optimizer", "pruner", "bookkeeping")


def variants(pretrained, task, spe: int) -> list[tuple[str, object, list[int] | None]]:
    """(label, recipe, phases to time): the teacher's fine-tuning, every method, and SPD's stage 3 (p = 1)."""
    out = [(name, recipe(name, pretrained, task, spe), None) for name in ["teacher", *builtin_methods()]]
    spd = recipe("spd", pretrained, task, spe)
    spd.grafting = lambda t: 1.0
    return out + [("spd, p = 1 (stage 3)", spd, [len(spd.phases) - 1])]


def main(argv=None) -> int:
    ap = bench_parser(__doc__, quick="tiny model, batch 8 x 32, 1 + 1 steps, one round, one thread, no docs update",
                      batch_shape=True)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per phase (default 3)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default %(default)s)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.seq, args.steps, args.rounds, args.threads = "tiny", 8, 32, 1, 1, 1
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    m = machine()
    task, device = get_task(args.task), torch.device("cpu")
    pretrained = models.load_pretrained(args.model, task, 42)
    spe = cost.GLUE_SIZES["rte"][0] // args.batch
    make_loader, dev = random_loaders(task, pretrained.config.vocab_size, args.batch, args.seq,
                                      args.warmup + args.steps)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    best: dict[tuple[str, str], cost.Stopwatch] = {}
    for r in range(args.rounds):
        for label, rec, only in variants(pretrained, task, spe):
            for phase, watch in cost.probe_phases(rec, task, make_loader, dev, device, warmup=args.warmup,
                                                  steps=args.steps, only=only, clock=clock):
                if (label, phase) not in best or watch.seconds_per_step < best[label, phase].seconds_per_step:
                    best[label, phase] = watch
                print(f"round {r + 1}: {label} / {phase}: {watch.seconds_per_step:.3f} s/step", flush=True)
    spd = recipe("spd", pretrained, task, spe)
    event = cost.timed(lambda: spd.pruner.prune_to(0.9), device, clock, reps=3)
    apply = cost.timed(spd.pruner.apply, device, clock, reps=5)
    torch.set_num_threads(threads)

    base = best["teacher", "finetune"].seconds_per_step
    rows = [[label, phase, f"{w.seconds_per_step:.3f}", f"{w.seconds_per_step / base:.2f}x",
             *(f"{w.per_step().get(part, 0.0):.3f}" for part in PARTS)] for (label, phase), w in best.items()]
    table = tabulate(rows, headers=["recipe", "phase", "s/step", "vs teacher fine-tuning", *PARTS],
                     tablefmt="github", disable_numparse=True)
    event_line = (f"A pruning event (`prune_to`: top-k of all {len(spd.pruner.weights)} student matrices) takes "
                  f"{event:.3f} s (12 a run); the mask re-application `pruner.step` makes after every step "
                  f"{1000 * apply:.1f} ms.")
    print(table, event_line, sep="\n\n")
    body = "\n".join([
        section_header("Step cost of every method (CPU)", m, __doc__),
        f"`{args.model}` ({sum(p.numel() for p in pretrained.parameters()) / 1e6:.1f}M parameters), batches of "
        f"{args.batch} x {args.seq}, task head {args.task}, {args.threads} torch thread(s), "
        f"{'process CPU' if args.clock == 'cpu' else 'wall'} time.",
        "",
        table,
        "",
        event_line,
    ])
    publish("step_cost", body, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
