"""Grid configs (configs/*.yaml): validated, expanded into cells, each keyed by its config (RunConfig.key).

The file is read with a SafeLoader that refuses a key given twice, its shape is the pydantic model GridFile,
and every cell is validated as a run before anything runs (harness/validation.py: one line per mistake,
naming the file and the key).

    name: table1
    model: bert-base-uncased
    glue_dir: null              # a glue_data dir, 'hub', 'samples', or null: --glue-dir, else $GLUE_DIR, else the hub
                                # (a grid never falls back to the samples silently: they must be named)
    seeds: [42]
    tasks: [mnli, qqp, ...]
    run: {batch_size: 32}       # RunConfig fields shared by every cell
    methods:                    # one entry per row; sparsity/settings/run per entry
      - {method: spd, sparsity: 0.5, settings: {p0: 0.8}}
    task_overrides:             # optional: per-task run fields and method settings
      rte: {settings: {p0: 0.6}, run: {eval_steps: 50}}
    plugins: [my_method.py]     # optional: one-file method plugins, relative to this file (code: they run)
    checkpoints:                # optional: checkpoints made elsewhere, evaluated as rows of their own
      - {path: ckpts/mine, name: MyMethod, tasks: [rte]}   # harness/evaluate.py (then `methods` is optional)
    tables: [1]                 # paper tables written after the grid runs
    workers_per_gpu: 1          # cells at once per visible GPU (--workers-per-gpu overrides)
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from harness.errors import UserError
from harness.evaluate import grid_checkpoints
from harness.registry import get_method, make_settings, use_plugins
from harness.run import RunConfig
from harness.tasks import get_task
from harness.validation import StrictModel, check_fields, load_yaml, model_error

# Set per cell by the grid itself (tasks, methods[i], seeds, model), never in a `run:` section.
CELL_FIELDS = ("task", "method", "sparsity", "seed", "model")


class MethodEntry(StrictModel):
    method: str
    sparsity: Any = None      # checked per cell against RunConfig.sparsity, whose range the message gives
    settings: dict[str, Any] = {}
    run: dict[str, Any] = {}
    tasks: list[str] | None = None


class TaskOverride(StrictModel):
    settings: dict[str, Any] = {}
    run: dict[str, Any] = {}


class GridFile(StrictModel):
    """The YAML's shape; values of `run:` and `settings:` sections are checked against RunConfig and the
    method's settings class (harness.validation), which know their types and bounds."""
    # a folder name (runs/<name> by default), never a path: '../x' would write outside runs/
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")] | None = None
    description: str | None = None
    model: str = "bert-base-uncased"
    glue_dir: str | None = None
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [42], min_length=1)
    tasks: list[str] = Field(min_length=1)
    run: dict[str, Any] = {}
    methods: list[MethodEntry] = []
    task_overrides: dict[str, TaskOverride] = {}
    tables: list[Literal[1, 2, 3]] = []
    plugins: list[str] = []
    workers_per_gpu: Annotated[int, Field(ge=1, strict=True)] = 1
    checkpoints: list[dict[str, Any]] = []   # harness/evaluate.py checks each entry


@dataclass
class Cell:
    cfg: RunConfig

    @property
    def key(self) -> str:
        return self.cfg.key()

    @property
    def cell_id(self) -> str:
        c = self.cfg
        return f"{c.task}-{c.method}-s{c.sparsity:g}-seed{c.seed}-{self.key}"


@dataclass
class Grid:
    name: str
    cells: list[Cell]
    tables: list[int]
    source: dict
    workers_per_gpu: int = 1     # cells run at once on each visible GPU (the CPU counts as one)
    checkpoints: list = dataclasses.field(default_factory=list)  # EvalConfig per (checkpoint, task)


def _check_run(where: str, run: dict) -> dict:
    """A `run:` section: RunConfig fields other than the ones the grid sets per cell, validated."""
    for name in CELL_FIELDS:
        if name in run:
            raise UserError(f"{where}{name}: not allowed in a run section; the grid sets it per cell "
                            f"(from tasks, methods[i].method, methods[i].sparsity, seeds and model)")
    return check_fields(RunConfig, run, where)


