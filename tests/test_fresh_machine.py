"""A grid continued on a fresh machine (#14): cell outputs without weights are enough, and a teacher retrained
there is recognisably the same teacher (or recorded as a different one)."""
import json
import shutil

import pytest

from tests.helpers import fast_run


@pytest.mark.slow
def test_a_run_without_weights_keeps_everything_else(tmp_path, cache_dir):
    out = tmp_path / "run"
    assert fast_run("spd", "rte", out, cache_dir, extra=["save_model=false"]) == 0
    assert not (out / "model").exists()
    for name in ("metrics.json", "config.json", "manifest.json", "sparsity.json", "predictions.jsonl",
                 "history.jsonl"):
        assert (out / name).is_file(), name
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 1_000_000


@pytest.mark.slow
def test_a_retrained_teacher_is_the_same_teacher_and_cells_record_which(tmp_path):
    first, second = tmp_path / "cache-a", tmp_path / "cache-b"   # two machines' caches
    assert fast_run("sparse-ft", "mrpc", tmp_path / "a", first) == 0
    assert fast_run("sparse-ft", "mrpc", tmp_path / "b", second) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["teacher_weights_sha256"] and a["teacher_weights_sha256"] == b["teacher_weights_sha256"]
    shutil.rmtree(second)
    # another teacher (other hyper-parameters) is recorded as such
    assert fast_run("sparse-ft", "mrpc", tmp_path / "c", second, extra=["teacher_lr=1e-3"]) == 0
    c = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert c["teacher_weights_sha256"] != a["teacher_weights_sha256"]
