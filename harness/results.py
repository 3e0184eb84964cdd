"""Reading finished results out of a grid output directory (or any directory of run directories)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness import store

REQUIRED = ("task", "method", "model", "sparsity", "seed", "final", "params")


@dataclass
class Result:
    task: str
    method: str
    model: str
    sparsity: float
    seed: int | None
    score: float
    nonzero_params: int
    run_dir: Path

    def predictions(self) -> tuple[list, list]:
        """(predictions, labels) of the dev set, in dev order."""
        preds, labels = [], []
        with open(self.run_dir / "predictions.jsonl") as f:
            for line in f:
                row = json.loads(line)
                preds.append(row["prediction"])
                labels.append(row["label"])
        return preds, labels


def read_history(run_dir: Path) -> list[dict]:
    """A run's evaluations (history.jsonl) in step order; a step evaluated twice (runs made before the loop
    stopped evaluating a phase end twice) counts once, the last entry winning; unreadable lines are skipped."""
    by_step: dict[int, dict] = {}
    try:
        with open(run_dir / "history.jsonl") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                    by_step[int(entry["step"])] = entry
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        return []
    return [by_step[s] for s in sorted(by_step)]


def load_results(out: Path) -> list[Result]:
    """Every complete run directory under `out` (a corrupt metrics.json is skipped, never counted)."""
    results = []
    for metrics_file in sorted(Path(out).glob("**/metrics.json")):
        run_dir = metrics_file.parent
        if any(part.endswith(".partial") for part in run_dir.parts) or not (run_dir / "model").is_dir():
            continue  # teachers' caches and half-written directories
        try:
            m = store.read_json(metrics_file)
            if not all(k in m for k in REQUIRED):
                continue
            seed = None if m["seed"] is None else int(m["seed"])  # null: an evaluated checkpoint's unknown seed
            results.append(Result(m["task"], m["method"], m["model"], float(m["sparsity"]), seed,
                                  float(m["final"]["dev"]["score"]), int(m["params"]["nonzero"]), run_dir))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return results


def load_failures(out: Path) -> list[dict]:
    """Failed cells of a grid output: their config (from grid.json) and error."""
    try:
        cells = {c["id"]: c["config"] for c in store.read_json(Path(out) / "grid.json")["cells"]}
    except (OSError, ValueError, KeyError):
        return []
    failures = []
    for f in sorted((Path(out) / "failed").glob("*.json")):
        try:
            record = store.read_json(f)
        except (OSError, ValueError):
            continue
        if record.get("id") in cells:
            failures.append({**cells[record["id"]], "error": record.get("error", "")})
    return failures
