"""Mid-training checkpoints: a long cell that is killed or preempted continues where it was, not from step 0.

The loop saves its whole state every `every_seconds` and when SIGTERM arrives (SLURM's preemption notice):
weights and pruning masks (safetensors), and in `loop.pt` the optimizer, the LR schedule, the step, the phase,
the position in the data order, the grafting generator, the RNG states and the history so far. A re-run of the
same cell finds the state, rebuilds the recipe, replays the phases' surgery up to the saved phase, loads the
state and goes on; on the CPU the result is bit-identical to an uninterrupted run (tests/test_resume.py).

Layout of a state directory (one per cell, next to its run directory):
  current          the name of the newest complete snapshot, written atomically last
  step-<N>/        weights.safetensors, loop.pt, identity.json
A crash while saving leaves `current` on the previous complete snapshot. `loop.pt` holds only tensors and plain
Python values and is read with `torch.load(weights_only=True)`: no pickled code runs on load.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness import store

MASK_PREFIX = "__mask__."


# SIGTERM is a scheduler's preemption notice (SLURM, `timeout`, a cloud's spot reclaim): it may reach a process
# at any moment (in training, between two cells, while a worker waits for work), so it only sets this flag, and
# the loop (at its next step) and the grid (before its next cell) stop with their state saved. One flag per process.
_SIGTERM = threading.Event()
_FORWARD: list = []   # callables the handler also runs: a grid's pool passes the notice on to its workers


def _on_sigterm(signum, frame) -> None:
    _SIGTERM.set()
    for forward in list(_FORWARD):
        forward()


def sigterm_received() -> bool:
    return _SIGTERM.is_set()


def watch_sigterm(forward=None):
    """Catch SIGTERM (main thread only) until the returned restorer is called. The outermost watcher (a run, a
    grid) starts with a clear flag; a nested one (a cell's loop inside a grid) shares its flag, so a notice that
    arrived between two cells is not forgotten. `forward` also runs on the signal (while watched)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not _on_sigterm:
        _SIGTERM.clear()
        signal.signal(signal.SIGTERM, _on_sigterm)
    if forward is not None:
        _FORWARD.append(forward)

    def restore():
        if forward is not None and forward in _FORWARD:
            _FORWARD.remove(forward)
        if previous is not _on_sigterm:
            signal.signal(signal.SIGTERM, previous)
    return restore


@dataclass
class Checkpointer:
    directory: Path
    identity: str                 # the cell's resolved config: a state of another config is never resumed
    every_seconds: float = 1800.0
    _last: float = field(default_factory=time.monotonic)

    # -- when ---------------------------------------------------------------------------------------------
    def due(self) -> bool:
        return _SIGTERM.is_set() or (self.every_seconds > 0 and time.monotonic() - self._last >= self.every_seconds)

    @property
    def preempted(self) -> bool:
        return _SIGTERM.is_set()

    def watch_sigterm(self):
        return watch_sigterm()

    # -- save / load ----------------------------------------------------------------------------------------
    def save(self, step: int, model: torch.nn.Module, masks: dict[str, torch.Tensor], loop_state: dict) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        snapshot = self.directory / f"step-{step}"
        tmp = self.directory / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tensors.update({MASK_PREFIX + k: m.detach().cpu().contiguous() for k, m in masks.items()})
        save_file(tensors, tmp / "weights.safetensors")
        torch.save(loop_state, tmp / "loop.pt")
        store.write_json(tmp / "identity.json", {"identity": self.identity, "step": step})
        shutil.rmtree(snapshot, ignore_errors=True)
        os.replace(tmp, snapshot)
        previous = self._current()
        store.write_text(self.directory / "current", snapshot.name + "\n")
        if previous is not None and previous != snapshot:
            shutil.rmtree(previous, ignore_errors=True)
        self._last = time.monotonic()
        return snapshot

    def _current(self) -> Path | None:
        try:
            name = (self.directory / "current").read_text().strip()
        except OSError:
            return None
        path = self.directory / name
        return path if name.startswith("step-") and path.is_dir() else None

    def load(self) -> tuple[dict, dict, dict] | None:
        """(model tensors, masks, loop state) of the newest snapshot of this identity, or None."""
        snapshot = self._current()
        if snapshot is None:
            return None
        try:
            if store.read_json(snapshot / "identity.json")["identity"] != self.identity:
                return None
            tensors = load_file(snapshot / "weights.safetensors")
            loop_state = torch.load(snapshot / "loop.pt", weights_only=True)
        except Exception:  # noqa: BLE001 - a truncated file raises whatever its parser meets; none is resumable
            return None   # an unreadable snapshot: start over rather than resume from something broken
        masks = {k[len(MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
        model = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
        return model, masks, loop_state

    def discard(self) -> None:
        """The run finished: its state is no longer needed (only this directory, which the run made)."""
        if not self.directory.is_dir():
            return
        if all(p.name == "current" or p.name.startswith(("step-", ".step-")) for p in self.directory.iterdir()):
            shutil.rmtree(self.directory, ignore_errors=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def identity_of(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)
