"""workers_per_gpu: several cells at once on one device, teachers first, every cell still atomic and complete."""
import json

import pytest

from tests.helpers import run_cli
from tests.test_grid import write_grid


@pytest.mark.slow
def test_a_pool_of_workers_finishes_the_grid_that_one_process_finishes(tmp_path, capsys):
    config = write_grid(tmp_path / "grid.yaml", workers_per_gpu=2, tasks=["rte"])
    pooled, single = tmp_path / "pooled", tmp_path / "single"
    assert run_cli("run", config, "--out", pooled, "--quiet") == 0          # the config's 2 workers (CPU here)
    assert run_cli("run", config, "--out", single, "--quiet", "--workers-per-gpu", "1") == 0
    done = sorted(p.name for p in (pooled / "cells").iterdir() if (p / "metrics.json").exists())
    assert done == sorted(p.name for p in (single / "cells").iterdir() if (p / "metrics.json").exists())
    assert len(done) == 3
    # the same teacher in both (one torch thread per worker against two moves the last float bits only)
    for name in done:
        a = json.loads((pooled / "cells" / name / "metrics.json").read_text())
        b = json.loads((single / "cells" / name / "metrics.json").read_text())
        assert a["teacher"]["dev"]["score"] == pytest.approx(b["teacher"]["dev"]["score"], abs=1e-6)
    assert "3/3 cells done" in capsys.readouterr().out


@pytest.mark.parametrize("value", [0, -1, "two", True])
def test_workers_per_gpu_must_be_a_whole_number_of_at_least_one(tmp_path, capsys, value):
    config = write_grid(tmp_path / "grid.yaml", workers_per_gpu=value)
    assert run_cli("plan", config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "workers_per_gpu" in err[0]


def test_the_command_line_value_is_checked_too(tmp_path, capsys):
    assert run_cli("run", write_grid(tmp_path / "grid.yaml"), "--out", tmp_path / "o", "--workers-per-gpu", 0) == 2
    assert "--workers-per-gpu" in capsys.readouterr().err
