"""Reading finished results out of a grid output directory (or any directory of run directories).

Two reporting protocols (docs/spd.md, "Reported number"): `final`, the dev score of the model the run ends
with, and `best`, the best dev score among the evaluations of the model at its final shape (at the target
sparsity; Theseus: once the predecessors are no longer drawn), the official code's protocol. Runs record the
latter in metrics.json "best" (and the best over every evaluation in "best_any"); for run directories written
before that, `best_at_final_shape` recomputes it from history.jsonl and says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness import store
from harness.errors import UserError

REQUIRED = ("task", "method", "model", "sparsity", "seed", "final", "params")
REPORTS = ("best", "final")
# Where a result's `best` comes from:
BEST_SOURCES = {
    "recorded": "best at final shape, as the run recorded it",
    "history": "older run: recomputed from history.jsonl (evaluations at the target sparsity / p = 1)",
    "any": "older run without a usable history: its best over every evaluation, final shape or not",
    "final": "no evaluation at final shape besides the last: the final score",
}
# Settings a run directory written before they existed implicitly had (their behaviour then).
LEGACY_SETTINGS = {"theseus": {"recipe": "two-phase"}, "sparse-kd": {"student_init": "finetuned"}}


@dataclass
class Result:
    task: str
    method: str
    model: str
    sparsity: float
    seed: int | None             # None: an evaluated checkpoint's unknown seed
    score: float                 # final dev score
    nonzero_params: int
    run_dir: Path
    best: float | None = None    # best dev score among evaluations at final shape (None: unknown, use score)
    best_step: int | None = None
    best_source: str = "final"
    settings: dict = field(default_factory=dict)   # the run's method settings as resolved (config.json)

    def value(self, report: str) -> float:
        """The score the reporting protocol `report` ('best' or 'final') takes."""
        if report == "final" or self.best is None:
            return self.score
        return self.best

    def predictions(self) -> tuple[list, list]:
        """(predictions, labels) of the dev set, in dev order. load_results verified the file against the
        run's completion record; one that changed since is a one-line error naming it, not a traceback."""
        path = self.run_dir / "predictions.jsonl"
        preds, labels, number = [], [], 0
        try:
            with open(path) as f:
                for number, line in enumerate(f, 1):
                    row = json.loads(line)
                    preds.append(row["prediction"])
                    labels.append(row["label"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}{f':{number}' if number else ''}: unreadable ({type(err).__name__}); re-run the grid to repeat this "
                            f"cell") from None
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


def _legacy_final_shape(entry: dict, metrics: dict) -> bool | None:
    """Whether an evaluation of a run written before history entries carried "final_shape" was at final shape
    (None: the entry does not say). At the target sparsity; Theseus also needs p = 1 or the compact phase."""
    if "final_shape" in entry:
        return bool(entry["final_shape"])
    if "sparsity" not in entry or "sparsity" not in metrics:
        return None
    at_target = float(entry["sparsity"]) >= float(metrics["sparsity"]) - 1e-6
    if metrics.get("method") == "theseus":
        return at_target and (float(entry.get("p", 0.0)) >= 1.0 or entry.get("phase") == "compact-finetuning")
    return at_target


def best_at_final_shape(run_dir: Path, metrics: dict) -> dict:
    """{'score', 'step', 'source'}: the best dev score among the run's evaluations at final shape (the first
    evaluation reaching it, as the loop keeps the first of equal scores); source is a key of BEST_SOURCES."""
    final = {"score": float(metrics["final"]["dev"]["score"]), "step": metrics["final"].get("step"),
             "source": "final"}
    if "best_any" in metrics:   # the loop recorded the protocol itself
        best = metrics.get("best")
        if not best:
            return final
        return {"score": float(best["dev"]["score"]), "step": best.get("step"), "source": "recorded"}
    history = read_history(Path(run_dir))
    flags = [_legacy_final_shape(e, metrics) for e in history]
    if history and all(f is not None for f in flags):
        best = None
        for entry, at_final in zip(history, flags):
            if at_final and "dev" in entry and (best is None or entry["dev"]["score"] > best["score"]):
                best = {"score": float(entry["dev"]["score"]), "step": entry["step"], "source": "history"}
        return best or final
    if metrics.get("best"):
        return {"score": float(metrics["best"]["dev"]["score"]), "step": metrics["best"].get("step"),
                "source": "any"}
    return final


def run_settings(run_dir: Path, method: str) -> dict:
    """The method settings a run used: config.json's settings with what the recipe resolved on top; a setting
    added after the run was made takes the value that describes what the code did then (LEGACY_SETTINGS)."""
    try:
        config = store.read_json(Path(run_dir) / "config.json")
    except (OSError, ValueError):
        config = {}
    settings = {k: v for k, v in (config.get("settings") or {}).items() if v is not None}
    settings.update({k: v for k, v in (config.get("resolved") or {}).items()
                     if v is not None and not isinstance(v, (list, dict))})
    for key, value in LEGACY_SETTINGS.get(method, {}).items():
        settings.setdefault(key, value)
    return settings


def load_results(out: Path) -> list[Result]:
    """Every complete run directory under `out`: one whose files do not verify against its completion
    record (a half-written predictions.jsonl or model) or whose metrics are corrupt is skipped, never
    counted."""
    results = []
    for metrics_file in sorted(Path(out).glob("**/metrics.json")):
        run_dir = metrics_file.parent
        if any(part.endswith((".partial", ".kept")) for part in run_dir.parts):
            continue  # half-written directories; teachers' caches lack REQUIRED metrics (a run with
            # save_model: false has no model/, and counts)
        if store.completion_problem(run_dir) is not None:
            continue
        try:
            m = store.read_json(metrics_file)
            if not all(k in m for k in REQUIRED):
                continue
            best = best_at_final_shape(run_dir, m)
            seed = None if m["seed"] is None else int(m["seed"])  # null: an evaluated checkpoint's unknown seed
            results.append(Result(m["task"], m["method"], m["model"], float(m["sparsity"]), seed,
                                  float(m["final"]["dev"]["score"]), int(m["params"]["nonzero"]), run_dir,
                                  best=best["score"], best_step=best["step"], best_source=best["source"],
                                  settings=run_settings(run_dir, m["method"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return results


def by_seed(results: list[Result]) -> dict[int, Result]:
    """Runs by seed; a run without a seed (an evaluated checkpoint's) cannot be paired and is left out."""
    return {r.seed: r for r in results if r.seed is not None}


def paired_by_seed(a: list[Result], b: list[Result]) -> list[tuple[Result, Result]]:
    """(a's run, b's run) for each seed both ran, in seed order: what every paired comparison compares."""
    runs_a, runs_b = by_seed(a), by_seed(b)
    return [(runs_a[s], runs_b[s]) for s in sorted(set(runs_a) & set(runs_b))]


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
