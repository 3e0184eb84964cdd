"""Peak memory (CPU RSS) of training each method: dense fine-tuning, spd, sparse-kd, sparse-progressive,
sparse-ft, theseus, on minilm at batch 32 x 128 tokens.

One fresh subprocess per method, so peaks never mix. In it: the pre-trained model is loaded as the teacher,
the method's recipe is built as the harness builds it (dense fine-tuning: the teacher's own recipe, every
parameter trained on the task loss), and harness.train.train runs one of its phases (the first; Theseus also
its compact phase) for 2 steps on random token ids (harness.cost.probe_phases; the first step allocates AdamW's
state, the second is a steady step), then the phase-end evaluation on one small dev batch. Grafted recipes run
at their worst draw for memory: SPD and Sparse + Progressive with every student module in the path (p = 1,
stage 3), Theseus with its first successor drawn and the predecessors after it (a `Hooks.lap` at 'draw' sets
it: activations of 5 layers are kept for the backward).

'RSS before training' is after imports, model load and the recipe's surgery. The peak is the kernel's high-water
mark (/proc/self/status VmHWM, reset through /proc/self/clear_refs after setup where the kernel allows it; else
getrusage's ru_maxrss; psutil is not installed, and tracemalloc does not see torch's allocations), so it includes
the activations kept for the backward pass, gradients and AdamW's two moments of the trainable set.

    .venv/bin/python bench/memory.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, bench_parser, machine, section_header, publish  # noqa: E402

# name -> (method, phase index, how the slots are drawn). Grafted recipes are measured at their worst draw:
# every module that trains is in the path and everything after it keeps activations for the backward pass.
VARIANTS = {
    "dense-ft": ("dense-ft", 0, "none"),                # the teacher's fine-tuning: every parameter
    "spd": ("spd", 0, "p=1"),                           # stage 3: every student module in the path
    "sparse-kd": ("sparse-kd", 0, "none"),              # no grafting: p = 1 always
    "sparse-progressive": ("sparse-progressive", 0, "p=1"),
    "sparse-ft": ("sparse-ft", 0, "none"),
    "theseus": ("theseus", 0, "first"),                 # replacing: successor 1 drawn, predecessors after it
    "theseus-compact": ("theseus", 1, "none"),          # compact fine-tuning: 3 layers, every parameter
}
# Theseus's two-phase recipe, so both of its shapes (replacing, compact) are measured; the official one-run
# recipe's step is the replacing phase's.
SETTINGS = {"theseus": {"recipe": "two-phase"}}
DRAWS = {"none": "-", "p=1": "all students", "first": "1st successor + predecessors"}


def status_kb(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_kb() -> int:
    import resource
    hwm = status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(variant: str, model_name: str, task_name: str, batch: int, seq: int, steps: int) -> dict:
    """Runs in the subprocess: one method's recipe, `steps` steps of the loop, peak RSS."""
    import dataclasses

    import torch

    from bench.common import random_loaders
    from harness import cost, models
    from harness.tasks import get_task
    from harness.train import Hooks
    from spd import grafting

    rss_start = status_kb("VmRSS")
    task = get_task(task_name)
    teacher = models.load_pretrained(model_name, task, 42)
    method_name, index, draw = VARIANTS[variant]
    recipe = (cost.teacher_recipe(teacher, task, steps, 3e-5) if method_name == "dense-ft"
              else cost.build_recipe(method_name, SETTINGS.get(method_name, {}), teacher, task, 2490 // batch, 0.9, 42))
    phase = recipe.phases[index]
    if phase.before is not None:    # Theseus's compact phase: its surgery before the peak is reset
        recipe.model = phase.before(recipe.model)
        recipe.phases[index] = phase = dataclasses.replace(phase, before=None)
    model, extra = recipe.model, Hooks()
    if draw == "p=1":
        recipe.grafting = lambda t: 1.0
    elif draw == "first":           # after the loop's draw: successor 1 in the path, the predecessors after it
        extra.lap = lambda name: name == "draw" and grafting.use_students(
            model, [i == 0 for i in range(len(grafting.slots(model)))])
    make_loader, dev = random_loaders(task, teacher.config.vocab_size, batch, seq, steps)
    rss_before = status_kb("VmRSS")
    resettable = reset_peak()
    peak_setup = peak_kb()
    t0 = time.perf_counter()
    cost.probe_phases(recipe, task, make_loader, dev, torch.device("cpu"), warmup=1, steps=steps - 1,
                      only=[index], extra=extra)
    seconds = time.perf_counter() - t0
    return {"method": variant, "draw": DRAWS[draw], "rss_start_kb": rss_start, "rss_before_kb": rss_before,
            "peak_kb": peak_kb(), "peak_setup_kb": peak_setup, "peak_reset": resettable,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for _, p in phase.trainable(model)),
            "loss": "kd" if recipe.loss.needs_teacher else "task", "phase": phase.name, "seconds": seconds}


def main(argv=None) -> int:
    ap = bench_parser(__doc__, quick="tiny model, batch 8 x 64, theseus only (its draw set by a hook), no docs",
                      batch_shape=True)
    ap.add_argument("--steps", type=int, default=2, help="steps of the phase (at least 2: warm-up + steady)")
    ap.add_argument("--methods", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.seq, args.methods = "tiny", 8, 64, "theseus"
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.model, args.task, args.batch, args.seq, args.steps)))
        return 0

    from tabulate import tabulate
    m = machine()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **({"OMP_NUM_THREADS": "1"} if args.quick else {})}
    results = []
    for method in args.methods.split(","):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--model", args.model,
               "--task", args.task, "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"{method}: subprocess failed ({proc.returncode})")
        r = json.loads(lines[-1][len("RESULT "):])
        results.append(r)
        print(f"{method}: peak {r['peak_kb'] / 1024:.0f} MiB ({r['seconds']:.0f}s)", flush=True)

    mib = lambda kb: f"{kb / 1024:.0f}"  # noqa: E731
    base = next((r for r in results if r["method"] == "dense-ft"), results[0])
    rows = [[r["method"], r["phase"], r["draw"], r["loss"], f"{r['params'] / 1e6:.1f}M", f"{r['trainable'] / 1e6:.1f}M",
             mib(r["rss_before_kb"]), mib(r["peak_kb"]), mib(r["peak_kb"] - r["rss_before_kb"]),
             f"{r['peak_kb'] / base['peak_kb']:.2f}x"] for r in results]
    headers = ["method", "phase measured", "grafting draw", "loss", "params in model", "trainable",
               "RSS before training MiB", "peak RSS MiB", "peak - before MiB", f"peak vs {base['method']}"]
    table = tabulate(rows, headers=headers, tablefmt="github")
    print(table)
    body = "\n".join([
        section_header("Peak memory of a training step, per method (CPU)", m, __doc__),
        f"`{args.model}`, batch {args.batch} x {args.seq} random token ids, {args.steps} steps"
        + ("" if all(r["peak_reset"] for r in results) else "; VmHWM could not be reset after setup") + ".",
        "",
        table,
    ])
    publish("memory", body, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
