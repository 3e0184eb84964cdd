"""Every grid config we ship loads and validates (a broken one would otherwise be found on a GPU box, hours in)."""
import pytest

from harness.gridconfig import load_grid
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_loads(path):
    grid = load_grid(path, glue_dir="samples")   # the data source is the user's; the cells' shape is ours
    assert grid.cells


def test_minilm_gpu_runs_the_90_percent_core_first_with_three_seeds_and_no_weights():
    grid = load_grid(REPO / "configs" / "minilm_gpu.yaml", glue_dir="samples")
    core = [c.cfg for c in grid.cells[:4 * 4 * 3]]            # dense, spd, sparse-kd, sparse-ft x 4 tasks x 3 seeds
    assert {(c.method, c.sparsity) for c in core} == {("dense", 0.0), ("spd", 0.9), ("sparse-kd", 0.9),
                                                     ("sparse-ft", 0.9)}
    assert {c.seed for c in core} == {42, 43, 44} and {c.task for c in core} == {"cola", "stsb", "mrpc", "rte"}
    assert all(not c.cfg.save_model and c.cfg.deterministic for c in grid.cells)
    assert grid.workers_per_gpu == 4
