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
from tests.helpers import FAST_RUN, child_env, merged, run_cli

# 32 steps (prune 12, graft 12, fine-tune 8), a mid-training checkpoint after every step (checkpoint_minutes ~ 1 ms).
LONG = ["prune_epochs=3", "graft_epochs=3", "finetune_epochs=2", "lr=1e-3", "eval_steps=5",
        "checkpoint_minutes=0.00001"]


def command(out, cache):
    return [sys.executable, "-m", "harness.cli", "run", "--method", "spd", "--task", "rte", "--model", "tiny",
            "--sparsity", "0.5", "--glue-dir", "samples", "--out", str(out), "--cache", str(cache), "--quiet",
            "--seed", "1", *merged(FAST_RUN, LONG)]


def saved_step(out) -> int:
    try:
        name = (out.parent / f".{out.name}.state" / "current").read_text().strip()
    except OSError:
        return -1
    return int(name.removeprefix("step-"))


def interrupt(out, cache, sig, at_least: int) -> int:
    """Start the run, send `sig` once it has saved a state at step >= at_least; returns its exit code."""
    env = child_env()
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
    env = child_env()
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


# --- a grid stopped by SIGTERM --------------------------------------------------------------------------------
LONG_SETTINGS = {"prune_epochs": 2, "graft_epochs": 2, "finetune_epochs": 1, "lr": 1e-3}  # 20 steps


def preemptible_grid(path, workers: int):
    from tests.test_grid import write_grid
    run = {"max_train_examples": 64, "batch_size": 16, "teacher_epochs": 2, "teacher_lr": 2e-3,
           "train_eval_examples": 0, "eval_steps": 5, "max_eval_examples": 64, "checkpoint_minutes": 0.00001}
    return write_grid(path, tasks=["rte"], tables=[], run=run, workers_per_gpu=workers,
                      methods=[{"method": "spd", "sparsity": 0.5, "settings": LONG_SETTINGS},
                               {"method": "sparse-kd", "sparsity": 0.5, "settings": LONG_SETTINGS},
                               {"method": "sparse-ft", "sparsity": 0.5, "settings": LONG_SETTINGS}])


def cell_states(out) -> list[int]:
    steps = []
    for current in (out / "cells").glob(".*.state/current"):
        try:
            steps.append(int(current.read_text().strip().removeprefix("step-")))
        except (OSError, ValueError):
            pass
    return steps


def finals(out) -> dict:
    return {p.parent.name: json.loads(p.read_text())["final"] for p in (out / "cells").glob("*/metrics.json")}


@pytest.mark.slow
@pytest.mark.parametrize("workers, whom", [(1, "group"), (2, "runner")])
def test_a_preempted_grid_stops_records_no_failure_and_finishes_on_a_rerun(tmp_path, workers, whom):
    """SIGTERM to the whole process group (what `timeout` and SLURM do) or to the runner alone (`kill PID`): the
    grid stops with exit 143, the cells in flight keep their state, nothing is recorded as failed, no further
    cell starts; the same command then finishes the grid (that a resumed cell ends as an uninterrupted one does is
    the test above)."""
    config = preemptible_grid(tmp_path / "grid.yaml", workers)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.cli", "run", str(config), "--out", str(out), "--quiet"]
    env = child_env()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not any(step >= 4 for step in cell_states(out)):
        assert proc.poll() is None, f"the grid ended before a cell reached step 4: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    if whom == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "re-run the same command" in err.strip().splitlines()[-1]
    assert not list(out.glob("failed/*.json"))        # a preempted cell is not a failed one
    assert len(finals(out)) < 3                       # it stopped: not every cell ran to the end
    assert cell_states(out)                           # the cell(s) in flight kept their state
    assert subprocess.run(cmd, cwd=REPO, env=env, capture_output=True).returncode == 0
    assert len(finals(out)) == 3 and not list(out.glob("failed/*.json"))
    assert not list((out / "cells").glob(".*.state"))


# --- in-process runs: Theseus's official recipe on the tiny BERT, through the loop ----------------------------------
def theseus_run(tmp_path, checkpoint=None, on_step=None):
    """Theseus's official recipe (zero_grad=zeros, clip_grad_over=all), 12 steps; returns the final weights."""
    import copy

    from harness.tasks import get_task
    from harness.train import Hooks, LoopConfig, train
    from tests.conftest import tiny_bert
    from tests.test_faithfulness import _theseus_batches, build, context

    batches = _theseus_batches(4)
    recipe = build("theseus", context("rte", steps_per_epoch=4, teacher=copy.deepcopy(tiny_bert())), epochs=3,
                   lr=1e-2, replacing_rate=0.3)
    assert recipe.zero_grad_to_none is False and recipe.clip_all_parameters
    train(recipe, get_task("rte"), lambda epoch: iter(batches), batches, torch.device("cpu"),
          LoopConfig(eval_steps=1000, progress=False, checkpoint=checkpoint), hooks=Hooks(on_step=on_step))
    return recipe.model.state_dict()


def test_a_resumed_official_recipe_keeps_stepping_modules_out_of_the_batch(tmp_path):
    """The official code's `model.zero_grad()` leaves a zero gradient on every parameter once stepped, so AdamW
    keeps moving a successor the next draw leaves out. A resumed run must have those zero gradients too (a
    freed gradient skips the parameter): stopped by SIGTERM at step 5 and resumed in-process, Theseus's
    official recipe ends bit-identical to an uninterrupted run."""
    from harness.train import Preempted

    reference = theseus_run(tmp_path)
    ckpt = lambda: Checkpointer(tmp_path / "state", identity="theseus", every_seconds=0)  # noqa: E731
    with pytest.raises(Preempted):
        theseus_run(tmp_path, ckpt(), on_step=lambda end: end.step == 5 and os.kill(os.getpid(), signal.SIGTERM))
    assert (tmp_path / "state" / "current").read_text().strip() == "step-5"
    resumed = theseus_run(tmp_path, ckpt())
    assert reference.keys() == resumed.keys()
    assert [k for k in reference if not torch.equal(reference[k], resumed[k])] == []


def test_a_run_ended_by_an_error_gives_sigterm_back(tmp_path):
    """The loop catches SIGTERM while it runs; a run that ends in an error (a diverged loss, a crash) must give the
    handler back, or every later run in the process would share a stale notice and a SIGTERM would be swallowed."""
    def crash(end):
        raise RuntimeError("boom")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="boom"):
        theseus_run(tmp_path, Checkpointer(tmp_path / "state", identity="theseus", every_seconds=0), on_step=crash)
    assert signal.getsignal(signal.SIGTERM) is before
