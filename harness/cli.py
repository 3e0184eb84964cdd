"""`spd-bench` command line. A user's mistake prints one line and exits 2; bugs keep their traceback."""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import yaml

from harness.errors import Preempted, UserError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(f"{message} (see '{self.prog} --help')")


# run fields with an option of their own; grid options that a single run would silently ignore
FLAGGED = ("task", "method", "model", "sparsity", "seed", "glue_dir")
GRID_OPTIONS = ("seeds", "workers_per_gpu", "partition", "time", "gpus", "cpus", "parallelism")


def parse_overrides(pairs: list[str], method_name: str) -> tuple[dict, dict]:
    """key=value pairs -> (run-config overrides, method-setting overrides). Values are YAML scalars."""
    from harness.registry import get_method
    from harness.run import run_config_fields
    run_fields = run_config_fields()
    method = get_method(method_name)
    setting_fields = {f.name for f in dataclasses.fields(method.settings)}
    run_over, settings = {}, {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"expected key=value, got {pair!r}")
        key = key.replace("-", "_")
        if key in FLAGGED:   # task=cola beside --task rte ran CoLA: one way to say each
            raise UserError(f"{key} is set with --{key.replace('_', '-')}, not {key}=...")
        if key in run_over or key in settings:
            raise UserError(f"setting {key!r} is given twice")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw   # not a YAML scalar ('p0=[0.5'): the setting's own check says what it must be
        if key in run_fields:
            run_over[key] = value
        elif key in setting_fields:
            settings[key] = value
        else:
            raise UserError(f"unknown setting {key!r} for method {method_name!r}; valid: "
                            f"{', '.join(sorted(setting_fields | run_fields))}")
    return run_over, settings


def summary_line(m: dict, seconds: float, out: Path) -> str:
    final, best = m["final"]["dev"], m["best"]["dev"]
    params = m["params"]
    return (f"{m['task']} {m['method']} {m['model']} sparsity={m['sparsity']:.3g} seed={m['seed']}: "
            f"dev {m['metric']} {final['score']:.2f} (best {best['score']:.2f} @ step {m['best']['step']}), "
            f"teacher {m['teacher']['dev']['score']:.2f}, achieved sparsity {m['achieved_sparsity']:.3f}, "
            f"{params['nonzero'] / 1e6:.2f}M of {params['total'] / 1e6:.2f}M params non-zero, "
            f"{seconds:.0f}s -> {out}")


def cmd_run(args) -> int:
    import time

    from harness.registry import use_plugins
    from harness.run import RunConfig, run_cell
    use_plugins(args.plugin)
    if args.config:
        from harness.grid import run_grid_command
        return run_grid_command(args)
    if not args.task:
        raise UserError("run needs --task (or a grid CONFIG.yaml)")
    grid_only = [name for name in GRID_OPTIONS if getattr(args, name) is not None]
    grid_only += ["executor"] if args.executor != "local" else []
    if grid_only:
        raise UserError(f"--{grid_only[0].replace('_', '-')} is an option of a grid: give a grid CONFIG.yaml, or "
                        f"leave it out of a single run")
    run_over, settings = parse_overrides(args.overrides, args.method)
    cfg = RunConfig(task=args.task, method=args.method, model=args.model, sparsity=args.sparsity,
                    seed=args.seed, glue_dir=args.glue_dir, settings=settings)
    cfg = dataclasses.replace(cfg, **run_over)
    cfg.validate()   # every mistake in one line now, before the output name is made from the values
    out = Path(args.out or f"runs/{cfg.task}-{cfg.method}-{Path(cfg.model).name}-s{cfg.sparsity:g}-seed{cfg.seed}")
    t0 = time.time()
    metrics = run_cell(cfg, out, cache_dir=args.cache, progress=not args.quiet)
    print(summary_line(metrics, time.time() - t0, out))
    return 0


def cmd_methods(args) -> int:
    from harness.registry import all_methods, use_plugins
    use_plugins(args.plugin)
    for name, m in sorted(all_methods().items()):
        fields = ", ".join(f.name for f in dataclasses.fields(m.settings)) or "-"
        print(f"{name:20s} {m.description}\n{'':20s} settings: {fields}")
    return 0


def cmd_tasks(args) -> int:
    from harness.tasks import TASKS
    for t in TASKS.values():
        print(f"{t.name:6s} {t.metric:9s} {'regression' if t.is_regression else f'{t.num_labels} classes'}")
    return 0


