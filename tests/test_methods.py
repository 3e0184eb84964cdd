"""Every method runs on a classification task and on STS-B; each reaches what it promises."""
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import fast_run

METHODS = ["dense", "spd", "sparse-ft", "sparse-kd", "sparse-progressive", "theseus"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("task", ["mrpc", "stsb"])
@pytest.mark.parametrize("method", METHODS)
def test_method_runs(method, task, tmp_path, cache):
    out = tmp_path / "run"
    assert fast_run(method, task, out, cache, sparsity=0.75) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    sparsity = json.loads((out / "sparsity.json").read_text())
    if method.startswith("sparse") or method == "spd":
        for name, m in sparsity["matrices"].items():
            assert m["zeros"] == round(0.75 * m["numel"]), name
    else:
        assert sparsity["overall"] < 0.01
    assert metrics["encoder_layers"] == (2 if method == "theseus" else 4)
    if method == "dense":  # the cached teacher, unchanged
        teacher = json.loads((out / "config.json").read_text())["teacher"]
        ours = load_file(out / "model" / "model.safetensors")
        theirs = load_file(f"{teacher}/model/model.safetensors")
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert metrics["final"]["dev"] == metrics["teacher"]["dev"]
