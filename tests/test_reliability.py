"""Issue #13: results are whole or not counted, nothing foreign is removed, permissions are conventional,
the same seed gives the same run, and the guarantees are written down."""
import json
import os
import stat

import pytest
from safetensors.torch import load_file

from harness import store
from harness.errors import UserError
from harness.results import Result, load_results
from tests.conftest import REPO
from tests.helpers import fast_run


def test_results_have_conventional_permissions(tmp_path):
    # tempfile makes 0700 directories and 0600 files: a result nobody else in the group could read
    previous = os.umask(0o022)
    try:
        assert fast_run("dense", "rte", tmp_path / "run", tmp_path / "cache") == 0
    finally:
        os.umask(previous)
    checked = 0
    for root in (tmp_path / "run", tmp_path / "cache" / "teachers", tmp_path / "cache" / "tokenized"):
        for path in [root, *root.rglob("*")]:
            if path.suffix == ".lock":
                continue   # filelock's, not a result
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"
            checked += 1
    assert checked > 20


def test_same_seed_gives_the_same_run_on_the_cpu(tmp_path):
    # separate caches: the teacher is trained twice too
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert fast_run("spd", "rte", run, tmp_path / f"cache-{run.name}") == 0
    a, b = (json.loads((run / "metrics.json").read_text()) for run in runs)
    for part in ("final", "best", "teacher", "achieved_sparsity", "params"):
        assert a[part] == b[part], part
    assert (runs[0] / "predictions.jsonl").read_bytes() == (runs[1] / "predictions.jsonl").read_bytes()
    assert (runs[0] / "history.jsonl").read_bytes() == (runs[1] / "history.jsonl").read_bytes()
    wa, wb = (load_file(run / "model" / "model.safetensors") for run in runs)
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("finished")
    assert fast_run("dense", "rte", base / "run", base / "cache") == 0
    return base / "run"


def copy_of(run, tmp_path):
    import shutil
    target = tmp_path / "copy" / "run"
    shutil.copytree(run, target)
    return target


def test_the_completion_record_lists_every_file(finished_run):
    record = json.loads((finished_run / store.RECORD).read_text())["files"]
    on_disk = {p.relative_to(finished_run).as_posix() for p in finished_run.rglob("*") if p.is_file()}
    assert set(record) == on_disk - {store.RECORD}
    assert {"metrics.json", "predictions.jsonl", "model/model.safetensors", store.MARKER} <= set(record)
    assert store.completion_problem(finished_run, full=True) is None


@pytest.mark.parametrize("damage, problem", [
    ("predictions.jsonl", "predictions.jsonl has"),
    ("model/model.safetensors", "model/model.safetensors has"),
    ("history.jsonl", "history.jsonl has"),
])
def test_a_half_written_file_is_not_a_result(finished_run, tmp_path, damage, problem):
    run = copy_of(finished_run, tmp_path)
    assert [r.run_dir for r in load_results(tmp_path / "copy")] == [run]
    data = (run / damage).read_bytes()
    (run / damage).write_bytes(data[:len(data) // 2])
    assert problem in store.completion_problem(run)
    assert load_results(tmp_path / "copy") == []


def test_runs_from_before_completion_records_are_still_checked(finished_run, tmp_path):
    run = copy_of(finished_run, tmp_path)
    (run / store.RECORD).unlink()
    (run / store.MARKER).unlink()
    assert store.completion_problem(run) is None and len(load_results(tmp_path / "copy")) == 1
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert store.completion_problem(run) == "model/model.safetensors is truncated"
    weights.unlink()
    (run / "predictions.jsonl").write_text('{"idx": 0, "predi')
    assert store.completion_problem(run) == "predictions.jsonl is damaged"
    assert load_results(tmp_path / "copy") == []


def test_unreadable_predictions_are_one_line_naming_the_file(tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"idx": 0, "prediction": 1, "label": 1}\n{"idx": 1, "pre')
    result = Result("rte", "spd", "tiny", 0.5, 1, 50.0, 10, tmp_path)
    with pytest.raises(UserError, match=r"predictions.jsonl:2: unreadable") as err:
        result.predictions()
    assert "\n" not in str(err.value)


def test_a_directory_appearing_during_a_run_is_never_replaced(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(UserError, match="nothing was removed"):
        with store.atomic_dir(final) as tmp:
            (tmp / "metrics.json").write_text("{}")
            final.mkdir()
            (final / "theirs.txt").write_text("keep")
    assert (final / "theirs.txt").read_text() == "keep"
    kept = list(tmp_path.glob(".out.*.kept"))
    assert len(kept) == 1 and store.completion_problem(kept[0]) is None


def test_the_guarantees_are_written_down():
    readme = (REPO / "README.md").read_text()
    guarantees = (REPO / "docs" / "guarantees.md").read_text()
    assert "docs/guarantees.md" in readme and "SPD_BENCH_PLUGINS" in readme
    for text in ("Plugins are code", "SPD_BENCH_PLUGINS", "complete.json", "sha256", "SIGKILL",
                 "never removes", "umask"):
        assert text in guarantees, text
    assert "Plugins are code" in (REPO / "docs" / "adding-a-method.md").read_text()
