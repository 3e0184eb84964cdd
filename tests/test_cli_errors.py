"""A user's mistake: one line on stderr, exit code 2, no traceback, no result that looks complete."""
import subprocess
import sys
import time

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
    (["--task", "rte", "--method", "spd", "p0=high"], ["p0: must be a number in [0, 1] or null, got 'high'"]),
    (["--task", "rte", "--method", "spd", "preset=codez"], ["unknown SPD preset 'codez'", "official-code"]),
    (["--task", "rte", "--glue-dir", "/no/such/dir"], ["/no/such/dir does not exist"]),
    # values that used to train, or to finish as a 'done' cell that never pruned or never trained
    (["--task", "rte", "--method", "spd", "num_prune_events=0"], ["num_prune_events: must be a whole number >= 1"]),
    (["--task", "rte", "--method", "spd", "prune_epochs=0"], ["prune_epochs: must be a number > 0 or null, got 0"]),
    (["--task", "rte", "--method", "sparse-ft", "graft_epochs=-1"], ["graft_epochs: must be a number >= 0 or null"]),
    (["--task", "rte", "--method", "spd", "lr=-1"], ["lr: must be a number > 0 or null, got -1"]),
    (["--task", "rte", "--method", "spd", "warmup_ratio=5"], ["warmup_ratio: must be a number in [0, 1), got 5"]),
    (["--task", "rte", "--method", "spd", "temperature=0"], ["temperature: must be a number > 0, got 0"]),
    (["--task", "rte", "--method", "theseus", "epochs=-2"], ["epochs: must be a number > 0 or null, got -2"]),
    (["--task", "rte", "--method", "theseus", "replacing_rate=2"], ["replacing_rate: must be a number in [0, 1]"]),
    (["--task", "rte", "--method", "spd", "device=nosuch"], ["device: must be text matching", "got 'nosuch'"]),
    (["--task", "rte", "--method", "spd", "device=cuda:99"], ["device 'cuda:99'"]),
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


# ---- issue #13: every mistake below used to be a traceback, or was accepted, or took a minute ----

@pytest.mark.parametrize("argv, expected", [
    (["teacher_lr=-1"], "teacher_lr: must be a number > 0, got -1"),
    (["teacher_epochs=-1"], "teacher_epochs: must be a number > 0, got -1"),
    (["eval_steps=-1"], "eval_steps: must be a whole number >= 0, got -1"),
    (["batch_size=2.5"], "batch_size: must be a whole number >= 1, got 2.5"),
    (["max_seq_length=100000"], "max_seq_length: must be at most 512 for model 'tiny'"),
    (["precision=fp16"], "precision: must be one of 'auto', 'bf16', 'fp32', got 'fp16'"),
    (["teacher_lr=nan"], "teacher_lr: must be a number > 0, got 'nan'"),
    (["p0=true"], "p0: must be a number in [0, 1] or null, got True"),
    (["seed=3"], "seed is set with --seed, not seed=..."),     # task=cola beside --task rte used to run CoLA
    (["task=cola"], "task is set with --task, not task=..."),
    (["p0=0.5", "p0=0.6"], "setting 'p0' is given twice"),
    (["--seeds", "3"], "--seeds is an option of a grid"),          # ignored by a single run, until now
    (["--executor", "slurm"], "--executor is an option of a grid"),
])
def test_bad_run_setting_is_one_line_before_training(argv, expected, tmp_path, capsys):
    assert run_cli(*BASE, "--task", "rte", "--out", tmp_path / "o", "--cache", tmp_path / "c", *argv) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "c" / "teachers").exists()


def test_header_only_file_is_named(tmp_path, capsys):
    assert run_on_rte_files(tmp_path, GOOD_RTE, dev=GOOD_RTE.splitlines()[0] + "\n") == 2
    line = one_error_line(capsys)
    assert "dev.tsv: no examples (only a header line)" in line
    assert not (tmp_path / "o").exists()


def test_nul_byte_in_a_tsv_is_named(tmp_path, capsys):
    assert run_on_rte_files(tmp_path, GOOD_RTE + "1\te\0f\tg h\tentailment\n", GOOD_RTE) == 2
    assert "train.tsv:3: NUL byte" in one_error_line(capsys)


