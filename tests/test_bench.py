"""Every bench/ script's smoke mode (`--quick --no-docs`) runs to the end and prints its table; gpu_step.py without
--quick refuses a machine with no GPU in one line; grid_overhead.py reads a finished grid. The benchmarks' figures
live in docs/performance.md: these only check that the scripts still run against the harness."""
import importlib

import pytest
import torch

from harness.grid import run_grid
from harness.gridconfig import load_grid
from tests.test_calibrate import one_thread  # noqa: F401  (autouse here too)

pytestmark = pytest.mark.slow
QUICK = ["step_cost", "gpu_step", "memory", "overhead", "padding"]


def run_script(name: str, *args) -> int:
    return importlib.import_module(f"bench.{name}").main([*args, "--no-docs"])


@pytest.mark.parametrize("name", QUICK)
def test_quick_mode_runs_and_prints_its_table(name, capsys):
    assert run_script(name, "--quick") == 0
    out = capsys.readouterr().out
    assert "|---" in out          # a github-style table
    assert "wrote docs/performance.md" not in out


def test_gpu_step_without_a_gpu_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_script("gpu_step") == 2
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "no CUDA device" in out and "--quick" in out


def test_gpu_step_profile_gaps():
    from bench.gpu_step import union_busy
    busy, gaps = union_busy([(0, 10), (5, 12), (20, 25), (24, 30), (40, 41)])
    assert busy == 12 + 10 + 1 and gaps == [8, 10]


def test_grid_overhead_reads_a_finished_grid(tmp_path, capsys):
    config = tmp_path / "g.yaml"
    config.write_text("name: g\nmodel: tiny\nglue_dir: samples\nseeds: [1]\ntables: []\ntasks: [rte]\n"
                      "run: {max_train_examples: 32, batch_size: 16, teacher_epochs: 1, train_eval_examples: 0, "
                      "max_eval_examples: 32}\n"
                      "methods:\n  - {method: sparse-ft, sparsity: 0.5, settings: {prune_epochs: 1, graft_epochs: 1, "
                      "finetune_epochs: 1}}\n")
    assert run_grid(load_grid(config), tmp_path / "out", progress=False)["done"] == 1
    assert run_script("grid_overhead", str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "| sparse-ft" in out and "overhead (wall - steps) / wall" in out


@pytest.mark.parametrize("name", [*QUICK, "calibrate_check"])
def test_a_docs_section_explains_its_method_from_the_scripts_docstring(name):
    from bench.common import section_header
    doc = importlib.import_module(f"bench.{name}").__doc__
    text = section_header("Title", ["- machine: m"], doc)
    summary, *paragraphs = doc.strip().split("\n\n")
    described = [p for p in paragraphs if not p.startswith("    ")]
    assert text.startswith("## Title\n\n`") and "\n\n- machine: m\n\n" in text
    assert described and all(p in text for p in described)
    assert summary not in text and "bench/" + name + ".py [" not in text    # no summary line, no usage lines
