"""Tables 1-3 of the paper as markdown, our numbers beside the paper's.

Each reproduced cell reads `ours / paper (difference)`, ours being mean ± std over seeds of the score the
reporting protocol takes: `best` (default, the paper's: the best dev score among evaluations of the model at
its final shape, as the official code evaluates every 50 steps and reports no final evaluation) or `final`
(the model the run ends with); the caption says which. Rows the paper only cites are printed from the paper
and marked (cited). #Param is computed from our models' non-zero parameters; Avg is the plain mean of the
row's task numbers, as the paper computes it, and only for complete rows. A paper row takes the runs of its
method at its sparsity whose variant settings (VARIANTS: preset, student_init, recipe) match the row's
`settings` (default values when the row names none); any other results get rows of their own.
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
from harness.results import BEST_SOURCES, REPORTS, Result, load_failures, load_results, paired_by_seed
from harness.stats import paired_bootstrap
from harness.tasks import get_task

TABLE_FILES = {1: "table1.md", 2: "table2.md", 3: "table3.md"}
SIGNIFICANCE = 0.05
SPARSITY_TOL = 1e-3          # a run at 0.666 or 0.6667 sits on the paper's "66.6%" row
PAPER_MODEL = "bert-base-uncased"
# Method settings that make a different recipe of the same method, with the value a paper row means when it
# names none: a run goes on a paper row only if it agrees on every one of these that its method has.
VARIANTS = {"preset": "paper", "student_init": "finetuned", "recipe": "official"}


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def prunes(method: str) -> bool:
    return all_methods()[method].prunes if method in all_methods() else True


def variant_of(settings: dict) -> dict:
    """The variant settings a run has, defaults filled in (only those its method has)."""
    return {k: settings[k] for k in VARIANTS if k in settings}


def _matches(method_of, sparsity_of, settings_of, method: str, sparsity: float | None, variant: dict) -> bool:
    if method_of != method:
        return False
    if prunes(method) and sparsity is not None and abs(sparsity_of - sparsity) > SPARSITY_TOL:
        return False
    return all(v == variant.get(k, VARIANTS[k]) for k, v in variant_of(settings_of).items())


def variant_label(variant: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(variant.items()) if v != VARIANTS[k])


class Cells:
    """Our results grouped by (method, sparsity, variant, task) for one model (harness/report.py reads its
    rows through this too, so a claim's row takes exactly the runs the table's row shows)."""

    def __init__(self, results: list[Result], failures: list[dict]):
        self.results = results
        self.failures = failures

    def select(self, method, sparsity, task, variant=None) -> list[Result]:
        return [r for r in self.results if r.task == task
                and _matches(r.method, r.sparsity, r.settings, method, sparsity, variant or {})]

    def failed(self, method, sparsity, task, variant=None) -> bool:
        return any(f["task"] == task and _matches(f["method"], f["sparsity"], f.get("settings") or {}, method,
                                                  sparsity, variant or {}) for f in self.failures)


def _our_value(rs: list[Result], report: str) -> tuple[float | None, str]:
    if not rs:
        return None, "—"
    scores = [r.value(report) for r in rs]
    mean = statistics.fmean(scores)
    text = f"{mean:.1f}" + (f"±{statistics.stdev(scores):.1f}" if len(scores) > 1 else "")
    return mean, text


def _significance(task: str, rs: list[Result], spd: list[Result]) -> str:
    """'*' when the paired bootstrap says this method differs from SPD, over the seeds both ran (two at least:
    the same seeds as `spd-bench report`'s comparisons, harness/compare.py)."""
    if not rs or rs[0].method == "spd":
        return ""
    pairs = paired_by_seed(rs, spd)
    if len(pairs) < 2:
        return ""
    pa = [ours.predictions()[0] for ours, _ in pairs]
    pb = [theirs.predictions()[0] for _, theirs in pairs]
    labels = pairs[0][0].predictions()[1]
    _, p = paired_bootstrap(get_task(task), pa, pb, labels, n_resamples=500)
    return "*" if p < SIGNIFICANCE else ""


def _row(label: str, method: str, sparsity, variant: dict, columns, cells: Cells, paper_cells: dict | None,
         paper_avg_value, spd_sparsity, report: str) -> list[str]:
    row, ours_all, params = [label], [], []
    for task in columns:
        rs = cells.select(method, sparsity, task, variant)
        mean, text = _our_value(rs, report)
        if mean is None and cells.failed(method, sparsity, task, variant):
            text = "failed"
        elif mean is not None and report == "final":   # the bootstrap needs predictions: the final model's
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


def _sparsity_text(sparsity: float | None) -> str:
    if sparsity is None:
        return "—"
    return "dense" if sparsity == 0 else f"{sparsity * 100:.3g}%"


def _teacher_label(label: str, model: str) -> str:
    """The paper's teacher is a fine-tuned BERT_BASE; name the row after the model this section used."""
    return label if model == PAPER_MODEL else f"Fine-tuned `{model}` (teacher)"


def _caption(report: str, results: list[Result]) -> list[str]:
    if report == "best":
        protocol = ("the best dev score among the evaluations of the model at its final shape (target sparsity; "
                    "Theseus: predecessors no longer drawn), the paper's protocol (docs/spd.md)")
    else:
        protocol = "the dev score of the final model (the end of the run)"
    lines = [f"Reported: **{report}**, {protocol}; `spd-bench table N DIR --report "
             f"{'final' if report == 'best' else 'best'}` gives the other protocol."]
    if report == "best":
        for source in ("history", "any", "final"):
            n = sum(1 for r in results if r.best_source == source)
            if n:
                lines.append(f"{n} run(s): {BEST_SOURCES[source]}.")
    return lines


def render_table(number: int, out: Path, report: str = "best", heading: int = 1, footer: bool = True) -> str:
    """Table `number` as markdown; `heading`: the level of its title (the report nests tables in sections);
    footer=False leaves out the 'generated by ... on <date>' line (the report has one of its own)."""
    if report not in REPORTS:
        raise UserError(f"unknown report {report!r}; valid: {', '.join(REPORTS)}")
    paper = load_paper_numbers()["tables"][str(number)]
    columns = paper["columns"]
    results = load_results(out)
    failures = [{**f, "settings": f.get("settings") or {}} for f in load_failures(out)]
    if not results and not failures:
        raise UserError(f"no finished runs under {out}")
    models = sorted({r.model for r in results} | {f["model"] for f in failures})
    table_sparsity = paper.get("sparsity")
    sparsity_column = table_sparsity is None          # Table 2: one sparsity per row, as printed
    headers = (["Model"] + (["Sparsity"] if sparsity_column else []) + ["#Param"]
               + [f"{get_task(t).glue_dir_name} {get_task(t).metric_label}" for t in columns] + ["Avg"])
    spd_sparsity = table_sparsity if table_sparsity is not None else 0.95
    parts = [f"{'#' * heading} Table {number} — {paper['title']}", ""]

    def with_sparsity(row: list[str], sparsity) -> list[str]:
        return row[:1] + [_sparsity_text(sparsity)] + row[1:] if sparsity_column else row

    for model in models:
        cells = Cells([r for r in results if r.model == model], [f for f in failures if f["model"] == model])
        rows = []
        for prow in paper["rows"]:
            sparsity = prow.get("sparsity", table_sparsity)
            label = prow["label"]
            if prow["kind"] == "cited" or "method" not in prow:
                values = [_fmt(prow["cells"].get(t)) for t in columns]
                rows.append(with_sparsity([f"{label} (cited)", prow.get("params", "—"), *values,
                                           _fmt(prow.get("avg"))], sparsity))
                continue
            method, variant = prow["method"], prow.get("settings") or {}
            if method == "dense":
                label = _teacher_label(label, model)
            tag = ", ".join(filter(None, [method, variant_label(variant)]))
            rows.append(with_sparsity(_row(f"{label} [{tag}]", method, sparsity, variant, columns, cells,
                                           prow["cells"], prow.get("avg"), spd_sparsity, report), sparsity))
        covered = [(p["method"], p.get("sparsity", table_sparsity), p.get("settings") or {})
                   for p in paper["rows"] if p["kind"] == "reproduced" and "method" in p]
        extra = {}
        for r in cells.results:
            if r.task not in columns or any(_matches(r.method, r.sparsity, r.settings, *c) for c in covered):
                continue
            sparsity = r.sparsity if prunes(r.method) else None
            if table_sparsity is not None and sparsity is not None and abs(sparsity - table_sparsity) > SPARSITY_TOL:
                continue  # another sparsity belongs to another table
            variant = variant_of(r.settings)
            extra[(r.method, sparsity, tuple(sorted(variant.items())))] = variant
        for (method, sparsity, _), variant in sorted(extra.items(), key=str):
            tag = variant_label(variant)
            label = (f"{method}" + (f" ({tag})" if tag else "")
                     + (f" ({sparsity:.1%} sparse)" if sparsity and not sparsity_column else "") + " [ours only]")
            rows.append(with_sparsity(_row(label, method, sparsity, variant, columns, cells, None, None,
                                           spd_sparsity, report), sparsity))
        seeds = sorted({r.seed for r in cells.results if r.seed is not None})
        parts += [f"{'#' * (heading + 1)} Model: `{model}` — seeds: {', '.join(map(str, seeds)) or '—'}", "",
                  tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    notes = [f"- {r['label']}: {r['note']}" for r in paper["rows"] if r.get("note")]
    parts += [
        *_caption(report, results), "",
        "Cells read `ours / paper (ours − paper)`; ours is the mean ± std over seeds of the reported dev score. "
        "`—`: not run (or not in the paper); `failed`: the cell failed (see `spd-bench status`). "
        "`*` (with --report final only: it compares the final models' predictions): differs from SPD at p < 0.05 "
        "by a paired bootstrap over dev examples (needs ≥ 2 seeds). "
        "#Param: non-zero parameters of our final models. Avg: plain mean of the row's tasks, complete rows only. "
        "[method, setting=value]: the method and variant settings of the runs on the row.",
        "", *(["Paper notes:", *notes, ""] if notes else []),
        *([f"_Generated by `spd-bench table {number} {out} --report {report}` on "
           f"{datetime.date.today().isoformat()}._", ""] if footer else [])]
    return "\n".join(parts)


def write_grid_tables(out: Path, numbers: list[int]) -> list[Path]:
    """tableN.md under the paper's protocol (best at final shape) and tableN-final.md under `final`."""
    written = []
    for n in numbers:
        for report, name in (("best", TABLE_FILES[int(n)]), ("final", TABLE_FILES[int(n)].replace(".md", "-final.md"))):
            path = Path(out) / name
            store.write_text(path, render_table(int(n), out, report))
            written.append(path)
    return written
