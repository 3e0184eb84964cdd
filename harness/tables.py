"""Tables 1-3 of the paper as markdown, our numbers beside the paper's.

Each reproduced cell reads `ours / paper (difference)`, ours being mean ± std over seeds. Rows the paper
only cites are printed from the paper and marked (cited). #Param is computed from our models' non-zero
parameters; Avg is the plain mean of the row's task numbers, as the paper computes it, and only for
complete rows. Any registered method with results that no paper row covers gets a row of its own.
"""
from __future__ import annotations

import datetime
import statistics
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

from harness import store
from harness.errors import UserError
from harness.paper import load_paper_numbers, paper_avg
from harness.registry import all_methods
from harness.results import Result, load_failures, load_results
from harness.stats import paired_bootstrap
from harness.tasks import get_task

TABLE_FILES = {1: "table1.md", 2: "table2.md", 3: "table3.md"}
SIGNIFICANCE = 0.05


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def _matches(r, method: str, sparsity: float | None) -> bool:
    if r["method"] != method:
        return False
    prunes = all_methods()[method].prunes if method in all_methods() else True
    return not prunes or sparsity is None or abs(r["sparsity"] - sparsity) < 1e-6


class _Cells:
    """Our results grouped by (method, sparsity, task) for one model."""

    def __init__(self, results: list[Result], failures: list[dict]):
        self.results = results
        self.failures = failures

    def select(self, method, sparsity, task) -> list[Result]:
        return [r for r in self.results if r.task == task and _matches(vars(r), method, sparsity)]

    def failed(self, method, sparsity, task) -> bool:
        return any(f["task"] == task and _matches(f, method, sparsity) for f in self.failures)


def _our_value(rs: list[Result]) -> tuple[float | None, str]:
    if not rs:
        return None, "—"
    scores = [r.score for r in rs]
    mean = statistics.fmean(scores)
    text = f"{mean:.1f}" + (f"±{statistics.stdev(scores):.1f}" if len(scores) > 1 else "")
    return mean, text


def _significance(task: str, rs: list[Result], spd: list[Result]) -> str:
    """'*' when the paired bootstrap says this method differs from SPD (needs two seeds on each side)."""
    if len(rs) < 2 or len(spd) < 2 or rs[0].method == "spd":
        return ""
    pa = [r.predictions()[0] for r in sorted(rs, key=lambda r: (r.seed is None, r.seed or 0))]
    pb = [r.predictions()[0] for r in sorted(spd, key=lambda r: r.seed)]
    labels = rs[0].predictions()[1]
    _, p = paired_bootstrap(get_task(task), pa, pb, labels, n_resamples=500)
    return "*" if p < SIGNIFICANCE else ""


def _row(label: str, method: str, sparsity, columns, cells: _Cells, paper_cells: dict | None,
         paper_avg_value, spd_sparsity) -> list[str]:
    row, ours_all, params = [label], [], []
    for task in columns:
        rs = cells.select(method, sparsity, task)
        mean, text = _our_value(rs)
        if mean is None and cells.failed(method, sparsity, task):
            text = "failed"
        elif mean is not None:
            text += _significance(task, rs, cells.select("spd", spd_sparsity, task))
        paper = (paper_cells or {}).get(task)
        if paper_cells is not None:
            text += f" / {_fmt(paper)}" + (f" ({mean - paper:+.1f})" if mean is not None and paper is not None else "")
        row.append(text)
        ours_all.append(mean)
        params += [r.nonzero_params for r in rs]
    ours_avg = None if any(v is None for v in ours_all) else statistics.fmean(ours_all)
    avg = _fmt(ours_avg)
    if paper_cells is not None:
        avg += f" / {_fmt(paper_avg_value)}" + (f" ({ours_avg - paper_avg_value:+.1f})"
                                                 if ours_avg is not None and paper_avg_value is not None else "")
    row.insert(1, f"{statistics.fmean(params) / 1e6:.1f}M" if params else "—")
    row.append(avg)
    return row


def render_table(number: int, out: Path) -> str:
    paper = load_paper_numbers()["tables"][str(number)]
    columns = paper["columns"]
    results = load_results(out)
    failures = load_failures(out)
    if not results and not failures:
        raise UserError(f"no finished runs under {out}")
    models = sorted({r.model for r in results} | {f["model"] for f in failures})
    headers = ["Model", "#Param"] + [f"{get_task(t).glue_dir_name} {get_task(t).metric_label}" for t in columns] + ["Avg"]
    table_sparsity = paper.get("sparsity")
    spd_sparsity = table_sparsity if table_sparsity is not None else 0.95
    parts = [f"# Table {number} — {paper['title']}", ""]
    for model in models:
        cells = _Cells([r for r in results if r.model == model], [f for f in failures if f["model"] == model])
        rows, covered = [], set()
        for prow in paper["rows"]:
            sparsity = prow.get("sparsity", table_sparsity)
            label = prow["label"]
            if prow["kind"] == "cited" or "method" not in prow:
                values = [_fmt(prow["cells"].get(t)) for t in columns]
                rows.append([f"{label} (cited)", prow.get("params", "—"), *values, _fmt(prow.get("avg"))])
                continue
            covered.add((prow["method"], sparsity if all_methods()[prow["method"]].prunes else None))
            rows.append(_row(f"{label} [{prow['method']}]", prow["method"], sparsity, columns, cells,
                             prow["cells"], prow.get("avg"), spd_sparsity))
        extra = sorted({(r.method, r.sparsity if all_methods().get(r.method) and all_methods()[r.method].prunes else None)
                        for r in cells.results if r.task in columns}, key=str)
        for method, sparsity in extra:
            if (method, sparsity) in covered:
                continue
            if table_sparsity is not None and sparsity is not None and abs(sparsity - table_sparsity) > 1e-6:
                continue  # another sparsity belongs to another table
            label = f"{method}" + (f" ({sparsity:.1%} sparse)" if sparsity else "") + " [ours only]"
            rows.append(_row(label, method, sparsity, columns, cells, None, None, spd_sparsity))
        seeds = sorted({r.seed for r in cells.results if r.seed is not None})
        parts += [f"## Model: `{model}` — seeds: {', '.join(map(str, seeds)) or '—'}", "",
                  tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    notes = [f"- {r['label']}: {r['note']}" for r in paper["rows"] if r.get("note")]
    parts += [
        "Cells read `ours / paper (ours − paper)`; ours is the mean ± std over seeds of the final dev score. "
        "`—`: not run (or not in the paper); `failed`: the cell failed (see `spd-bench status`). "
        "`*`: differs from SPD at p < 0.05 by a paired bootstrap over dev examples (needs ≥ 2 seeds). "
        "#Param: non-zero parameters of our final models. Avg: plain mean of the row's tasks, complete rows only.",
        "", *(["Paper notes:", *notes, ""] if notes else []),
        f"_Generated by `spd-bench table {number} {out}` on {datetime.date.today().isoformat()}._", ""]
    return "\n".join(parts)


def write_grid_tables(out: Path, numbers: list[int]) -> list[Path]:
    written = []
    for n in numbers:
        path = Path(out) / TABLE_FILES[int(n)]
        store.write_text(path, render_table(int(n), out))
        written.append(path)
    return written
