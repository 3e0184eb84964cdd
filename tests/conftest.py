import copy
import os
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

REPO = Path(__file__).resolve().parents[1]
SHARED_GLUE = REPO.parent / "shared" / "glue"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Counted once, before any test hides the GPUs from its child processes (torch caches the count).
CUDA_AT_START = torch.cuda.device_count()


@pytest.fixture(autouse=True)
def cpu_outside_the_cuda_tier(request, monkeypatch):
    """On a GPU machine (`make test-gpu`) a test outside the `cuda` tier still runs on the CPU, as in CI: its expected
    values are CPU fp32 ones (test_pinned, the calibration bounds, bit-identical resumes); the `cuda` tier is where
    CUDA is tested. In this process torch reports no GPU; a child process gets CUDA_VISIBLE_DEVICES=''."""
    if CUDA_AT_START and request.node.get_closest_marker("cuda") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def tiny_bert(num_labels=2, layers=4, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                     attn_implementation="eager", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.fixture
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def deep(model):
    return copy.deepcopy(model)


@pytest.fixture(scope="session")
def spd_rte_run(tmp_path_factory):
    """One finished tiny SPD cell on RTE (50% sparse, seed 1) and its cache, shared read-only by the tests of
    evaluation (test_eval) and model cards (test_modelcard). Tests must not change it."""
    from tests.helpers import fast_run
    root = tmp_path_factory.mktemp("spd-rte")
    assert fast_run("spd", "rte", root / "run", root / "cache", sparsity=0.5) == 0
    return root / "run", root / "cache"
