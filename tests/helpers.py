"""Shared settings for end-to-end tests: the tiny model on the built-in samples with a few steps."""
import os

from harness.cli import main
from tests.conftest import REPO

# 64 train examples, batch 16: 4 steps an epoch. Enough for every stage to run and for the checks to bite.
FAST_RUN = ["max_train_examples=64", "batch_size=16", "teacher_epochs=2", "teacher_lr=2e-3",
            "train_eval_examples=0", "eval_steps=1000", "max_eval_examples=64"]
FAST_SPD = ["prune_epochs=1", "graft_epochs=1", "finetune_epochs=1", "lr=1e-3"]
FAST_SETTINGS = {
    "spd": FAST_SPD, "sparse-kd": FAST_SPD, "sparse-progressive": FAST_SPD,
    "sparse-ft": ["prune_epochs=1", "graft_epochs=1", "finetune_epochs=1", "lr=1e-3"],
    "theseus": ["epochs=2", "lr=1e-3"],
    "dense": [],
}


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def fast_run(method, task, out, cache, sparsity=0.5, extra=(), settings=None):
    """`settings`: the method's key=value settings instead of FAST_SETTINGS[method]; a key=value in `extra`
    replaces FAST_RUN's or the settings' (the CLI refuses a key given twice)."""
    return run_cli("run", "--method", method, "--task", task, "--model", "tiny", "--sparsity", sparsity,
                   "--glue-dir", "samples", "--out", out, "--cache", cache, "--quiet", "--seed", 1,
                   *merged(FAST_RUN, FAST_SETTINGS[method] if settings is None else settings, extra))


def merged(*arg_lists) -> list[str]:
    """The arguments of several lists, a later key=value replacing an earlier one of the same key (the CLI
    refuses a key given twice); options such as `--plugin FILE` kept, after them."""
    given = [str(a) for args in arg_lists for a in args]
    setting = [("=" in a and not a.startswith("-")) for a in given]
    pairs = {a.partition("=")[0]: a for a, is_pair in zip(given, setting) if is_pair}
    return [*pairs.values(), *(a for a, is_pair in zip(given, setting) if not is_pair)]


def child_env() -> dict:
    """The environment of a test's child `python`: this checkout first on PYTHONPATH, what was there kept (the GPU
    machine's bundle puts the packages its image lacks there)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