def _task(name: str, where: str) -> str:
    try:
        return get_task(name).name
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def read_grid_file(path: Path) -> GridFile:
    """The file parsed and its shape checked: bad YAML, a key given twice, an unknown key or a value of the
    wrong type is one UserError line naming the file and the key."""
    if not path.is_file():
        raise UserError(f"grid config {path} not found" if not path.exists() else f"grid config {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read it ({type(err).__name__}: {err})") from None
    raw = load_yaml(text, str(path))
    if raw is None:
        raise UserError(f"{path}: empty; a grid needs at least 'tasks' and 'methods'")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: must be a mapping (name, tasks, methods, ...), got {type(raw).__name__}")
    try:
        return GridFile.model_validate(raw)
    except ValidationError as err:
        raise model_error(err, str(path), GridFile) from None


def load_grid(path: str | Path, seeds: int | None = None, glue_dir: str | None = None) -> Grid:
    """Every cell of the grid, each validated as a run (settings, bounds, model positions): a mistake anywhere
    is found here, before anything is trained."""
    path = Path(path)
    spec = read_grid_file(path)
    if not spec.methods and not spec.checkpoints:
        raise UserError(f"{path}: 'methods' is required (or 'checkpoints', to evaluate checkpoints only)")
    # plugin paths are relative to the config file
    use_plugins([(path.parent / p) for p in spec.plugins])
    source = glue_dir or spec.glue_dir or os.environ.get("GLUE_DIR") or "hub"
    seed_list = list(spec.seeds)
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds must be at least 1, got {seeds}")
        seed_list = [seed_list[i] if i < len(seed_list) else seed_list[-1] + i for i in range(seeds)]
    tasks = [_task(t, f"{path}: tasks[{i}]") for i, t in enumerate(spec.tasks)]
    shared_run = _check_run(f"{path}: run.", spec.run)
    for t in spec.task_overrides:
        if t not in tasks:
            raise UserError(f"{path}: task_overrides.{t}: not one of the grid's tasks ({', '.join(tasks)})")
    cells = []
    for i, entry in enumerate(spec.methods):
        where = f"{path}: methods[{i}]"
        try:
            method = get_method(entry.method)
        except UserError as err:
            raise UserError(f"{where}.method: {err}") from None
        entry_run = _check_run(f"{where}.run.", entry.run)
        make_settings(method, entry.settings, where=f"{where}.settings.")
        sparsity = 0.0
        if method.prunes and entry.sparsity is not None:
            sparsity = check_fields(RunConfig, {"sparsity": entry.sparsity}, f"{where}.")["sparsity"]
        fields = {f.name for f in dataclasses.fields(method.settings)}
        for task in [_task(t, f"{where}.tasks[{j}]") for j, t in enumerate(entry.tasks or tasks)]:
            o = spec.task_overrides.get(task, TaskOverride())
            # a per-task override only applies to methods that have the setting
            extra = {k: v for k, v in o.settings.items() if k in fields or k in entry.settings}
            check_fields(method.settings, extra, f"{path}: task_overrides.{task}.settings.")
            settings = {**entry.settings, **extra}
            run = {**shared_run, **entry_run, **_check_run(f"{path}: task_overrides.{task}.run.", o.run)}
            for seed in seed_list:
                cfg = RunConfig(task=task, method=method.name, model=spec.model, sparsity=sparsity,
                                seed=seed, glue_dir=source, settings=settings, **run)
                try:
                    cfg.validate()
                except UserError as err:   # checks across fields: a method's own rules, the model's positions
                    raise UserError(f"{where} ({task}, seed {seed}): {err}") from None
                cells.append(Cell(cfg))
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: the same cell appears twice")
    checkpoints = grid_checkpoints(spec.checkpoints or None, path, tasks, source, spec.model, shared_run)
    return Grid(name=spec.name or path.stem, cells=cells, tables=list(spec.tables),
                source=spec.model_dump(exclude_unset=True), workers_per_gpu=spec.workers_per_gpu,
                checkpoints=checkpoints)
