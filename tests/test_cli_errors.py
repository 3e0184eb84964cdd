"""A user's mistake: one line on stderr, exit code 2, no traceback, no result that looks complete."""
import subprocess
import sys

import pytest

from tests.helpers import fast_run, run_cli

BASE = ["run", "--model", "tiny", "--glue-dir", "samples", "--quiet"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("spd-bench: error: ")
    return err[0]


@pytest.mark.parametrize("argv, expected", [
    (["--task", "nope", "--method", "spd"], ["unknown task 'nope'", "cola", "mnli", "wnli"]),
    (["--task", "rte", "--method", "spdd"], ["unknown method 'spdd'", "sparse-kd", "theseus"]),
    (["--task", "rte", "--method", "spd", "--sparsity", "1.0"], ["sparsity: must be a number in [0, 1), got 1.0"]),
    (["--task", "rte", "--method", "spd", "--sparsity", "-0.1"], ["sparsity: must be a number in [0, 1)"]),
    (["--task", "rte", "--method", "spd", "pzero=0.5"], ["unknown setting 'pzero'", "p0", "prune_epochs"]),
    (["--task", "rte", "--method", "spd", "p0=high"], ["p0: must be a number or null, got 'high'"]),
    (["--task", "rte", "--method", "spd", "preset=codez"], ["unknown SPD preset 'codez'", "official-code"]),
    (["--task", "rte", "--glue-dir", "/no/such/dir"], ["/no/such/dir does not exist"]),
])
def test_bad_input_is_one_line_and_exit_2(argv, expected, tmp_path, capsys):
    assert run_cli(*BASE, "--out", tmp_path / "o", "--cache", tmp_path / "c", *argv) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line
    assert not (tmp_path / "o").exists()


def test_unknown_model_lists_the_builtin_names(tmp_path, capsys):
    code = run_cli("run", "--task", "rte", "--model", "/no/such/model", "--glue-dir", "samples",
                   "--out", tmp_path / "o", "--cache", tmp_path / "c")
    assert code == 2
    line = one_error_line(capsys)
    assert "/no/such/model" in line and "tiny" in line and "minilm" in line


GOOD_RTE = "index\tsentence1\tsentence2\tlabel\n0\ta b\tc d\tentailment\n"


def run_on_rte_files(tmp_path, train: str, dev: str | None) -> int:
    """`spd-bench run` on a glue dir holding only the RTE files given (dev=None: no dev.tsv)."""
    glue = tmp_path / "glue"
    (glue / "RTE").mkdir(parents=True)
    (glue / "RTE" / "train.tsv").write_text(train)
    if dev is not None:
        (glue / "RTE" / "dev.tsv").write_text(dev)
    return run_cli("run", "--task", "rte", "--model", "tiny", "--glue-dir", glue, "--out", tmp_path / "o",
                   "--cache", tmp_path / "c")


def test_missing_task_file_is_named(tmp_path, capsys):
    assert run_on_rte_files(tmp_path, GOOD_RTE, dev=None) == 2
    assert "dev.tsv" in one_error_line(capsys)


def test_malformed_row_names_file_and_line(tmp_path, capsys):
    assert run_on_rte_files(tmp_path, GOOD_RTE + "1\tonly two\n", GOOD_RTE) == 2
    assert "train.tsv:3" in one_error_line(capsys)


def test_label_outside_the_label_set_is_named(tmp_path, capsys):
    assert run_on_rte_files(tmp_path, GOOD_RTE + "1\te f\tg h\tmaybe\n", GOOD_RTE) == 2
    line = one_error_line(capsys)
    assert "maybe" in line and "not_entailment" in line
    assert not (tmp_path / "o").exists()


def test_nan_loss_stops_the_run_without_metrics(tmp_path, capsys):
    code = fast_run("dense", "rte", tmp_path / "o", tmp_path / "c", extra=["teacher_lr=1e30"])
    assert code == 2
    line = one_error_line(capsys)
    assert "loss became" in line
    assert not (tmp_path / "o").exists()
    assert not list((tmp_path / "c").glob("teachers/*/metrics.json"))


def test_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--task", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
