"""Grid configs (configs/*.yaml): validated, expanded into cells, each keyed by a hash of its resolved config.

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
    plugins: [my_method.py]     # optional: one-file method plugins, relative to this file
    checkpoints:                # optional: checkpoints made elsewhere, evaluated as rows of their own
      - {path: ckpts/mine, name: MyMethod, tasks: [rte]}   # harness/evaluate.py (then `methods` is optional)
    tables: [1]                 # paper tables written after the grid runs
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.errors import UserError
from harness.evaluate import grid_checkpoints
from harness.registry import get_method, use_plugins
from harness.run import RunConfig, run_config_fields
from harness.tasks import get_task

TOP_KEYS = {"name", "description", "model", "glue_dir", "seeds", "tasks", "run", "methods", "task_overrides",
            "tables", "plugins", "checkpoints"}
METHOD_KEYS = {"method", "sparsity", "settings", "run", "tasks"}
OVERRIDE_KEYS = {"settings", "run"}
# Fields that do not change what a cell computes, so they stay out of its key.
NOT_IN_KEY = {"device", "tensorboard"}


@dataclass
class Cell:
    cfg: RunConfig

    @property
    def key(self) -> str:
        fields = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in NOT_IN_KEY}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]

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
    checkpoints: list = dataclasses.field(default_factory=list)  # EvalConfig per (checkpoint, task)


def _check_keys(where: str, got: dict, allowed: set[str]) -> None:
    if not isinstance(got, dict):
        raise UserError(f"{where}: expected a mapping, got {type(got).__name__}")
    unknown = set(got) - allowed
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"valid: {', '.join(sorted(allowed))}")


def _check_run(where: str, run: dict) -> dict:
    _check_keys(where, run, run_config_fields() - {"task", "method", "sparsity", "seed", "model"})
    return run


def load_grid(path: str | Path, seeds: int | None = None, glue_dir: str | None = None) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid config {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    _check_keys(str(path), raw or {}, TOP_KEYS)
    for required in ("tasks",) + (() if raw.get("checkpoints") else ("methods",)):  # checkpoints: harness/evaluate.py
        if not raw.get(required):
            raise UserError(f"{path}: '{required}' is required")
    # plugin paths are relative to the config file
    use_plugins([(path.parent / p) for p in raw.get("plugins") or []])
    source = glue_dir or raw.get("glue_dir") or os.environ.get("GLUE_DIR") or "hub"
    seed_list = list(raw.get("seeds") or [42])
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds must be at least 1, got {seeds}")
        seed_list = [seed_list[i] if i < len(seed_list) else seed_list[-1] + i for i in range(seeds)]
    tasks = [get_task(t).name for t in raw["tasks"]]
    shared_run = _check_run(f"{path}: run", raw.get("run") or {})
    overrides = raw.get("task_overrides") or {}
    _check_keys(f"{path}: task_overrides", overrides, set(tasks))
    for t, o in overrides.items():
        _check_keys(f"{path}: task_overrides.{t}", o, OVERRIDE_KEYS)
    cells = []
    for i, entry in enumerate(raw.get("methods") or []):
        where = f"{path}: methods[{i}]"
        _check_keys(where, entry, METHOD_KEYS)
        method = get_method(entry.get("method", ""))
        entry_run = _check_run(f"{where}.run", entry.get("run") or {})
        for task in [get_task(t).name for t in entry.get("tasks", tasks)]:
            o = overrides.get(task, {})
            settings = {**(entry.get("settings") or {}), **(o.get("settings") or {})}
            # a per-task override only applies to methods that have the setting
            fields = {f.name for f in dataclasses.fields(method.settings)}
            settings = {k: v for k, v in settings.items() if k in fields or k in (entry.get("settings") or {})}
            run = {**shared_run, **entry_run, **_check_run(f"{path}: task_overrides.{task}.run", o.get("run") or {})}
            for seed in seed_list:
                cfg = RunConfig(task=task, method=method.name, model=raw.get("model", "bert-base-uncased"),
                                sparsity=float(entry.get("sparsity", 0.0)) if method.prunes else 0.0,
                                seed=seed, glue_dir=source, settings=settings, **run)
                cfg.validate()
                cells.append(Cell(cfg))
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: the same cell appears twice")
    checkpoints = grid_checkpoints(raw.get("checkpoints"), path, tasks, source, raw.get("model", "bert-base-uncased"),
                                   shared_run)
    return Grid(name=raw.get("name", path.stem), cells=cells, tables=list(raw.get("tables") or []), source=raw,
                checkpoints=checkpoints)