def test_glue_dir_naming_a_file_says_so(tmp_path, capsys):
    (tmp_path / "glue.tsv").write_text(GOOD_RTE)
    assert run_cli(*BASE[:-3], "--task", "rte", "--model", "tiny", "--glue-dir", tmp_path / "glue.tsv",
                   "--out", tmp_path / "o") == 2
    assert "is a file, not a directory" in one_error_line(capsys)


def test_plugin_with_a_syntax_error_is_one_line(tmp_path, capsys):
    plugin = tmp_path / "broken_syntax.py"
    plugin.write_text("from harness.registry import register_method\ndef build(:\n")
    assert run_cli("methods", "--plugin", plugin) == 2
    line = one_error_line(capsys)
    assert f"{plugin}:2: syntax error" in line


@pytest.mark.parametrize("body, expected", [
    ("x = 1\nraise RuntimeError('boom at import')\n", ":2: RuntimeError when imported: boom at import"),
    ("import nosuchmodule_xyz\n", ":1: ModuleNotFoundError when imported: No module named 'nosuchmodule_xyz'"),
])
def test_a_plugin_that_raises_when_imported_is_one_line_with_its_line(body, expected, tmp_path, capsys):
    plugin = tmp_path / "raiser.py"
    plugin.write_text(body)
    assert run_cli("methods", "--plugin", plugin) == 2
    assert f"{plugin}{expected}" in one_error_line(capsys)


def test_a_plugin_cannot_take_a_built_in_methods_name(tmp_path, capsys):
    """Its cells would be the rows of SPD in every table."""
    plugin = tmp_path / "clash.py"
    plugin.write_text("from dataclasses import dataclass\nfrom harness.registry import register_method\n"
                      "@dataclass\nclass S:\n    lr: float = 1.0\n"
                      "@register_method('spd', settings=S, description='not SPD')\ndef build(s, ctx):\n    pass\n")
    assert run_cli("methods", "--plugin", plugin) == 2
    assert "method name 'spd' is registered twice" in one_error_line(capsys)


def test_out_naming_an_existing_file_is_refused_before_training(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("mine\n")
    assert fast_run("dense", "rte", target, tmp_path / "c") == 2
    assert "is an existing file, not a directory" in one_error_line(capsys)
    assert target.read_text() == "mine\n"
    assert not (tmp_path / "c" / "teachers").exists()      # refused before any training


def test_out_holding_other_files_is_refused_and_nothing_is_removed(tmp_path, capsys):
    out = tmp_path / "x"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_text("p\n")
    assert fast_run("dense", "rte", out, tmp_path / "c") == 2
    assert "is not a finished spd-bench run directory" in one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "sub"]
    assert (out / "keep.txt").read_text() == "p\n"
    assert not (tmp_path / "c" / "teachers").exists()


def test_run_into_a_run_directory(tmp_path, capsys):
    """Same config: the finished run is replaced. Another config, or a file we did not write: refused."""
    out, cache = tmp_path / "run", tmp_path / "c"
    assert fast_run("dense", "rte", out, cache) == 0
    first = (out / "complete.json").read_bytes()
    assert fast_run("dense", "rte", out, cache) == 0                       # same config: replaced
    assert (out / "complete.json").exists() and not list(tmp_path.glob(".run.*"))
    capsys.readouterr()
    assert fast_run("dense", "rte", out, cache, extra=["max_eval_examples=32"]) == 2
    assert "holds a finished run of another config" in one_error_line(capsys)
    (out / "notes.md").write_text("my notes\n")
    assert fast_run("dense", "rte", out, cache) == 2
    assert "'notes.md', which spd-bench did not write" in one_error_line(capsys)
    assert (out / "notes.md").read_text() == "my notes\n" and len(first) > 0


def test_empty_directory_is_a_fine_output(tmp_path):
    out = tmp_path / "made-by-mkdir"
    out.mkdir()
    assert fast_run("dense", "rte", out, tmp_path / "c") == 0
    assert (out / "metrics.json").exists()


def write_yaml(path, text):
    path.write_text(text)
    return path


GRID = ("name: g\nmodel: tiny\nglue_dir: samples\nseeds: [1]\ntasks: [rte]\n"
        "methods:\n  - {method: spd, sparsity: 0.5}\n")


