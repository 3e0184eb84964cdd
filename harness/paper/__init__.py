"""The numbers the SPD paper prints (Tables 1-3), as package data, and the paper's Avg rule.

`paper_numbers.yaml` (next to this file) documents its schema in its header comment;
docs/paper-numbers.md says how the tables were transcribed and where the paper contradicts itself.
"""

from __future__ import annotations

from importlib import resources
from typing import Mapping

import yaml

__all__ = ["TASKS", "METHODS", "load_paper_numbers", "paper_avg"]

#: Task names the tables' `columns` and `cells` use.
TASKS = ("mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte")
#: spd-bench method names a row's `method` may take.
METHODS = ("dense", "spd", "theseus", "sparse-kd", "sparse-ft", "sparse-progressive")

_DATA_FILE = "paper_numbers.yaml"


def load_paper_numbers() -> dict:
    """The parsed `paper_numbers.yaml` (a fresh dict on every call, safe to modify)."""
    text = resources.files(__name__).joinpath(_DATA_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def paper_avg(cells: Mapping[str, float | None], *, partial: bool = False) -> float | None:
    """The paper's "Avg." of a row: the plain, unweighted mean of its task numbers (unrounded;
    the paper prints it rounded to one decimal).

    The paper prints an Avg only for rows with every cell present (MiniLM6 in Table 1,
    TinyBERT4 and RPP in Table 2 have blank cells and no Avg), so by default a row with any
    `None` cell gives `None`. With `partial=True` the mean of the present cells is returned
    instead (not a number the paper ever prints). No present cell gives `None` either way.
    """
    values = list(cells.values())
    present = [float(v) for v in values if v is not None]
    if not present or (len(present) < len(values) and not partial):
        return None
    return sum(present) / len(present)
