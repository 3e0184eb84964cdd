"""Harness overhead: the wall time of one real cell (harness.run.run_cell) against the sum of its training
steps (manifest.json: step_seconds), and where the rest goes.

The cell runs in this process with timers wrapped around the harness's own functions (monkeypatched here,
nothing in the harness changes): data loading + tokenizing (TaskData), the cached-teacher lookup and load,
building the recipe (model surgery, copies), dev/train-subset evaluation (harness.train.evaluate), exporting
and saving the checkpoint, the sparsity report. The teacher is fine-tuned first, outside the timed cell
(prepare_teacher: once per task and seed, shared by every method of a grid). The same cell is then run a
second time with eval_steps so large that only the end of each phase evaluates, to show what the default
~20 evaluations per run cost.

    .venv/bin/python bench/overhead.py [--quick]      # --quick: the tiny model on the built-in samples
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, glue_dir, machine, section_header, publish  # noqa: E402

from tabulate import tabulate  # noqa: E402
from transformers import PreTrainedModel, PreTrainedTokenizerBase  # noqa: E402

import harness.registry  # noqa: E402
import harness.run  # noqa: E402
import harness.train  # noqa: E402
from harness import models, store  # noqa: E402
from harness.run import RunConfig, prepare_teacher, run_cell  # noqa: E402

SPENT: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed(owner, attr: str, label: str):
    """Wrap owner.attr so its seconds add up under `label` (nested timed calls are not double counted)."""
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        if timed.depth:
            return original(*args, **kwargs)
        timed.depth += 1
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - t0
            CALLS[label] += 1
            timed.depth -= 1
    setattr(owner, attr, wrapper)
    return original


timed.depth = 0


@contextlib.contextmanager
def instrumented():
    patches = [
        (harness.run.TaskData, "__init__", "data: load + tokenize"),
        (harness.run, "ensure_teacher", "teacher: cache lookup"),
        (harness.run.models, "load_checkpoint", "teacher: load checkpoint"),
        (harness.run.models, "load_tokenizer", "tokenizer load"),
        (harness.train, "evaluate", "evaluation (dev + train subset)"),
        (PreTrainedModel, "save_pretrained", "checkpoint: save model"),
        (PreTrainedTokenizerBase, "save_pretrained", "checkpoint: save tokenizer"),
        (harness.run, "sparsity_report", "sparsity report"),
        (harness.run.models, "count_parameters", "parameter count"),
    ]
    originals = [(owner, attr, timed(owner, attr, label)) for owner, attr, label in patches]
    # recipe building and export are attributes of objects made during the run: wrap the method registry
    original_get = harness.registry.get_method

    def get_method(name):
        method = original_get(name)
        build = method.build

        def build_timed(settings, ctx):
            t0 = time.perf_counter()
            recipe = build(settings, ctx)
            SPENT["recipe: build (surgery, copies)"] += time.perf_counter() - t0
            export = recipe.export

            def export_timed(model):
                t1 = time.perf_counter()
                try:
                    return export(model)
                finally:
                    SPENT["checkpoint: export student"] += time.perf_counter() - t1
            recipe.export = export_timed
            return recipe
        return type(method)(**{**method.__dict__, "build": build_timed})
    harness.run.get_method = get_method
    try:
        yield
    finally:
        harness.run.get_method = original_get
        for owner, attr, original in originals:
            setattr(owner, attr, original)


def run_once(cfg: RunConfig, out: Path, cache: Path) -> dict:
    SPENT.clear()
    CALLS.clear()
    with instrumented():
        t0 = time.perf_counter()
        metrics = run_cell(cfg, out, cache_dir=cache, progress=False)
        wall = time.perf_counter() - t0
    man = store.read_json(out / "manifest.json")
    cfg_json = store.read_json(out / "config.json")
    history = sum(1 for _ in open(out / "history.jsonl"))
    return {"wall": wall, "steps_s": man["step_seconds"], "train_s": man["train_seconds"],
            "spent": dict(SPENT), "calls": dict(CALLS), "steps": cfg_json["total_steps"], "evals": history,
            "score": metrics["final"]["dev"]["score"], "phases": phase_lengths(cfg_json)}


def phase_lengths(cfg_json: dict) -> list[int]:
    ends = (cfg_json.get("resolved") or {}).get("stage_ends")
    if not ends:
        return [cfg_json["total_steps"]]
    return [p for p in (ends[0], ends[-1] - ends[0]) if p > 0]   # the two LR phases of the SPD family


def n_evaluations(phase_steps: list[int], eval_steps: int = 0) -> int:
    """How many evaluations harness/train.py makes: every eval_steps (0: ceil(total / 20)) except at a phase's
    last step, plus one at the end of every phase."""
    total = sum(phase_steps)
    every = eval_steps or max(1, -(-total // 20))
    ends = {sum(phase_steps[:i + 1]) for i in range(len(phase_steps))}
    return sum(1 for s in range(1, total + 1) if s % every == 0 and s not in ends) + len(phase_steps)


def breakdown(r: dict) -> list[list]:
    wall = r["wall"]
    rows = [["training steps (manifest step_seconds)", f"{r['steps_s']:.1f}", f"{100 * r['steps_s'] / wall:.1f}%"]]
    accounted = r["steps_s"]
    for label, s in sorted(r["spent"].items(), key=lambda kv: -kv[1]):
        calls = r["calls"].get(label)
        name = label + (f" ({calls} calls)" if calls and calls > 1 else "")
        rows.append([name, f"{s:.2f}", f"{100 * s / wall:.1f}%"])
        accounted += s
    rows.append(["rest (loop bookkeeping, history, writes)", f"{wall - accounted:.1f}",
                 f"{100 * (wall - accounted) / wall:.1f}%"])
    rows.append(["**cell wall time**", f"{wall:.1f}", "100%"])
    return rows


def main(argv=None) -> int:
    ap = bench_parser(__doc__, quick="tiny model on the built-in samples, no docs update")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--task", default="rte")
    ap.add_argument("--method", default="spd")
    ap.add_argument("--max-train-examples", type=int, default=256)
    args = ap.parse_args(argv)
    m = machine()
    source = "samples" if args.quick else str(glue_dir())
    model = "tiny" if args.quick else args.model
    settings = {"prune_epochs": 2, "graft_epochs": 1, "finetune_epochs": 1}
    base = dict(task=args.task, method=args.method, model=model, sparsity=0.9, seed=42, glue_dir=source,
                max_train_examples=args.max_train_examples, train_eval_examples=256, teacher_epochs=1,
                teacher_lr=5e-5, device="cpu", settings=settings)
    with tempfile.TemporaryDirectory(prefix="spd-bench-overhead-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        t0 = time.perf_counter()
        # eval_steps is not part of the teacher's cache key: evaluate it only at the end, it is not timed here
        prepare_teacher(RunConfig(**base, eval_steps=10**6), cache_dir=cache, progress=False)
        teacher_s = time.perf_counter() - t0
        print(f"teacher fine-tuned in {teacher_s:.1f}s (outside the timed cells)", flush=True)
        default = run_once(RunConfig(**base), tmp / "default", cache)
        print(f"cell with default eval_steps: {default['wall']:.1f}s", flush=True)
        few = run_once(RunConfig(**base, eval_steps=10**6), tmp / "few-evals", cache)
        print(f"cell with eval_steps=1e6: {few['wall']:.1f}s", flush=True)

    def overhead(r):
        return (r["wall"] - r["steps_s"]) / r["wall"]

    table = tabulate(breakdown(default), headers=["part of the cell (default eval_steps)", "seconds", "share"],
                     tablefmt="github")
    eval_each = default["spent"].get("evaluation (dev + train subset)", 0.0) / max(1, default["evals"])
    step_each = default["steps_s"] / default["steps"]
    compare = tabulate([
        ["default (0: ~20 per run)", default["evals"], f"{default['wall']:.1f}", f"{default['steps_s']:.1f}",
         f"{100 * overhead(default):.0f}%"],
        ["1000000 (phase ends only)", few["evals"], f"{few['wall']:.1f}", f"{few['steps_s']:.1f}",
         f"{100 * overhead(few):.0f}%"],
    ], headers=["eval_steps", "evaluations", "cell wall s", "step s", "overhead (wall - steps) / wall"],
        tablefmt="github")
    # The evaluation cost is fixed per evaluation (dev set + train subset) and a run makes ~20 + #phases of
    # them whatever its length (default eval_steps), so its share shrinks as runs get longer.
    projections = []
    spe = 2490 // 32   # RTE's full train set
    for name, phases, every in [
            ("this cell", default["phases"], 0),
            ("RTE full train set, 3 epochs, default eval_steps", [round(1.5 * spe), round(1.5 * spe)], 0),
            ("RTE full train set, 3 epochs, eval_steps 39 (configs/mini_real.yaml)",
             [round(1.5 * spe), round(1.5 * spe)], 39),
            ("RTE full train set, 60 epochs (paper), default eval_steps", [30 * spe, 30 * spe], 0)]:
        steps, evals = sum(phases), n_evaluations(phases, every)
        projections.append([name, steps, evals,
                            f"{100 * evals * eval_each / (evals * eval_each + steps * step_each):.0f}%"])
    proj = tabulate(projections, headers=["run", "steps", "evaluations", "evaluation share of (steps + evals)"],
                    tablefmt="github")
    print(table, compare, proj, sep="\n\n")
    verdict = "under" if overhead(default) < 0.10 else "over"
    body = "\n".join([
        section_header("Harness overhead of one cell", m),
        f"One real cell, `{args.method}` on {args.task.upper()} with `{model}` "
        f"({'built-in samples' if args.quick else 'real data from ../shared/glue'}), max_train_examples="
        f"{args.max_train_examples} (batch 32: {default['steps']} steps with prune/graft/finetune epochs 2/1/1), "
        f"train_eval_examples 256, eval batch 128, run with `harness.run.run_cell` in this process; the teacher "
        f"(1 epoch) was fine-tuned beforehand in {teacher_s:.0f}s and is not part of the cell (as in a grid, it also "
        f"left the tokenized splits in the cache the cell reads). Timers are "
        f"wrapped around the harness's functions from outside (data, teacher load, recipe build, evaluation, "
        f"checkpoint writes); the steps are the loop's own `step_seconds`, which include fetching and collating "
        f"each batch and the teacher's forward.",
        "",
        table,
        "",
        f"Overhead (wall - steps) / wall = **{100 * overhead(default):.0f}%**, {verdict} the 10% target. "
        f"One evaluation (dev {'set' if args.quick else '277 examples'} + 256 train examples, no grad) costs "
        f"{eval_each:.1f}s against {step_each:.2f}s per training step. With evaluation only at phase ends:",
        "",
        compare,
        "",
        "Evaluation is what the overhead is, and its cost per run is fixed (about 20 evaluations plus one per "
        "phase, each a pass over the dev set and the train subset), so its share falls as runs get longer. "
        "Projected from the costs measured above:",
        "",
        proj,
    ])
    publish("overhead", body, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