@pytest.mark.parametrize("text, expected", [
    ("", "empty; a grid needs at least 'tasks' and 'methods'"),
    ("# nothing but a comment\n", "empty;"),
    ("- a list\n", "must be a mapping"),
    (GRID.replace("sparsity: 0.5", "sparsity: abc"), "methods[0].sparsity: must be a number in [0, 1), got 'abc'"),
    (GRID.replace("sparsity: 0.5", "sparsity: 1.5"), "methods[0].sparsity: must be a number in [0, 1), got 1.5"),
    (GRID + "tables: [7]\n", "tables[0]: must be 1, 2 or 3, got 7"),
    (GRID + "tasks: [cola]\n", "found duplicate key 'tasks'"),
    (GRID + "run: {teacher_lr: -1}\n", "run.teacher_lr: must be a number > 0, got -1"),
    (GRID + "run: {eval_steps: -1}\n", "run.eval_steps: must be a whole number >= 0"),
    (GRID + "run: {seed: 3}\n", "run.seed: not allowed in a run section"),
    (GRID + "run: {max_seq_length: 100000}\n", "max_seq_length: must be at most 512"),
    (GRID + "seeds: 3\n", "found duplicate key 'seeds'"),
    (GRID.replace("seeds: [1]", "seeds: 3"), "seeds: must be a list, got 3"),
    (GRID.replace("tasks: [rte]", "tasks: []"), "tasks: must not be empty"),
    (GRID.replace("tasks: [rte]", "tasks: [rte, 5]"), "tasks[1]: must be text, got 5"),
    (GRID.replace("{method: spd, sparsity: 0.5}", "{method: spd, settings: {p0: high}}"),
     "methods[0].settings.p0: must be a number in [0, 1] or null, got 'high'"),
    (GRID + "task_overrides: {rte: {settings: {p0: x}}}\n", "task_overrides.rte.settings.p0: must be a number"),
    (GRID + "task_overrides: {cola: {run: {eval_steps: 1}}}\n", "task_overrides.cola: not one of the grid's tasks"),
    (GRID.replace("{method: spd, sparsity: 0.5}", "{method: spd, settings: {preset: codez}}"),
     "methods[0].settings: unknown SPD preset 'codez'"),
    ("name: [unclosed\n", "not valid YAML (line 2)"),
    (GRID.replace("name: g", "name: ../escaped"), "name: string should match pattern"),   # runs/../escaped
    (GRID.replace("{method: spd, sparsity: 0.5}", "{method: spd, sparsity: 0.5, settings: {num_prune_events: 0}}"),
     "methods[0].settings.num_prune_events: must be a whole number >= 1"),
])
def test_grid_mistakes_are_one_line_before_anything_runs(text, expected, tmp_path, capsys):
    config = write_yaml(tmp_path / "g.yaml", text)
    assert run_cli("run", config, "--out", tmp_path / "o", "--quiet") == 2
    line = one_error_line(capsys)
    assert f"{config}: " in line and expected in line, line
    assert not (tmp_path / "o").exists()


