"""Where a grid's results came from, read from its run directories alone: the command that ran the grid
(grid.json), commits, dates, devices, precision, package versions, data, and whether every cell of a task and
seed saw the same teacher. For `spd-bench report`."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from harness import store
from harness.results import Result

SHOWN_PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "safetensors", "scikit-learn", "scipy", "numpy")


def _read(path: Path) -> dict:
    try:
        value = store.read_json(path)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def counted(values: list, what: str = "cells") -> str:
    """'x' when every cell says x, else 'x (3 cells), y (1 cell)'; 'not recorded' when none says anything."""
    counts = Counter(v for v in values if v not in (None, ""))
    if not counts:
        return "not recorded"
    if len(counts) == 1 and sum(counts.values()) == len(values):
        return f"{next(iter(counts))}"
    return ", ".join(f"{v} ({n} {what if n > 1 else what.rstrip('s')})" for v, n in sorted(counts.items(), key=str))


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def provenance_lines(meta: dict, states: list[str], results: list[Result]) -> list[str]:
    """Markdown bullet lines. `meta`: grid.json; `states`: every cell's state (done / failed / pending)."""
    manifests = [_read(r.run_dir / "manifest.json") for r in results]
    metrics = [_read(r.run_dir / "metrics.json") for r in results]
    configs = [_read(r.run_dir / "config.json") for r in results]
    command = meta.get("command")
    starts = sorted(m["started_at"] for m in manifests if m.get("started_at"))
    ends = sorted(m["finished_at"] for m in manifests if m.get("finished_at"))
    seconds = sum(float(m.get("seconds") or 0) for m in manifests)
    dirty = sum(1 for m in manifests if m.get("git_dirty"))
    lines = [
        f"- grid: `{meta.get('name')}`, {len(states)} cells: {states.count('done')} done, "
        f"{states.count('failed')} failed, {states.count('pending')} not run",
        f"- command: `{command}`" if command else
        "- command: not recorded (grid.json written before spd-bench recorded the command line)",
        f"- source: commit {counted([m.get('git_sha') for m in manifests])}"
        + (f"; {dirty} cell(s) ran with uncommitted changes to tracked files" if dirty else ""),
        f"- dates (UTC): first cell started {starts[0] if starts else 'not recorded'}, last finished "
        f"{ends[-1] if ends else 'not recorded'}; {_hours(seconds)} of cell time in all",
        f"- device: {counted([m.get('device') for m in manifests])}",
        f"- precision: {counted([m.get('precision') for m in metrics])}",
        f"- model: {counted([r.model for r in results])}; seeds: "
        f"{', '.join(str(s) for s in sorted({r.seed for r in results if r.seed is not None})) or '—'}",
        f"- data: {counted([c.get('data_source') for c in configs])}",
        f"- python {counted([m.get('python') for m in manifests])}; "
        + "; ".join(f"{name} {counted([(m.get('packages') or {}).get(name) for m in manifests])}"
                    for name in SHOWN_PACKAGES),
        f"- teachers: {_teachers(results, metrics)}",
    ]
    return lines


def _teachers(results: list[Result], metrics: list[dict]) -> str:
    """Cells of one task and seed share one teacher; a grid resumed on a fresh machine retrains them, and the
    checksums its cells recorded say whether the new ones are the same."""
    seen = defaultdict(set)
    for r, m in zip(results, metrics):
        if m.get("teacher_weights_sha256"):
            seen[(r.task, r.seed)].add(m["teacher_weights_sha256"])
    if not seen:
        return "weights checksums not recorded"
    differ = sorted(f"{task} seed {seed}" for (task, seed), sums in seen.items() if len(sums) > 1)
    if differ:
        return f"**cells of {', '.join(differ)} were trained from different teachers** (teacher_weights_sha256)"
    return f"one teacher per task and seed ({len(seen)}), the same weights in every cell that used it"
