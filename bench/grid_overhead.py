"""Harness overhead over a whole finished grid: for every cell, its wall time (manifest.json `seconds`: from
run_cell's start to its last write) against the sum of its training steps (`step_seconds`), and how much of
the difference is evaluation (`train_seconds` - `step_seconds`: the loop's time outside its steps).

bench/overhead.py takes one short cell apart with timers; this reads what a real grid left behind, so the
figure is the one a user of that grid actually paid. Nothing is re-run.

    .venv/bin/python bench/grid_overhead.py OUT [--no-docs]      # OUT: a `spd-bench run` output directory
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, command_line, publish  # noqa: E402

from tabulate import tabulate  # noqa: E402

from harness import store  # noqa: E402
from harness.grid import cell_dir, is_complete, load_out_grid  # noqa: E402
from harness.results import read_history  # noqa: E402

TARGET = 0.10
HEADERS = ["method", "task", "wall min", "steps min", "evaluations", "evaluation", "other (data, build, save)",
           "overhead (wall - steps) / wall"]


def cell_costs(out: Path) -> list[dict]:
    """One row per finished cell that trained (dense cells only evaluate the teacher)."""
    _, cells = load_out_grid(out)
    rows = []
    for cell in cells:
        if not is_complete(out, cell):
            continue
        run = cell_dir(out, cell)
        man = store.read_json(run / "manifest.json")
        if not man.get("step_seconds"):
            continue
        evals = len(read_history(run))
        rows.append({"task": cell.cfg.task, "method": cell.cfg.method, "wall": man["seconds"],
                     "steps": man["step_seconds"], "loop": man["train_seconds"], "evals": evals,
                     "host": man.get("host"), "device": man.get("device"), "packages": man.get("packages")})
    return rows


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def totals(rows: list[dict]) -> tuple[float, float, float]:
    """Summed seconds: wall, training steps, training loop (steps + evaluation)."""
    return tuple(sum(r[k] for r in rows) for k in ("wall", "steps", "loop"))


def cost_row(method: str, task: str, rows: list[dict], evals="") -> list:
    wall, steps, loop = totals(rows)
    return [method, task, f"{wall / 60:.1f}", f"{steps / 60:.1f}", evals,
            share(loop - steps, wall), share(wall - loop, wall), share(wall - steps, wall)]


def main(argv=None) -> int:
    ap = bench_parser(__doc__)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    meta, _ = load_out_grid(args.out)
    rows = cell_costs(args.out)
    if not rows:
        raise SystemExit(f"{args.out}: no finished training cells")
    table = [cost_row(r["method"], r["task"], [r], r["evals"])
             for r in sorted(rows, key=lambda r: (r["method"], r["task"]))]
    for method in sorted({r["method"] for r in rows}):
        table.append(cost_row(f"**{method}**", "all", [r for r in rows if r["method"] == method]))
    table.append(cost_row("**all**", "all", rows))
    wall, steps, loop = totals(rows)
    text = tabulate(table, headers=HEADERS, tablefmt="github", disable_numparse=True)
    total = (wall - steps) / wall
    verdict = "under" if total < TARGET else "over"
    packages = rows[0]["packages"] or {}
    body = "\n".join([
        "## Harness overhead of a whole grid",
        "",
        f"`{command_line()}`",
        "",
        f"- grid: `{meta['name']}` ({len(rows)} trained cells; dense cells only evaluate and are left out)",
        f"- recorded by the cells' manifests: host {rows[0]['host']}, device {rows[0]['device']}, "
        + ", ".join(f"{k} {v}" for k, v in sorted(packages.items()) if k in ("torch", "transformers")),
        "",
        "Per cell: wall time (run_cell start to its last write) against the sum of its training steps; "
        "`evaluation` is the loop's time outside its steps (dev set + train subset every `eval_steps` and at "
        "every phase end), `other` the rest of the cell (data from the tokenized cache, teacher load, recipe "
        "build, checkpoint and predictions writes).",
        "",
        text,
        "",
        f"Over the grid: overhead (wall - steps) / wall = **{100 * total:.1f}%**, {verdict} the 10% target; "
        f"evaluation {share(loop - steps, wall)}, everything else {share(wall - loop, wall)}.",
    ])
    print(body)
    publish("grid_overhead", body, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
