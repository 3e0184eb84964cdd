"""The grid runner: run every cell of a grid config, survive crashes, share teachers, record failures.

Layout of an output directory:
  grid.json              the cells of the grid (written at every start)
  cells/<cell id>/       one run directory per finished cell (see harness/run.py); complete iff valid metrics.json
  failed/<cell id>.json  the error of a cell that failed (removed when it later succeeds)
  cache/                 teachers and tokenized data shared by all cells
  slurm/                 submitit's logs (SLURM executor)

Finished cells are skipped on re-run; a run killed with SIGKILL loses at most the cells in flight, because
every cell directory is renamed into place only when complete. One runner per output directory (a lock).
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from harness import store
from harness.errors import UserError
from harness.gridconfig import Cell, Grid, load_grid
from harness.results import read_history
from harness.run import RunConfig, prepare_teacher, run_cell

REQUIRED_METRICS = ("task", "method", "final", "best", "teacher", "params", "achieved_sparsity")


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.cell_id


def failed_file(out: Path, cell: Cell) -> Path:
    return out / "failed" / f"{cell.cell_id}.json"


def is_complete(out: Path, cell: Cell) -> bool:
    """A cell counts only if its metrics parse, are whole, and belong to this exact config."""
    d = cell_dir(out, cell)
    try:
        metrics = store.read_json(d / "metrics.json")
        config = store.read_json(d / "config.json")
    except (OSError, ValueError):
        return False
    if not all(k in metrics for k in REQUIRED_METRICS) or "score" not in metrics["final"].get("dev", {}):
        return False
    saved = RunConfig(**{f.name: config[f.name] for f in dataclasses.fields(RunConfig) if f.name in config})
    saved.settings = config.get("requested_settings", {})
    return Cell(saved).key == cell.key


def cell_state(out: Path, cell: Cell) -> str:
    if is_complete(out, cell):
        return "done"
    if failed_file(out, cell).exists():
        return "failed"
    return "pending"


def _clean_partials(out: Path) -> None:
    """Remove what a killed run left half-written; complete directories are never touched."""
    for parent in (out / "cells", out / "cache" / "teachers"):
        if parent.is_dir():
            for p in parent.glob(".*.partial"):
                shutil.rmtree(p, ignore_errors=True)
    if (out / "cells").is_dir():
        for d in (out / "cells").iterdir():
            if d.is_dir() and not d.name.startswith(".") and not (d / "metrics.json").exists():
                shutil.rmtree(d, ignore_errors=True)


def execute_cell(cfg: RunConfig, out: str, progress: bool = False) -> dict:
    """Run one cell; a failure is recorded on disk and returned, never raised (the grid goes on)."""
    out = Path(out)
    cell = Cell(cfg)
    try:
        metrics = run_cell(cfg, cell_dir(out, cell), cache_dir=out / "cache", progress=progress)
        failed_file(out, cell).unlink(missing_ok=True)
        return {"id": cell.cell_id, "status": "done", "score": metrics["final"]["dev"]["score"]}
    except Exception as err:  # noqa: BLE001 — recorded, shown by `status` and the tables
        store.write_json(failed_file(out, cell), {"id": cell.cell_id, "error": f"{type(err).__name__}: {err}",
                                                  "traceback": traceback.format_exc()})
        return {"id": cell.cell_id, "status": "failed", "error": f"{type(err).__name__}: {err}"}


def execute_teacher(cfg: RunConfig, out: str, progress: bool = False) -> str | None:
    """Train (or find) the teacher a cell needs. Returns an error string, or None."""
    try:
        prepare_teacher(cfg, Path(out) / "cache", progress=progress)
        return None
    except Exception as err:  # noqa: BLE001 — its cells fail with this message
        return f"{type(err).__name__}: {err}"


def _run_list(cells: list[RunConfig], out: str, device: str | None) -> list[dict]:
    results = []
    for cfg in cells:
        if device:
            cfg = dataclasses.replace(cfg, device=device)
        if execute_teacher(cfg, out) is None:
            results.append(execute_cell(cfg, out))
    return results


def _teacher_jobs(cells: list[Cell]) -> list[RunConfig]:
    """One representative config per distinct teacher."""
    from harness.run import teacher_identity
    seen, jobs = set(), []
    for c in cells:
        ident = teacher_identity(c.cfg)
        if ident not in seen:
            seen.add(ident)
            jobs.append(c.cfg)
    return jobs


def run_local(todo: list[Cell], out: Path, progress: bool) -> None:
    import torch
    gpus = torch.cuda.device_count()
    if gpus > 1:  # one worker per visible GPU, cells dealt round-robin after the teachers
        with ProcessPoolExecutor(gpus) as pool:
            teachers = _teacher_jobs(todo)
            list(pool.map(_run_teachers, [teachers[i::gpus] for i in range(gpus)], [str(out)] * gpus,
                          [f"cuda:{i}" for i in range(gpus)]))
            list(pool.map(_run_list, [[c.cfg for c in todo[i::gpus]] for i in range(gpus)], [str(out)] * gpus,
                          [f"cuda:{i}" for i in range(gpus)]))
        return
    teacher_errors = {}
    from harness.run import teacher_identity
    # one process: the outer bar counts teachers/cells, the loop's own bar (leave=False) shows the steps of
    # the one training now, which on a CPU can take most of an hour
    for cfg in tqdm(_teacher_jobs(todo), desc="teachers", disable=not progress):
        teacher_errors[teacher_identity(cfg)] = execute_teacher(cfg, str(out), progress=progress)
    bar = tqdm(todo, desc="cells", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(cell.cell_id, refresh=False)
        error = teacher_errors.get(teacher_identity(cell.cfg))
        if error:
            store.write_json(failed_file(out, cell), {"id": cell.cell_id, "error": f"teacher failed: {error}"})
            continue
        result = execute_cell(cell.cfg, str(out), progress=progress)
        if result["status"] == "failed":
            tqdm.write(f"FAILED {cell.cell_id}: {result['error']}", file=sys.stderr)


def _run_teachers(cfgs: list[RunConfig], out: str, device: str | None) -> list:
    return [execute_teacher(dataclasses.replace(c, device=device) if device else c, out) for c in cfgs]


def run_slurm(todo: list[Cell], out: Path, opts: dict, cluster: str | None = None) -> None:
    """submitit: an array of teacher jobs, waited for, then an array of cell jobs (teachers come first)."""
    import submitit
    executor = submitit.AutoExecutor(folder=out / "slurm", cluster=cluster)
    params = {"timeout_min": opts.get("time", 24 * 60)}
    if executor.cluster == "slurm":
        params.update(slurm_partition=opts.get("partition"), gpus_per_node=opts.get("gpus", 1),
                      cpus_per_task=opts.get("cpus", 8), slurm_array_parallelism=opts.get("parallelism", 32))
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    teachers = _teacher_jobs(todo)
    for job in executor.map_array(execute_teacher, teachers, [str(out)] * len(teachers)):
        job.result()
    jobs = executor.map_array(execute_cell, [c.cfg for c in todo], [str(out)] * len(todo))
    for job in jobs:
        job.result()


def run_grid(grid: Grid, out: Path, executor: str = "local", progress: bool = True,
             slurm: dict | None = None, cluster: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / ".runner.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"another runner is using {out}; wait for it or choose another --out") from None
    try:
        _clean_partials(out)
        store.write_json(out / "grid.json", {"name": grid.name, "tables": grid.tables,
                                             "cells": [{"id": c.cell_id, "config": dataclasses.asdict(c.cfg)}
                                                       for c in grid.cells]})
        todo = [c for c in grid.cells if not is_complete(out, c)]
        skipped = len(grid.cells) - len(todo)
        if progress and skipped:
            print(f"{skipped} of {len(grid.cells)} cells already done; running {len(todo)}", file=sys.stderr)
        if executor == "slurm":
            run_slurm(todo, out, slurm or {}, cluster=cluster)
        else:
            run_local(todo, out, progress)
        states = [cell_state(out, c) for c in grid.cells]
        return {"cells": len(grid.cells), "done": states.count("done"), "failed": states.count("failed"),
                "skipped": skipped}
    finally:
        lock.release()


def load_out_grid(out: Path) -> tuple[dict, list[Cell]]:
    try:
        meta = store.read_json(out / "grid.json")
    except (OSError, ValueError):
        raise UserError(f"{out} is not a grid output directory (no readable grid.json)") from None
    return meta, [Cell(RunConfig(**c["config"])) for c in meta["cells"]]


def run_grid_command(args) -> int:
    grid = load_grid(args.config, seeds=args.seeds, glue_dir=args.glue_dir)
    if args.overrides:
        raise UserError("key=value settings go into the grid config, not the command line")
    out = Path(args.out or f"runs/{grid.name}")
    slurm = {k: getattr(args, k, None) for k in ("partition", "time", "gpus", "cpus", "parallelism")}
    summary = run_grid(grid, out, args.executor, progress=not args.quiet, slurm=slurm)
    print(f"{grid.name}: {summary['done']}/{summary['cells']} cells done, {summary['failed']} failed "
          f"({summary['skipped']} were already done) -> {out}")
    from harness.tables import write_grid_tables
    for path in write_grid_tables(out, grid.tables):
        print(f"table -> {path}")
    return 1 if summary["failed"] else 0


def cell_summary(run_dir: Path) -> dict:
    """A finished cell at a glance: final and best dev score, the last train-subset score and its gap to dev
    (the paper's Figure 5 in one number), and wall time. Missing pieces (a run without train evaluation,
    an older manifest) are None."""
    metrics = store.read_json(run_dir / "metrics.json")
    last = next((e for e in read_history(run_dir) if e["step"] == metrics["final"]["step"]), {})
    train = last["train"]["score"] if last.get("train") else None
    final = metrics["final"]["dev"]["score"]
    try:
        seconds = store.read_json(run_dir / "manifest.json").get("seconds")
    except (OSError, ValueError):
        seconds = None
    return {"final": final, "best": metrics["best"]["dev"]["score"], "best_step": metrics["best"]["step"],
            "train": train, "gap": None if train is None else train - final, "seconds": seconds}


def cmd_status(args) -> int:
    from tabulate import tabulate
    out = Path(args.out_dir)
    meta, cells = load_out_grid(out)
    rows, counts = [], {"done": 0, "failed": 0, "pending": 0}
    for cell in cells:
        state = cell_state(out, cell)
        counts[state] += 1
        detail = [""] * 6
        if state == "done":
            s = cell_summary(cell_dir(out, cell))
            detail = [f"{s['final']:.2f}", f"{s['best']:.2f} @ {s['best_step']}",
                      "" if s["train"] is None else f"{s['train']:.2f}",
                      "" if s["gap"] is None else f"{s['gap']:+.2f}",
                      "" if s["seconds"] is None else f"{s['seconds'] / 60:.1f}", ""]
        elif state == "failed":
            detail[-1] = store.read_json(failed_file(out, cell)).get("error", "")[:100]
        rows.append([cell.cfg.task, cell.cfg.method, f"{cell.cfg.sparsity:g}", cell.cfg.seed, state, *detail])
    print(tabulate(rows, headers=["task", "method", "sparsity", "seed", "state", "dev (final)", "dev (best @ step)",
                                  "train", "train-dev", "minutes", "error"], disable_numparse=True))
    print(f"{meta['name']}: {counts['done']} done, {counts['failed']} failed, {counts['pending']} pending "
          f"of {len(cells)}")
    return 0


def cmd_plan(args) -> int:
    from harness.cost import plan_calibrated, plan_grid
    grid = load_grid(args.config, seeds=args.seeds, glue_dir=args.glue_dir)
    out = Path(args.out or f"runs/{grid.name}")
    out = out if out.is_dir() else None
    if args.calibrate:
        from harness.models import pick_device
        if min(args.calibrate_steps, args.calibrate_warmup) < 1:
            raise UserError("--calibrate-steps and --calibrate-warmup must be at least 1")
        print(plan_calibrated(grid, out, pick_device(args.device), args.calibrate_warmup, args.calibrate_steps))
    else:
        print(plan_grid(grid, out, tflops=args.tflops, gpu=args.gpu))
    return 0


def cmd_table(args) -> int:
    from harness.tables import render_table
    text = render_table(int(args.number), Path(args.out_dir))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        store.write_text(args.out, text)
        print(f"table {args.number} -> {args.out}")
    else:
        print(text)
    return 0


def add_grid_commands(sub) -> None:
    status = sub.add_parser("status", help="state of every cell of a grid output directory")
    status.add_argument("out_dir")
    status.set_defaults(func=cmd_status)
    plan = sub.add_parser("plan", help="cells of a grid config, which are done, and the estimated GPU cost")
    plan.add_argument("config")
    plan.add_argument("--seeds", type=int)
    plan.add_argument("--out", help="grid output directory to check for finished cells (default runs/<name>)")
    plan.add_argument("--tflops", type=float, default=None, help="sustained training TFLOP/s of the GPU")
    plan.add_argument("--gpu", default="a100", help="GPU the estimate assumes (a100, h100, v100, rtx6000)")
    plan.add_argument("--glue-dir", help="the grid's data (padded lengths are measured from local data)")
    plan.add_argument("--calibrate", action="store_true",
                      help="time real steps of every method and model on this device and extrapolate (docs/grid.md)")
    plan.add_argument("--calibrate-steps", type=int, default=10, help="timed steps per phase (default 10)")
    plan.add_argument("--calibrate-warmup", type=int, default=3, help="warm-up steps per phase (default 3)")
    plan.add_argument("--device", help="device to calibrate on (default: cuda if available, else cpu)")
    plan.set_defaults(func=cmd_plan)
    table = sub.add_parser("table", help="paper table 1, 2 or 3 from a grid output, beside the paper's numbers")
    table.add_argument("number", choices=["1", "2", "3"])
    table.add_argument("out_dir")
    table.add_argument("--out", help="write the markdown here instead of stdout")
    table.set_defaults(func=cmd_table)
