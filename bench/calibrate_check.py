"""How true `spd-bench plan --calibrate` is: its estimate for a grid against the cost of running that grid.

The grid is calibrated (harness.cost.calibrate: every probe's phases timed through the loop, then extrapolated to
every cell and teacher) and then run (harness.grid.run_grid) in this process, one after the other, both timed in
process CPU time at one torch thread: on a shared machine wall time moves with the other jobs and CPU time does
not, and on an idle core the two are the same. Exits 1 when the estimate is off by more than 25 %.

    .venv/bin/python bench/calibrate_check.py [CONFIG] [--quick] [--warmup N] [--steps N]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, bench_parser, machine, publish, section_header  # noqa: E402

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from harness import cost  # noqa: E402
from harness.grid import run_grid  # noqa: E402
from harness.gridconfig import load_grid  # noqa: E402

QUICK_GRID = """
name: calibrate-quick
model: tiny
glue_dir: samples
seeds: [1]
tables: []
tasks: [rte]
run: {max_train_examples: 192, teacher_epochs: 3, teacher_lr: 2.0e-3, train_eval_examples: 64, eval_steps: 9}
methods:
  - {method: spd, sparsity: 0.5, settings: {prune_epochs: 3, graft_epochs: 2, finetune_epochs: 2, lr: 1.0e-3}}
  - {method: sparse-ft, sparsity: 0.5, settings: {prune_epochs: 3, graft_epochs: 2, finetune_epochs: 2, lr: 1.0e-3}}
"""
BOUND = 0.25


def main(argv=None) -> int:
    ap = bench_parser(__doc__, quick="a two-cell tiny grid (spd, sparse-ft on RTE samples), no docs update")
    ap.add_argument("config", nargs="?", default=str(REPO / "configs" / "smoke.yaml"))
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per probe phase (default 4)")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    m = machine()
    with tempfile.TemporaryDirectory(prefix="spd-bench-calibrate-check-") as tmp:
        config = Path(tmp) / "quick.yaml" if args.quick else Path(args.config)
        if args.quick:
            config.write_text(QUICK_GRID)
        grid = load_grid(config)
        c = cost.calibrate(grid, torch.device("cpu"), args.warmup, args.steps, clock=time.process_time)
        t0, w0 = time.process_time(), time.perf_counter()
        summary = run_grid(grid, Path(tmp) / "out", progress=False)
        measured, wall = time.process_time() - t0, time.perf_counter() - w0
    torch.set_num_threads(threads)
    estimates = [e for _, e in c["cells"]] + list(c["teachers"].values())
    estimate = sum(e["total"] for e in estimates)
    ratio = estimate / measured
    parts = {k: sum(e[k] for e in estimates) for k in ("steps", "events", "evaluation", "outside")}
    table = tabulate([[grid.name, len(grid.cells), len(c["teachers"]), len(c["probes"]), f"{c['seconds']:.0f}",
                       f"{estimate:.1f}", f"{measured:.1f}", f"{ratio:.2f}", f"{wall:.0f}"]],
                     headers=["grid", "cells", "teachers", "probe phases", "calibration s", "estimate s",
                              "measured s", "estimate / measured", "run wall s"], tablefmt="github",
                     disable_numparse=True)
    verdict = "within" if abs(ratio - 1) <= BOUND and not summary["failed"] else "OUTSIDE"
    made_of = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
    print(table, f"\n{verdict} +-{100 * BOUND:.0f} %; estimate: {made_of}")
    body = "\n".join([
        section_header("plan --calibrate against running the grid (CPU)", m),
        f"`{config.name if args.quick else args.config}` calibrated with {args.warmup} warm-up + {args.steps} timed "
        f"steps per probe phase, then run with `run_grid`, in one process; estimate and run in process CPU time at "
        f"one torch thread (wall time of the run, on the shared machine, in the last column).",
        "",
        table,
        "",
        f"The estimate is **{ratio:.2f}x** the measured cost, {verdict} +-{100 * BOUND:.0f} %. It is made of "
        f"{made_of}.",
    ])
    publish("calibrate_check", body, args)
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    sys.exit(main())
