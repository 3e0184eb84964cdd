"""Long cells resume mid-training: a run stopped by SIGTERM (preemption) and then killed by SIGKILL, re-run each
time with the same command, ends bit-identical to an uninterrupted run on the CPU."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from harness.resume import Checkpointer
from tests.conftest import REPO
from tests.helpers import FAST_RUN, run_cli

# 32 steps (prune 12, graft 12, fine-tune 8), a mid-training checkpoint after every step (checkpoint_minutes ~ 1 ms).
LONG = ["prune_epochs=3", "graft_epochs=3", "finetune_epochs=2", "lr=1e-3", "eval_steps=5",
        "checkpoint_minutes=0.00001"]


def command(out, cache):
    return [sys.executable, "-m", "harness.cli", "run", "--method", "spd", "--task", "rte", "--model", "tiny",
            "--sparsity", "0.5", "--glue-dir", "samples", "--out", str(out), "--cache", str(cache), "--quiet",
            "--seed", "1", *FAST_RUN, *LONG]


def saved_step(out) -> int:
    try:
        name = (out.parent / f".{out.name}.state" / "current").read_text().strip()
    except OSError:
        return -1
    return int(name.removeprefix("step-"))


def interrupt(out, cache, sig, at_least: int) -> int:
    """Start the run, send `sig` once it has saved a state at step >= at_least; returns its exit code."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command(out, cache), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while saved_step(out) < at_least:
        assert proc.poll() is None, f"the run ended before step {at_least}: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc.returncode


def result(out) -> tuple:
    metrics = json.loads((out / "metrics.json").read_text())
    weights = load_file(out / "model" / "model.safetensors")
    return (metrics["final"], metrics["best"], metrics["best_any"], (out / "predictions.jsonl").read_text(),
            (out / "history.jsonl").read_text(), weights)


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_is_bit_identical(tmp_path):
    cache = tmp_path / "cache"
    reference = tmp_path / "reference"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert run_cli(*command(reference, cache)[3:]) == 0            # in-process: one interpreter start less
    assert not (tmp_path / ".reference.state").exists()         # a finished run leaves no state behind

    out = tmp_path / "interrupted"
    assert interrupt(out, cache, signal.SIGTERM, at_least=6) == 143   # preempted: state saved, says so
    first = saved_step(out)
    assert not (out / "metrics.json").exists()
    assert interrupt(out, cache, signal.SIGKILL, at_least=first + 10) == -signal.SIGKILL
    assert saved_step(out) > first
    subprocess.run(command(out, cache), cwd=REPO, env=env, check=True, capture_output=True)

    ours, theirs = result(out), result(reference)
    assert ours[:5] == theirs[:5]                                 # metrics, predictions and the whole curve
    assert ours[5].keys() == theirs[5].keys()
    for name, tensor in theirs[5].items():
        assert torch.equal(ours[5][name], tensor), name
    assert not (tmp_path / ".interrupted.state").exists()


def test_a_state_of_another_config_is_never_resumed(tmp_path):
    model = torch.nn.Linear(2, 2)
    Checkpointer(tmp_path / "s", identity="config A").save(3, model, {}, {"step": 3})
    assert Checkpointer(tmp_path / "s", identity="config B").load() is None
    tensors, masks, state = Checkpointer(tmp_path / "s", identity="config A").load()
    assert state["step"] == 3 and set(tensors) == {"weight", "bias"} and masks == {}


def test_a_half_written_snapshot_is_ignored(tmp_path):
    ckpt = Checkpointer(tmp_path / "s", identity="A")
    ckpt.save(3, torch.nn.Linear(2, 2), {}, {"step": 3})
    (tmp_path / "s" / "step-3" / "loop.pt").write_bytes(b"truncated")
    assert ckpt.load() is None
