"""Figures from finished run directories: dev curves per task (the paper's Figure 2) and the train-dev gap
per method (the paper's Figure 5).

    spd-bench plot OUT [--dest DIR]        # DIR defaults to OUT/figures

For every task (and model, when a directory holds several) two PNGs are written:

  <task>[-<model>]-dev.png        x = training step, y = dev score of every run; a diamond on each curve where
                                  one of its stages ends (config.json resolved.stage_ends); runs that do not
                                  train (dense) are a dashed horizontal line
  <task>[-<model>]-train-dev.png  one subplot per run: the score on the train_eval_examples subset and on dev

Curves come from each run's history.jsonl (one line per evaluation). Figures are drawn with matplotlib's Agg
canvas directly (no pyplot, no global backend state), at a fixed size so their pixel size is known.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.results import Result, load_results, read_history

DPI = 100
DEV_FIGSIZE = (7.0, 4.5)            # inches: 700 x 450 pixels at DPI
GAP_PANEL = (4.0, 3.2)              # inches per subplot of the train-dev figure
GAP_COLUMNS = 3
LINESTYLES = ("-", "--", "-.", ":")
# Stable colours: a method keeps its colour across every figure.
METHOD_ORDER = ("spd", "sparse-kd", "sparse-progressive", "sparse-ft", "theseus", "dense")


def gap_figsize(panels: int) -> tuple[float, float]:
    """Size in inches of a train-dev figure with `panels` subplots."""
    cols = min(panels, GAP_COLUMNS)
    rows = math.ceil(panels / GAP_COLUMNS)
    return GAP_PANEL[0] * cols, GAP_PANEL[1] * rows + 0.6   # + room for the title


@dataclass
class Curve:
    label: str
    method: str
    steps: list[int]
    dev: list[float]
    train_steps: list[int] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    stage_ends: list[int] = field(default_factory=list)
    linestyle: str = "-"      # runs of one method (other sparsities, seeds) share its colour, not its line


def _stage_ends(run_dir: Path) -> list[int]:
    try:
        with open(run_dir / "config.json") as f:
            ends = (json.load(f).get("resolved") or {}).get("stage_ends") or []
        return [int(t) for t in ends]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


def _score(d) -> float | None:
    if isinstance(d, dict) and isinstance(d.get("score"), (int, float)):
        return float(d["score"])
    return None


def _curve(result: Result, label: str) -> Curve | None:
    history = read_history(result.run_dir)
    steps, dev, train_steps, train = [], [], [], []
    for entry in history:
        d = _score(entry.get("dev"))
        if d is not None:
            steps.append(int(entry["step"]))
            dev.append(d)
        t = _score(entry.get("train"))
        if t is not None:
            train_steps.append(int(entry["step"]))
            train.append(t)
    if not steps:
        return None
    return Curve(label, result.method, steps, dev, train_steps, train, _stage_ends(result.run_dir))


def _prunes(method: str) -> bool:
    from harness.registry import get_method
    try:
        return get_method(method).prunes
    except UserError:   # a plugin's run read without its plugin: trust the recorded sparsity
        return True


def _labels(results: list[Result]) -> dict[int, str]:
    """A legend label per run: the method, its sparsity where it prunes, the seed where several."""
    by_method = defaultdict(list)
    for r in results:
        by_method[r.method].append(r)
    labels = {}
    for method, runs in by_method.items():
        seeds = {r.seed for r in runs}
        for r in runs:
            label = method
            if r.sparsity > 0 and _prunes(method):
                label += f" ({r.sparsity:.0%})"
            if len(seeds) > 1:
                label += f" seed {r.seed}"
            labels[id(r)] = label
    return labels


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _colour(method: str, extra: list[str]):
    from matplotlib import colormaps
    palette = colormaps["tab10"].colors
    i = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER) + extra.index(method)
    return palette[i % len(palette)]


def _new_figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI, format="png")   # fixed size: no bbox_inches='tight'
    tmp.replace(path)
    return path


def _stage_points(c: Curve) -> tuple[list[float], list[float]]:
    """Where each stage end falls on the dev curve (linear interpolation between evaluations)."""
    import numpy as np
    xs = [t for t in c.stage_ends if c.steps[0] <= t <= c.steps[-1]]
    return xs, [float(np.interp(t, c.steps, c.dev)) for t in xs]


def _dev_figure(title: str, metric: str, curves: list[Curve], colours) -> object:
    fig = _new_figure(DEV_FIGSIZE)
    ax = fig.add_subplot(1, 1, 1)
    marked = False
    for c in curves:
        colour = colours(c.method)
        if len(c.steps) == 1:   # no training: a reference line (the dense teacher)
            ax.axhline(c.dev[0], color=colour, linestyle="--", linewidth=1.2, label=f"{c.label} ({c.dev[0]:.1f})")
            continue
        ax.plot(c.steps, c.dev, color=colour, linestyle=c.linestyle, linewidth=1.5, marker=".", markersize=4,
                label=c.label)
        xs, ys = _stage_points(c)
        if xs:
            ax.plot(xs, ys, linestyle="none", marker="D", markersize=6, color=colour,
                    markeredgecolor="black", markeredgewidth=0.6)
            marked = True
    if marked:   # one legend entry for every curve's stage-end diamonds
        ax.plot([], [], linestyle="none", marker="D", markersize=6, color="white", markeredgecolor="black",
                markeredgewidth=0.6, label="stage end")
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"dev {metric} (x100)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def _gap_figure(title: str, metric: str, curves: list[Curve], colours) -> object:
    fig = _new_figure(gap_figsize(len(curves)))
    cols = min(len(curves), GAP_COLUMNS)
    rows = math.ceil(len(curves) / GAP_COLUMNS)
    for i, c in enumerate(curves):
        ax = fig.add_subplot(rows, cols, i + 1)
        colour = colours(c.method)
        one_point = len(c.steps) == 1
        if c.train:
            if one_point:
                ax.axhline(c.train[-1], color=colour, linestyle=":", label=f"train ({c.train[-1]:.1f})")
            else:
                ax.plot(c.train_steps, c.train, color=colour, linestyle=":", marker="^", markersize=3, label="train")
        if one_point:
            ax.axhline(c.dev[0], color=colour, linestyle="-", label=f"dev ({c.dev[0]:.1f})")
        else:
            ax.plot(c.steps, c.dev, color=colour, linestyle="-", marker=".", markersize=4, label="dev")
            if c.train:   # shade the gap where both were measured
                common = sorted(set(c.steps) & set(c.train_steps))
                dev_at = dict(zip(c.steps, c.dev))
                train_at = dict(zip(c.train_steps, c.train))
                if len(common) > 1:
                    ax.fill_between(common, [dev_at[s] for s in common], [train_at[s] for s in common],
                                    color=colour, alpha=0.12, linewidth=0)
        if not c.train:
            ax.text(0.5, 0.05, "no train scores (train_eval_examples=0)", transform=ax.transAxes,
                    ha="center", fontsize="x-small", color="grey")
        ax.set_title(c.label, fontsize="medium")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{metric} (x100)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def plot_run_dirs(out: Path, dest: Path) -> list[Path]:
    """Write the dev-curve and train-dev figures of every finished run under `out` into `dest`."""
    import matplotlib
    matplotlib.set_loglevel("warning")
    out, dest = Path(out), Path(dest)
    results = load_results(out)
    if not results:
        raise UserError(f"no finished runs under {out}")
    groups: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.task, r.model)].append(r)
    several_models = len({model for _, model in groups}) > 1
    others = sorted({r.method for r in results if r.method not in METHOD_ORDER})
    colours = lambda method: _colour(method, others)  # noqa: E731
    written = []
    for (task, model), runs in sorted(groups.items()):
        runs.sort(key=lambda r: (_method_key(r.method), r.sparsity, r.seed is None, r.seed or 0))
        labels = _labels(runs)
        curves = [c for r in runs if (c := _curve(r, labels[id(r)])) is not None]
        if not curves:
            continue
        seen = defaultdict(int)
        for c in curves:
            c.linestyle = LINESTYLES[seen[c.method] % len(LINESTYLES)]
            seen[c.method] += 1
        metric = _metric(runs[0])
        stem = f"{task}-{_slug(Path(model).name)}" if several_models else task
        where = f"{task.upper()}" + (f", {Path(model).name}" if several_models else "")
        fig = _dev_figure(f"{where}: dev {metric} during training", metric, curves, colours)
        written.append(_save(fig, dest / f"{stem}-dev.png"))
        fig = _gap_figure(f"{where}: train vs dev {metric} (train-dev gap)", metric, curves, colours)
        written.append(_save(fig, dest / f"{stem}-train-dev.png"))
    if not written:
        raise UserError(f"no training history in the finished runs under {out}")
    return written


def _metric(result: Result) -> str:
    try:
        with open(result.run_dir / "metrics.json") as f:
            return str(json.load(f).get("metric", "score"))
    except (OSError, ValueError):
        return "score"


def cmd_plot(args) -> int:
    out = Path(args.out_dir)
    paths = plot_run_dirs(out, Path(args.dest) if args.dest else out / "figures")
    for path in paths:
        print(path)
    return 0


def add_plot_command(sub) -> None:
    """Add `plot OUT [--dest DIR]` to the CLI's subparsers."""
    plot = sub.add_parser("plot", help="dev curves (Fig. 2) and train-dev gaps (Fig. 5) of finished runs as PNGs")
    plot.add_argument("out_dir", help="a grid output or any directory of run directories")
    plot.add_argument("--dest", help="where to write the PNGs (default: OUT/figures)")
    plot.set_defaults(func=cmd_plot)
