"""Method registry: built-in methods, plugins registered with a decorator, and installed entry points.

    @register_method("my-method", settings=MySettings, description="...")
    def build(settings: MySettings, ctx: BuildContext) -> Recipe: ...

A method registered here gets the CLI, the grid, the results and the tables for free. Installed
packages declare `[project.entry-points."spd_bench.methods"] name = "module:build"` (the module is
imported, which runs its decorator).

Plugins are code: a `--plugin` file, a grid's `plugins:`, the files in $SPD_BENCH_PLUGINS and every
installed entry point are imported into the spd-bench process (`plan` and `methods` included) and run
with the user's rights. Load only files you would run yourself.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from harness.errors import UserError, unknown_name
from harness.validation import build

ENTRY_POINT_GROUP = "spd_bench.methods"
PLUGIN_ENV = "SPD_BENCH_PLUGINS"   # os.pathsep-separated plugin files, loaded with the built-ins


@dataclass
class Method:
    name: str
    build: Callable
    settings: type
    description: str
    prunes: bool = True          # False: the run's sparsity does not apply (dense, Theseus)
    uses_teacher_for_loss: bool = False


METHODS: dict[str, Method] = {}
_loaded = False


def register_method(name: str, *, settings: type, description: str, prunes: bool = True,
                    uses_teacher_for_loss: bool = False):
    if not dataclasses.is_dataclass(settings):
        raise TypeError("settings must be a dataclass")

    def decorate(build):
        taken = METHODS.get(name)
        if taken and (taken.build.__module__, taken.build.__qualname__) != (build.__module__, build.__qualname__):
            # a plugin under a built-in's name would put its results in that method's rows
            raise UserError(f"method name {name!r} is registered twice, by {taken.build.__module__} and by "
                            f"{build.__module__}: give one of them another name")
        METHODS[name] = Method(name, build, settings, description, prunes, uses_teacher_for_loss)
        return build
    return decorate


_loaded_files: set[Path] = set()


def load_plugin_file(path: str | Path) -> None:
    """Import a one-file plugin (its @register_method runs on import); once per file."""
    path = Path(path).resolve()
    if path in _loaded_files:
        return
    if not path.is_file():
        raise UserError(f"plugin file {path} not found")
    if path.suffix != ".py":
        raise UserError(f"plugin file {path} is not a Python file (.py)")
    _loaded_files.add(path)
    spec = importlib.util.spec_from_file_location(f"spd_bench_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    except BaseException as err:
        del sys.modules[spec.name]
        _loaded_files.discard(path)
        # a mistake in the user's file, not a bug of spd-bench: where it is and what it raised, in one line
        if isinstance(err, SyntaxError):
            raise UserError(f"plugin {path}:{err.lineno}: syntax error: {err.msg}") from None
        if isinstance(err, Exception) and not isinstance(err, UserError):
            line = next((f.lineno for f in reversed(traceback.extract_tb(err.__traceback__))
                         if Path(f.filename) == path), "?")
            what = (str(err).splitlines() or [""])[0]
            raise UserError(f"plugin {path}:{line}: {type(err).__name__} when imported: {what}") from None
        raise


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("spd.method")
    importlib.import_module("baselines")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()  # importing the module registers it
    for path in filter(None, os.environ.get(PLUGIN_ENV, "").split(os.pathsep)):
        load_plugin_file(path)


def use_plugins(paths) -> None:
    """Load plugin files now and export them, so that worker processes (grid, SLURM) load them too."""
    paths = [str(Path(p).resolve()) for p in paths or []]
    for p in paths:
        load_plugin_file(p)
    known = [p for p in os.environ.get(PLUGIN_ENV, "").split(os.pathsep) if p]
    os.environ[PLUGIN_ENV] = os.pathsep.join(dict.fromkeys(known + paths))


def get_method(name: str) -> Method:
    _load_all()
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return METHODS[name]


def all_methods() -> dict[str, Method]:
    _load_all()
    return dict(METHODS)


def make_settings(method: Method, overrides: dict, where: str | None = None) -> object:
    """The method's settings dataclass with `overrides` applied, checked by harness.validation against its
    annotations (an unknown name or a bad value is a one-line UserError naming `where`)."""
    return build(method.settings, overrides, f"method {method.name!r}: " if where is None else where)