PLUGINS_ARE_CODE = ("Plugins are code: --plugin files, a grid's 'plugins:', the files in $SPD_BENCH_PLUGINS "
                    "(separated by ':') and installed 'spd_bench.methods' entry points are imported and run in this "
                    "process, with your rights, by run, plan and methods alike. Load only files you would run.")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="spd-bench", description="Sparse Progressive Distillation benchmark harness",
                epilog=PLUGINS_ARE_CODE)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one cell (--task ...) or a grid (CONFIG.yaml)", epilog=PLUGINS_ARE_CODE)
    run.add_argument("config", nargs="?", help="a grid config (YAML); omit to run a single cell")
    run.add_argument("overrides", nargs="*", help="key=value run or method settings of a single run (e.g. p0=0.6 "
                                                  "batch_size=16); a grid's settings go in its YAML")
    run.add_argument("--task")
    run.add_argument("--method", default="spd")
    run.add_argument("--model", default="bert-base-uncased", help="tiny, minilm, or a BERT name/path")
    run.add_argument("--sparsity", type=float, default=0.9)
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--seeds", type=int, help="grid: number of seeds (overrides the config's list)")
    run.add_argument("--glue-dir", help="glue_data directory, or 'hub' (default: $GLUE_DIR, else built-in samples)")
    run.add_argument("--out", help="output directory: new, empty, or a finished run of the same config (replaced); "
                                   "anything else is refused, nothing is ever deleted")
    run.add_argument("--cache", help="teacher/tokenization cache (default: $SPD_BENCH_CACHE or ~/.cache/spd-bench)")
    run.add_argument("--executor", choices=["local", "slurm"], default="local", help="grid executor")
    run.add_argument("--workers-per-gpu", type=int, metavar="N",
                     help="grid, local executor: cells run at once on each visible GPU (default: the config's, 1)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--plugin", action="append", default=[], metavar="FILE",
                     help="a one-file method plugin to load (repeatable); it is Python code, run in this process")
    run.add_argument("--partition", help="slurm: partition")
    run.add_argument("--time", type=int, help="slurm: time limit per job, minutes")
    run.add_argument("--gpus", type=int, help="slurm: GPUs per job (default 1)")
    run.add_argument("--cpus", type=int, help="slurm: CPUs per job (default 8)")
    run.add_argument("--parallelism", type=int, help="slurm: array jobs at once (default 32)")
    run.set_defaults(func=cmd_run)

    methods = sub.add_parser("methods", help="list registered methods and their settings", epilog=PLUGINS_ARE_CODE)
    methods.add_argument("--plugin", action="append", default=[], metavar="FILE",
                         help="a one-file method plugin to load (repeatable); it is Python code, run in this process")
    methods.set_defaults(func=cmd_methods)
    sub.add_parser("tasks", help="list GLUE tasks").set_defaults(func=cmd_tasks)
    from harness.evaluate import add_eval_command
    from harness.grid import add_grid_commands
    from harness.plot import add_plot_command
    from harness.report import add_report_command
    add_grid_commands(sub)
    add_plot_command(sub)
    add_report_command(sub)
    add_eval_command(sub)
    return p




def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra and getattr(args, "command", None) == "run" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra   # key=value after an option: argparse leaves them over
        elif extra:
            raise UserError(f"unrecognized arguments: {' '.join(extra)} (see 'spd-bench --help')")
        if getattr(args, "command", None) == "run" and args.config and "=" in args.config:
            args.overrides.insert(0, args.config)
            args.config = None
        if getattr(args, "command", None) == "run" and args.config and not args.config.endswith((".yaml", ".yml")):
            raise UserError(f"unexpected argument {args.config!r}: a grid config ends in .yaml, "
                            f"settings are key=value")
        args.command_line = shlex.join(["spd-bench", *argv])   # recorded by a grid (the report's provenance)
        return args.func(args)
    except UserError as err:
        print(f"spd-bench: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError) as err:
        # a path the user gave is the wrong kind of thing (--out a folder, --cache a file) or not theirs to write
        if err.filename is None:
            raise
        # os.replace(tmp, path) names the target second: the path the user gave
        print(f"spd-bench: error: {err.filename2 or err.filename}: {err.strerror.lower()}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("spd-bench: interrupted", file=sys.stderr)
        return 130
    except Preempted as err:  # SIGTERM (a scheduler's preemption): the state is saved, a re-run continues
        print(f"spd-bench: {err}", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
