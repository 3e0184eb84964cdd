"""The grid runner: run every cell of a grid config, survive crashes, share teachers, record failures.

Layout of an output directory:
  grid.json              the cells of the grid and the command line that ran it (written at every start)
  cells/<cell id>/       one run directory per finished cell (see harness/run.py); complete iff its completion
                         record verifies and its metrics are whole and of this cell's config
  failed/<cell id>.json  the error of a cell that failed (removed when it later succeeds)
  cache/                 teachers and tokenized data shared by all cells
  slurm/                 submitit's logs (SLURM executor)

Finished cells are skipped on re-run; a run killed with SIGKILL loses at most the cells in flight, because
every cell directory is renamed into place only when complete. One runner per output directory (a lock).
Clean-up at start removes only what spd-bench made (directories with its marker, see harness/store.py).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import traceback
from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from harness import store
from harness.errors import Preempted, UserError
from harness.evaluate import run_grid_checkpoints
from harness.gridconfig import Cell, Grid, load_grid
from harness.results import best_at_final_shape, read_history
from harness.resume import sigterm_received, watch_sigterm
from harness.run import RunConfig, prepare_teacher, run_cell, saved_key

REQUIRED_METRICS = ("task", "method", "final", "best", "teacher", "params", "achieved_sparsity")


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.cell_id


def failed_file(out: Path, cell: Cell) -> Path:
    return out / "failed" / f"{cell.cell_id}.json"


def cell_problem(out: Path, cell: Cell, full: bool = False) -> str | None:
    """Why a cell does not count as done (missing, a file damaged, metrics incomplete, another config's
    result), or None when it does. full=True also checksums the model weights (see harness/store.py)."""
    d = cell_dir(out, cell)
    if not (d / "metrics.json").is_file():
        return "not run"
    problem = store.completion_problem(d, full=full)
    if problem:
        return problem
    try:
        metrics = store.read_json(d / "metrics.json")
        if not all(k in metrics for k in REQUIRED_METRICS) or "score" not in metrics["final"].get("dev", {}):
            return "metrics.json lacks a field"
    except (OSError, ValueError, TypeError, AttributeError):
        return "metrics.json is unreadable"
    return None if saved_key(d) == cell.key else "the directory holds another config's result"


def is_complete(out: Path, cell: Cell, full: bool = False) -> bool:
    """A cell counts only if every file it promises is whole (completion record), its metrics parse and
    are complete, and it belongs to this exact config."""
    return cell_problem(out, cell, full) is None


def cell_state(out: Path, cell: Cell) -> str:
    if is_complete(out, cell):
        return "done"
    if failed_file(out, cell).exists():
        return "failed"
    return "pending"


def _clean_partials(out: Path) -> None:
    """Remove what a killed run left half-written, and cell directories whose files no longer verify, but
    only directories spd-bench made (its marker inside) and only there: nothing else is ever removed."""
    for parent in (out / "cells", out / "cache" / "teachers"):
        if parent.is_dir():
            for p in parent.glob(".*.partial"):
                if store.is_ours(p):
                    shutil.rmtree(p, ignore_errors=True)
                elif p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
                    p.rmdir()   # killed between mkdtemp and the marker: empty, nothing to lose
    if (out / "cells").is_dir():
        for d in (out / "cells").iterdir():
            if not d.name.startswith(".") and store.is_ours(d) and store.completion_problem(d) is not None:
                shutil.rmtree(d, ignore_errors=True)


def execute_cell(cfg: RunConfig, out: str, progress: bool = False) -> dict:
    """Run one cell; a failure is recorded on disk and returned, never raised (the grid goes on)."""
    out = Path(out)
    cell = Cell(cfg)
    try:
        metrics = run_cell(cfg, cell_dir(out, cell), cache_dir=out / "cache", progress=progress)
        failed_file(out, cell).unlink(missing_ok=True)
        return {"id": cell.cell_id, "status": "done", "score": metrics["final"]["dev"]["score"]}
    except Preempted:
        raise   # not a failure: the cell saved its state and continues on a re-run
    except Exception as err:  # noqa: BLE001 — recorded, shown by `status` and the tables
        store.write_json(failed_file(out, cell), {"id": cell.cell_id, "error": f"{type(err).__name__}: {err}",
                                                  "traceback": traceback.format_exc()})
        return {"id": cell.cell_id, "status": "failed", "error": f"{type(err).__name__}: {err}"}


def execute_teacher(cfg: RunConfig, out: str, progress: bool = False) -> str | None:
    """Train (or find) the teacher a cell needs. Returns an error string, or None."""
    try:
        prepare_teacher(cfg, Path(out) / "cache", progress=progress)
        return None
    except Preempted:
        raise
    except Exception as err:  # noqa: BLE001 — its cells fail with this message
        return f"{type(err).__name__}: {err}"


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


def worker_devices(workers_per_gpu: int) -> list[str | None]:
    """One entry per worker process: every visible GPU `workers_per_gpu` times; on a CPU machine, the CPU."""
    import torch
    gpus = torch.cuda.device_count()
    if gpus:
        return [f"cuda:{i}" for i in range(gpus) for _ in range(workers_per_gpu)]
    return [None] * workers_per_gpu


def _stop_if_preempted() -> None:
    """Between two jobs: a SIGTERM that arrived outside training stops the grid here (the caller says how far)."""
    if sigterm_received():
        raise Preempted("stopped by SIGTERM")


def run_local(todo: list[Cell], out: Path, progress: bool, workers_per_gpu: int = 1) -> None:
    devices = worker_devices(workers_per_gpu)
    if len(devices) > 1:
        run_pool(todo, out, devices, progress)
        return
    teacher_errors = {}
    from harness.run import teacher_identity
    # one process: the outer bar counts teachers/cells, the loop's own bar (leave=False) shows the steps of
    # the one training now, which on a CPU can take most of an hour
    for cfg in tqdm(_teacher_jobs(todo), desc="teachers", disable=not progress):
        _stop_if_preempted()
        teacher_errors[teacher_identity(cfg)] = execute_teacher(cfg, str(out), progress=progress)
    bar = tqdm(todo, desc="cells", disable=not progress)
    for cell in bar:
        _stop_if_preempted()
        bar.set_postfix_str(cell.cell_id, refresh=False)
        error = teacher_errors.get(teacher_identity(cell.cfg))
        if error:
            store.write_json(failed_file(out, cell), {"id": cell.cell_id, "error": f"teacher failed: {error}"})
            continue
        result = execute_cell(cell.cfg, str(out), progress=progress)
        if result["status"] == "failed":
            tqdm.write(f"FAILED {cell.cell_id}: {result['error']}", file=sys.stderr)


_WORKER_DEVICE: str | None = None   # the device slot a pool worker took when it started


def _init_worker(slots, threads: int) -> None:
    global _WORKER_DEVICE
    watch_sigterm()  # for the worker's life: a notice stops its cell at the next step, state saved
    _WORKER_DEVICE = slots.get()
    import torch
    torch.set_num_threads(threads)  # workers share the machine's cores instead of each taking all of them


def _on_worker_device(job, cfg: RunConfig, out: str):
    _stop_if_preempted()   # a worker that got the notice while idle starts nothing new
    return job(dataclasses.replace(cfg, device=_WORKER_DEVICE) if _WORKER_DEVICE else cfg, out)


def run_pool(todo: list[Cell], out: Path, devices: list[str | None], progress: bool) -> None:
    """Several cells at once: one worker process per entry of `devices` (a small model keeps one GPU well under
    full use from one process). Teachers first, then the cells; every cell is still its own atomic directory,
    so a killed pool loses only the cells in flight. Workers are spawned, not forked (CUDA cannot be forked)."""
    import multiprocessing
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for device in devices:
        slots.put(device)
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    with ProcessPoolExecutor(len(devices), mp_context=context, initializer=_init_worker,
                             initargs=(slots, threads)) as pool:
        # the runner alone may get the notice (`kill PID`); its workers must stop too, with their state saved
        restore = watch_sigterm(forward=lambda: [os.kill(p.pid, signal.SIGTERM)
                                                 for p in multiprocessing.active_children()])
        try:
            _run_in_pool(pool, todo, out, progress)
        finally:
            restore()


def _results(futures: dict, desc: str, progress: bool):
    """(future's key, result) as they finish. A preempted job (or a pool broken by the notice) cancels the
    jobs not started and, once those in flight have saved their state, stops the grid."""
    preempted = False
    for done in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not progress):
        try:
            result = done.result()
        except (Preempted, BrokenProcessPool) as err:
            if isinstance(err, BrokenProcessPool) and not sigterm_received():
                raise
            preempted = True
            for f in futures:
                f.cancel()
            continue
        except CancelledError:
            continue
        if not preempted:
            yield futures[done], result
    if preempted or sigterm_received():
        raise Preempted("stopped by SIGTERM")


def _run_in_pool(pool, todo: list[Cell], out: Path, progress: bool) -> None:
    from harness.run import teacher_identity
    teachers = {pool.submit(_on_worker_device, execute_teacher, cfg, str(out)): cfg for cfg in _teacher_jobs(todo)}
    errors = {teacher_identity(cfg): error for cfg, error in _results(teachers, "teachers", progress)}
    cells = {}
    for cell in todo:
        error = errors.get(teacher_identity(cell.cfg))
        if error:
            store.write_json(failed_file(out, cell), {"id": cell.cell_id, "error": f"teacher failed: {error}"})
        else:
            cells[pool.submit(_on_worker_device, execute_cell, cell.cfg, str(out))] = cell
    for _, result in _results(cells, "cells", progress):
        if result["status"] == "failed":
            tqdm.write(f"FAILED {result['id']}: {result['error']}", file=sys.stderr)


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


def claim_grid_out(out: Path, name: str) -> None:
    """A grid writes grid.json, cells/, failed/, cache/ and tables into `out`: it may be new, empty, or the output
    directory of a grid of this `name` (it has our grid.json); anything else would have its files overwritten, or
    its grid.json taken over by another grid while its cells stay in the tables, so it is refused before
    anything runs."""
    if out.is_symlink() and not out.is_dir():
        raise UserError(f"output {out} is a broken symbolic link")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} is an existing file, not a directory; choose another --out")
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir() if p.name != ".runner.lock")
    if entries:
        try:
            meta = store.read_json(out / "grid.json")
            if isinstance(meta.get("cells"), list):
                if meta.get("name") == name:
                    return
                raise UserError(f"output directory {out} holds grid {meta.get('name')!r}, not {name!r}; nothing was "
                                f"run: choose another --out (a grid continues only its own output)")
        except (OSError, ValueError, AttributeError):
            pass
        raise UserError(f"output directory {out} exists and is not a grid output directory (it holds "
                        f"{entries[0]!r}); nothing was run: choose another --out")


def run_grid(grid: Grid, out: Path, executor: str = "local", progress: bool = True,
             slurm: dict | None = None, cluster: str | None = None, workers_per_gpu: int | None = None,
             command: str | None = None) -> dict:
    """`command`: the command line that ran the grid, recorded in grid.json for the report's provenance."""
    claim_grid_out(out, grid.name)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / ".runner.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"another runner is using {out}; wait for it or choose another --out") from None
    try:
        _clean_partials(out)
        store.write_json(out / "grid.json", {"name": grid.name, "tables": grid.tables, "command": command,
                                             "cells": [{"id": c.cell_id, "config": dataclasses.asdict(c.cfg)}
                                                       for c in grid.cells]})
        todo = [c for c in grid.cells if not is_complete(out, c)]
        skipped = len(grid.cells) - len(todo)
        if progress and skipped:
            print(f"{skipped} of {len(grid.cells)} cells already done; running {len(todo)}", file=sys.stderr)
        if executor == "slurm":
            run_slurm(todo, out, slurm or {}, cluster=cluster)
        else:
            restore = watch_sigterm()
            try:
                run_local(todo, out, progress, workers_per_gpu or grid.workers_per_gpu)
                _stop_if_preempted()
            except Preempted:
                done = sum(cell_state(out, c) == "done" for c in grid.cells)
                raise Preempted(f"grid {grid.name} stopped by SIGTERM with {done} of {len(grid.cells)} cells done; "
                                f"cells in flight saved their state: re-run the same command to continue") from None
            finally:
                restore()
        evals = run_grid_checkpoints(grid.checkpoints, out)  # the config's `checkpoints:`, evaluated here
        states = [cell_state(out, c) for c in grid.cells]
        return {"cells": len(grid.cells) + len(grid.checkpoints), "done": states.count("done") + evals["done"],
                "failed": states.count("failed") + evals["failed"], "skipped": skipped}
    finally:
        lock.release()


def load_out_grid(out: Path) -> tuple[dict, list[Cell]]:
    known = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        meta = store.read_json(out / "grid.json")
        cells = [Cell(RunConfig(**{k: v for k, v in c["config"].items() if k in known})) for c in meta["cells"]]
        meta["name"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{out} is not a grid output directory (no readable grid.json)") from None
    return meta, cells


def run_grid_command(args) -> int:
    if args.overrides:
        raise UserError(f"settings of a grid go in its YAML, not on the command line ({args.overrides[0]!r}): run "
                        f"settings under 'run:', a method's under its 'settings:' (per task: 'task_overrides:')")
    grid = load_grid(args.config, seeds=args.seeds, glue_dir=args.glue_dir)
    out = Path(args.out or f"runs/{grid.name}")
    slurm = {k: getattr(args, k, None) for k in ("partition", "time", "gpus", "cpus", "parallelism")}
    if args.workers_per_gpu is not None and args.workers_per_gpu < 1:
        raise UserError(f"--workers-per-gpu must be at least 1, got {args.workers_per_gpu}")
    summary = run_grid(grid, out, args.executor, progress=not args.quiet, slurm=slurm,
                       workers_per_gpu=args.workers_per_gpu, command=getattr(args, "command_line", None))
    print(f"{grid.name}: {summary['done']}/{summary['cells']} cells done, {summary['failed']} failed "
          f"({summary['skipped']} were already done) -> {out}")
    from harness.tables import write_grid_tables
    for path in write_grid_tables(out, grid.tables):
        print(f"table -> {path}")
    return 1 if summary["failed"] else 0


def cell_summary(run_dir: Path) -> dict:
    """A finished cell at a glance: final dev score, best dev score at final shape (harness.results: how it
    was found), the last train-subset score and its gap to dev (the paper's Figure 5 in one number), and wall
    time. Missing pieces (a run without train evaluation, an older manifest) are None."""
    metrics = store.read_json(run_dir / "metrics.json")
    last = next((e for e in read_history(run_dir) if e["step"] == metrics["final"]["step"]), {})
    train = last["train"]["score"] if last.get("train") else None
    final = metrics["final"]["dev"]["score"]
    try:
        seconds = store.read_json(run_dir / "manifest.json").get("seconds")
    except (OSError, ValueError):
        seconds = None
    best = best_at_final_shape(run_dir, metrics)
    return {"final": final, "best": best["score"], "best_step": best["step"], "best_source": best["source"],
            "train": train, "gap": None if train is None else train - final, "seconds": seconds}


def cmd_status(args) -> int:
    from tabulate import tabulate
    out = Path(args.out_dir)
    meta, cells = load_out_grid(out)
    rows, counts = [], {"done": 0, "failed": 0, "pending": 0}
    for cell in cells:
        problem = cell_problem(out, cell, full=args.verify)
        state = "done" if problem is None else "failed" if failed_file(out, cell).exists() else "pending"
        counts[state] += 1
        detail = [""] * 6
        if state == "done":
            s = cell_summary(cell_dir(out, cell))
            detail = [f"{s['final']:.2f}", f"{s['best']:.2f} @ {s['best_step']}"
                      + ("" if s["best_source"] == "recorded" else f" ({s['best_source']})"),
                      "" if s["train"] is None else f"{s['train']:.2f}",
                      "" if s["gap"] is None else f"{s['gap']:+.2f}",
                      "" if s["seconds"] is None else f"{s['seconds'] / 60:.1f}", ""]
        elif state == "failed":
            try:
                detail[-1] = str(store.read_json(failed_file(out, cell)).get("error", ""))[:100]
            except (OSError, ValueError, AttributeError):
                detail[-1] = f"(unreadable {failed_file(out, cell).name})"
        elif problem != "not run":
            detail[-1] = f"incomplete: {problem}"[:100]   # will be run again
        rows.append([cell.cfg.task, cell.cfg.method, f"{cell.cfg.sparsity:g}", cell.cfg.seed, state, *detail])
    print(tabulate(rows, headers=["task", "method", "sparsity", "seed", "state", "dev (final)",
                                  "dev (best at final shape @ step)", "train", "train-dev", "minutes", "error"],
                   disable_numparse=True))
    print(f"{meta['name']}: {counts['done']} done, {counts['failed']} failed, {counts['pending']} pending "
          f"of {len(cells)}")
    return 0


def cmd_plan(args) -> int:
    from harness.cost import plan_calibrated, plan_grid
    grid = load_grid(args.config, seeds=args.seeds, glue_dir=args.glue_dir)
    if args.tflops is not None and not args.tflops > 0:
        raise UserError(f"--tflops must be a positive number, got {args.tflops}")
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
    text = render_table(int(args.number), Path(args.out_dir), args.report)
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
    status.add_argument("--verify", action="store_true",
                        help="also checksum the model weights of every finished cell (sizes and the checksums of "
                             "the other files are always checked)")
    status.set_defaults(func=cmd_status)
    plan = sub.add_parser("plan", help="cells of a grid config, which are done, and the estimated GPU cost "
                                       "(loads the grid's plugins: they are code)")
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
    table.add_argument("--report", choices=["best", "final"], default="best",
                       help="best dev score at final shape (the paper's protocol, default) or the final one")
    table.set_defaults(func=cmd_table)
