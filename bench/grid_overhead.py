"""Harness overhead over a whole finished grid: for every cell, its wall time (manifest.json `seconds`: from
run_cell's start to its last write) against the sum of its training steps (`step_seconds`), and how much of
the difference is evaluation (`train_seconds` - `step_seconds`: the loop's time outside its steps).

bench/overhead.py takes one short cell apart with timers; this reads what a real grid left behind, so the
figure is the one a user of that grid actually paid. Nothing is re-run.

    .venv/bin/python bench/grid_overhead.py OUT [--no-docs]      # OUT: a `spd-bench run` output directory
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, publish  # noqa: E402

from tabulate import tabulate  # noqa: E402

from harness import store  # noqa: E402
from harness.grid import cell_dir, is_complete, load_out_grid  # noqa: E402

TARGET = 0.10


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
        # a step evaluated twice (a phase end that is also an eval_steps multiple) is one evaluation
        evals = len({json.loads(line)["step"] for line in (run / "history.jsonl").read_text().splitlines()})
        rows.append({"task": cell.cfg.task, "method": cell.cfg.method, "wall": man["seconds"],
                     "steps": man["step_seconds"], "loop": man["train_seconds"], "evals": evals,
                     "host": man.get("host"), "device": man.get("device"), "packages": man.get("packages")})
    return rows


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    args.quick = False
    meta, _ = load_out_grid(args.out)
    rows = cell_costs(args.out)
    if not rows:
        raise SystemExit(f"{args.out}: no finished training cells")
    table, by_method = [], {}
    for r in sorted(rows, key=lambda r: (r["method"], r["task"])):
        over, evaluation = r["wall"] - r["steps"], r["loop"] - r["steps"]
        table.append([r["method"], r["task"], f"{r['wall'] / 60:.1f}", f"{r['steps'] / 60:.1f}", r["evals"],
                      share(evaluation, r["wall"]), share(over - evaluation, r["wall"]), share(over, r["wall"])])
        agg = by_method.setdefault(r["method"], [0.0, 0.0, 0.0])
        agg[0] += r["wall"]
        agg[1] += r["steps"]
        agg[2] += r["loop"]
    wall = sum(r["wall"] for r in rows)
    steps = sum(r["steps"] for r in rows)
    loop = sum(r["loop"] for r in rows)
    for method, (w, s, lp) in sorted(by_method.items()):
        table.append([f"**{method}**", "all", f"{w / 60:.1f}", f"{s / 60:.1f}", "",
                      share(lp - s, w), share(w - lp, w), share(w - s, w)])
    table.append(["**all**", "all", f"{wall / 60:.1f}", f"{steps / 60:.1f}", "",
                  share(loop - steps, wall), share(wall - loop, wall), share(wall - steps, wall)])
    text = tabulate(table, headers=["method", "task", "wall min", "steps min", "evaluations",
                                    "evaluation", "other (data, build, save)", "overhead (wall - steps) / wall"],
                    tablefmt="github", disable_numparse=True)
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
