"""A new method is one file: registered by decorator (file plugin) or by an installed entry point."""
import json
import shutil
import sys

import pytest

import harness.registry as registry
from tests.conftest import REPO
from tests.helpers import FAST_RUN, run_cli

PLUGIN = REPO / "examples" / "oneshot_kd" / "oneshot_kd.py"


@pytest.fixture
def clean_registry(monkeypatch):
    """The built-in registry without the example, so each test proves its own discovery path."""
    registry.all_methods()  # built-ins register on first import only: load them before the copy
    monkeypatch.setattr(registry, "METHODS", {k: v for k, v in registry.METHODS.items() if k != "oneshot-kd"})
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_loaded_files", set())
    monkeypatch.delenv(registry.PLUGIN_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "oneshot_kd", raising=False)
    yield
    sys.modules.pop("oneshot_kd", None)


def check_oneshot_run(out):
    sparsity = json.loads((out / "sparsity.json").read_text())
    assert sparsity["overall"] == pytest.approx(0.9, abs=1e-4)          # one global threshold...
    per_matrix = {m["sparsity"] for m in sparsity["matrices"].values()}
    assert max(per_matrix) - min(per_matrix) > 0.01                     # ...so matrices differ
    assert json.loads((out / "metrics.json").read_text())["method"] == "oneshot-kd"


def test_plugin_file_by_decorator(clean_registry, tmp_path, capsys):
    assert run_cli("methods", "--plugin", PLUGIN) == 0
    assert "oneshot-kd" in capsys.readouterr().out
    out = tmp_path / "run"
    assert run_cli("run", "--plugin", PLUGIN, "--method", "oneshot-kd", "--task", "rte", "--model", "tiny",
                   "--sparsity", 0.9, "--glue-dir", "samples", "--out", out, "--cache", tmp_path / "c",
                   "--quiet", *FAST_RUN, "epochs=1") == 0
    check_oneshot_run(out)


def test_plugin_by_entry_point(clean_registry, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(PLUGIN, site / "oneshot_kd.py")
    dist = site / "spd_bench_oneshot_kd-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: spd-bench-oneshot-kd\nVersion: 0.1.0\n")
    # what `pip install examples/oneshot_kd` writes, from the example's pyproject.toml
    (dist / "entry_points.txt").write_text("[spd_bench.methods]\noneshot-kd = oneshot_kd\n")
    monkeypatch.syspath_prepend(str(site))
    assert "oneshot-kd" in registry.all_methods()
    out = tmp_path / "run"
    assert run_cli("run", "--method", "oneshot-kd", "--task", "stsb", "--model", "tiny", "--sparsity", 0.9,
                   "--glue-dir", "samples", "--out", out, "--cache", tmp_path / "c", "--quiet",
                   *FAST_RUN, "epochs=1") == 0
    check_oneshot_run(out)


def test_example_pyproject_declares_the_entry_point():
    import tomllib
    meta = tomllib.loads((REPO / "examples" / "oneshot_kd" / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["spd_bench.methods"] == {"oneshot-kd": "oneshot_kd"}


def test_misspelled_method_lists_plugins_too(clean_registry, tmp_path, capsys):
    assert run_cli("run", "--plugin", PLUGIN, "--method", "oneshot", "--task", "rte", "--model", "tiny") == 2
    line = capsys.readouterr().err.strip()
    assert "unknown method 'oneshot'" in line and "oneshot-kd" in line and "spd" in line