def test_another_grid_cannot_take_over_a_grid_output(tmp_path, capsys):
    """Its grid.json would replace the first grid's, while the first grid's cells stayed in the tables."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "grid.json").write_text('{"name": "first", "tables": [], "cells": []}')
    config = write_yaml(tmp_path / "g.yaml", GRID)
    assert run_cli("run", config, "--out", out, "--quiet") == 2
    assert "holds grid 'first', not 'g'; nothing was run" in one_error_line(capsys)
    assert (out / "grid.json").read_text() == '{"name": "first", "tables": [], "cells": []}'


@pytest.mark.parametrize("argv", [["lr=1"], ["--quiet", "lr=1"], ["lr=1", "--quiet"]])
def test_key_value_after_a_grid_says_where_settings_go(argv, tmp_path, capsys):
    config = write_yaml(tmp_path / "g.yaml", GRID)
    assert run_cli("run", config, "--out", tmp_path / "o", *argv) == 2
    line = one_error_line(capsys)
    assert "settings of a grid go in its YAML" in line and "'run:'" in line and "'settings:'" in line


def test_key_value_after_an_option_still_reaches_a_single_run(tmp_path, capsys):
    assert run_cli(*BASE, "--task", "rte", "--out", tmp_path / "o", "teacher_lr=-1", "--seed", 3) == 2
    assert "teacher_lr: must be a number > 0" in one_error_line(capsys)


@pytest.fixture
def no_network(monkeypatch):
    """The hub as a machine without network sees it: not offline by choice, and nothing listens."""
    from huggingface_hub import constants

    from harness import hub, models
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")   # discard port: refused at once
    for name in hub.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    hub._probe.cache_clear()
    models.max_positions.cache_clear()
    yield
    hub._probe.cache_clear()
    models.max_positions.cache_clear()


def test_unknown_hub_model_without_network_is_one_fast_line(no_network, tmp_path, capsys):
    t0 = time.time()
    assert run_cli(*BASE, "--task", "rte", "--model", "nobody/no-such-bert", "--out", tmp_path / "o",
                   "--cache", tmp_path / "c") == 2
    assert time.time() - t0 < 10
    line = one_error_line(capsys)
    assert "'nobody/no-such-bert'" in line and "the hub cannot be reached" in line and "tiny" in line


def test_glue_dir_hub_without_network_is_one_fast_line(no_network, tmp_path, capsys):
    t0 = time.time()
    assert run_cli("run", "--task", "rte", "--model", "tiny", "--glue-dir", "hub", "--quiet",
                   "--out", tmp_path / "o", "--cache", tmp_path / "c") == 2
    assert time.time() - t0 < 10
    line = one_error_line(capsys)
    assert "--glue-dir hub: the Hugging Face hub cannot be reached" in line and "HF_HUB_OFFLINE=1" in line


def test_glue_dir_hub_offline_without_a_cache_is_one_line(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-datasets-cache"))
    assert run_cli("run", "--task", "rte", "--model", "tiny", "--glue-dir", "hub", "--quiet",
                   "--out", tmp_path / "o", "--cache", tmp_path / "c") == 2
    assert "--glue-dir hub: cannot load nyu-mll/glue rte" in one_error_line(capsys)


def test_help_says_plugins_are_code(capsys):
    for argv in (["--help"], ["run", "--help"], ["methods", "--help"]):
        with pytest.raises(SystemExit):
            run_cli(*argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "Plugins are code" in text and "SPD_BENCH_PLUGINS" in text, argv


def test_grid_out_holding_other_files_is_refused(tmp_path, capsys):
    config = write_yaml(tmp_path / "g.yaml", GRID)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "table1.md").write_text("my table\n")
    assert run_cli("run", config, "--out", out, "--quiet") == 2
    assert "is not a grid output directory (it holds 'table1.md')" in one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["table1.md"]
    (tmp_path / "file").write_text("x")
    assert run_cli("run", config, "--out", tmp_path / "file", "--quiet") == 2
    assert "is an existing file, not a directory" in one_error_line(capsys)


def test_an_output_path_of_the_wrong_kind_is_one_line(tmp_path, capsys):
    """--out / --dest / --cache naming a folder where a file goes, or a file where a folder goes."""
    from tests.conftest import REPO
    grid = REPO / "tests" / "data" / "report-grid"
    folder, file = tmp_path / "folder", tmp_path / "file.txt"
    folder.mkdir()
    file.write_text("mine\n")
    for argv, named in [(["table", "1", grid, "--out", folder], folder), (["report", grid, "--dest", folder], folder),
                        (["plot", grid, "--dest", file], file),
                        (["run", "--task", "rte", "--model", "tiny", "--glue-dir", "samples", "--cache", file,
                          "--out", tmp_path / "o"], file)]:
        assert run_cli(*argv) == 2, argv
        line = one_error_line(capsys)
        assert line.startswith(f"spd-bench: error: {named}"), line
        assert line.endswith((": is a directory", ": not a directory", ": file exists")), line
    assert file.read_text() == "mine\n" and not list(folder.iterdir()) and not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]    # no temporary file left


@pytest.mark.parametrize("argv, expected", [
    (["--tflops", "-5"], "--tflops must be a positive number, got -5.0"),      # printed '-0.0 GPU-hours'
    ([], "cannot load model 'nosuchmodel-xyz'"),                               # was half a minute of hub retries
])
def test_plan_mistakes_are_one_line(argv, expected, tmp_path, capsys):
    text = GRID if argv else GRID.replace("model: tiny", "model: nosuchmodel-xyz")
    assert run_cli("plan", write_yaml(tmp_path / "g.yaml", text), *argv) == 2
    assert expected in one_error_line(capsys)
