"""`spd-bench plot`: Figure 2 (dev curves) and Figure 5 (train-dev gap) from real run directories."""
import argparse
import json

import matplotlib.image
import pytest

from harness.cli import build_parser
from harness.errors import UserError
from harness.plot import DEV_FIGSIZE, DPI, add_plot_command, gap_figsize, plot_run_dirs
from tests.helpers import fast_run

# train curves at every other step: 64 examples / batch 16 = 4 steps an epoch, 3 epochs = 12 steps
CURVES = ["train_eval_examples=32", "eval_steps=2"]
METHODS = ("spd", "sparse-kd", "dense")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    cache = tmp_path_factory.mktemp("cache")
    for method in METHODS:
        assert fast_run(method, "rte", out / "cells" / method, cache, sparsity=0.9, extra=CURVES) == 0
    return out


def pixels(size_inches):
    w, h = size_inches
    return round(h * DPI), round(w * DPI)


def test_history_has_train_and_dev_curves(runs):
    lines = [json.loads(x) for x in open(runs / "cells" / "spd" / "history.jsonl")]
    assert len(lines) >= 6
    assert all("train" in e and "score" in e["dev"] for e in lines)


def test_plot_writes_one_dev_figure_and_one_train_dev_figure_per_task(runs, tmp_path):
    dest = tmp_path / "figures"
    paths = plot_run_dirs(runs, dest)
    assert sorted(p.name for p in paths) == ["rte-dev.png", "rte-train-dev.png"]
    expected = {"rte-dev.png": pixels(DEV_FIGSIZE), "rte-train-dev.png": pixels(gap_figsize(len(METHODS)))}
    for path in paths:
        assert path.parent == dest and path.is_file() and path.stat().st_size > 1000
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == expected[path.name], path.name
        assert image.shape[2] in (3, 4)
        assert image[..., :3].std() > 0.01, f"{path.name} is blank"   # something was drawn
    assert not list(dest.glob(".*"))   # no temporary files left behind


def plot_parser():
    parser = argparse.ArgumentParser()
    add_plot_command(parser.add_subparsers(dest="command", required=True))
    return parser


def test_plot_command_defaults_to_out_figures(runs, capsys):
    args = plot_parser().parse_args(["plot", str(runs)])
    assert args.dest is None
    assert args.func(args) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and all(p.startswith(str(runs / "figures")) for p in printed)
    assert (runs / "figures" / "rte-dev.png").stat().st_size > 0


def test_plot_command_dest(runs, tmp_path, capsys):
    args = plot_parser().parse_args(["plot", str(runs), "--dest", str(tmp_path / "elsewhere")])
    assert args.func(args) == 0
    assert (tmp_path / "elsewhere" / "rte-train-dev.png").is_file()


def test_cli_plot_on_an_empty_directory_is_one_line_exit_2(tmp_path, capsys):
    from harness.cli import main
    if "plot" not in build_parser()._subparsers._group_actions[0].choices:
        pytest.skip("add_plot_command is not wired into harness/cli.py yet")
    assert main(["plot", str(tmp_path)]) == 2
    assert "no finished runs under" in capsys.readouterr().err


def test_no_finished_runs_is_a_user_error(tmp_path):
    (tmp_path / "cells" / ".half.partial").mkdir(parents=True)
    with pytest.raises(UserError, match="no finished runs under"):
        plot_run_dirs(tmp_path, tmp_path / "figures")
    with pytest.raises(UserError, match="no finished runs under"):
        plot_run_dirs(tmp_path / "missing", tmp_path / "figures")
