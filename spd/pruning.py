"""Gradual magnitude pruning (Zhu & Gupta 2018) of the student modules' weight matrices.

Each matrix is pruned on its own to the same target (per-matrix top-k by magnitude, as the official
code does), at pruning events following the cubic schedule  s_k = s_f + (s_0 - s_f) * (1 - k/K)^3,
k = 1..K.  Masks only change at events and are re-applied after every optimizer step, so pruned
weights stay exactly zero.

Two event schedules (docs/spd.md, "Pruning events"):
  event_steps           K events spread evenly over the pruning stage, the K-th at its last step
                        (the paper: the target is reached when the pruning stage ends, §3.2.2, Fig. 8)
  official_event_steps  the released run_glue.py's arithmetic (lines 702-704 and Prune, lines 140-165):
                        events every freq = int(n/32 * epochs/12) steps while t < int(n/B) * epochs, and
                        K = that stage length // freq (11, not 12, on the six GLUE tasks it hard-codes)
"""
from __future__ import annotations

import torch
from torch import nn

# The six matrices of a BERT layer that SPD prunes; biases, LayerNorm, embeddings, pooler and classifier never.
PRUNED_MATRICES = ("attention.self.query", "attention.self.key", "attention.self.value",
                   "attention.output.dense", "intermediate.dense", "output.dense")


def prunable_matrices(layers: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """{'<layer name>.<matrix>.weight': weight} for every layer given as {name: BertLayer}."""
    found = {}
    for layer_name, layer in layers.items():
        modules = dict(layer.named_modules())
        for matrix in PRUNED_MATRICES:
            found[f"{layer_name}.{matrix}.weight"] = modules[matrix].weight
    return found


def encoder_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: layer} of a plain BERT encoder's layers, as prunable_matrices takes them."""
    return {f"bert.encoder.layer.{i}": layer for i, layer in enumerate(model.bert.encoder.layer)}


def matrix_report(weights: dict[str, nn.Parameter]) -> dict[str, dict]:
    """Per-matrix zeros, size and sparsity as they are in the weights now."""
    out = {}
    for name, weight in weights.items():
        zeros = int((weight == 0).sum())
        out[name] = {"zeros": zeros, "numel": weight.numel(), "sparsity": zeros / weight.numel()}
    return out


def cubic_sparsity(event: int, num_events: int, final: float, initial: float = 0.0) -> float:
    """Sparsity after pruning event `event` (1-based) of `num_events`."""
    if not 0 <= event <= num_events:
        raise ValueError(f"event {event} outside 0..{num_events}")
    return final + (initial - final) * (1.0 - event / num_events) ** 3


def event_steps(prune_steps: int, num_events: int) -> list[int]:
    """Optimizer-step counts after which events 1..K fire: evenly spaced, the last one ends the stage."""
    if prune_steps < 1:
        return []
    return [max(1, round(k * prune_steps / num_events)) for k in range(1, num_events + 1)]


# The official code divides the training-set size by a literal 32 (its README's batch size) for `freq`.
OFFICIAL_FREQ_BATCH = 32


def official_event_steps(train_examples: float, steps_per_epoch: int, prune_epochs: float,
                         num_events: int = 12) -> tuple[list[int], int]:
    """(event steps, K) of the official code's pruner, counted in optimizer steps as the loop counts them.

    run_glue.py builds `Prune(model, 0, num_steps_per_epoch * num_prune_epochs, freq, ...)` with
    num_steps_per_epoch = int(n / batch) (lines 687-688, our `steps_per_epoch`) and
    freq = int((n / 32) * num_prune_epochs / 12) (line 702). `Prune.prune()` runs after every optimizer step
    with t = the step count and re-masks when 0 < t < sparse_step and t % freq == 0 (lines 140-144, 156-160),
    at sparsity s_f * (1 - (1 - (t // freq) / (sparse_step // freq))^3) (lines 163-165). So event k fires
    after step k * freq, K = sparse_step // freq, and only the events with k * freq < sparse_step happen: when
    freq divides sparse_step the K-th never fires and the target is never quite reached. A freq of 0 (a
    stage shorter than 12 steps; the official code divides by zero there) is taken as 1.
    """
    sparse_step = steps_per_epoch * prune_epochs
    freq = max(1, int(train_examples / OFFICIAL_FREQ_BATCH * prune_epochs / num_events))
    total = int(sparse_step // freq)
    steps = [k * freq for k in range(1, total + 1) if k * freq < sparse_step]
    return steps, total


class MagnitudePruner:
    """Holds the masks of a set of matrices and moves them along the cubic schedule."""

    def __init__(self, weights: dict[str, nn.Parameter], final_sparsity: float, prune_steps: int,
                 num_events: int = 12, initial_sparsity: float = 0.0, event_at: list[int] | None = None):
        """Events 1..K (K = num_events) fire after the steps `event_steps(prune_steps, K)` gives, or after the
        steps `event_at` lists for events 1..len(event_at) (official_event_steps: possibly fewer than K, and
        then the target is never reached, as in the official code)."""
        if not 0.0 <= final_sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {final_sparsity}")
        self.weights = weights
        self.final_sparsity = final_sparsity
        self.initial_sparsity = initial_sparsity
        self.num_events = num_events
        if event_at is None:
            event_at = event_steps(prune_steps, num_events)
        elif len(event_at) > num_events:
            raise ValueError(f"{len(event_at)} event steps for {num_events} events")
        # Several events may round to the same step on a very short stage: the last (highest) one wins.
        self.schedule = {step: k for k, step in enumerate(event_at, start=1)}
        # The step after which the masks stop changing: the model has its final shape from there on.
        self.last_event_step = max(self.schedule, default=0)
        self.masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
        self._multipliers: dict[str, tuple] = {}    # name -> (the mask it was made from, its version, multiplier)
        self.current_sparsity = initial_sparsity

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Zero exactly round(sparsity * n) smallest-magnitude weights of each matrix."""
        for name, weight in self.weights.items():
            n = weight.numel()
            k = round(sparsity * n)
            mask = torch.ones(n, dtype=torch.bool, device=weight.device)
            if k > 0:
                # Already-pruned weights are zero, hence among the smallest: masks only grow.
                smallest = torch.topk(weight.detach().abs().flatten().float(), k, largest=False).indices
                mask[smallest] = False
            self.masks[name] = mask.view_as(weight)
        self.current_sparsity = sparsity
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Re-zero the pruned weights: one foreach multiply over every matrix (one kernel group on CUDA)."""
        weights = list(self.weights.values())
        if not weights:
            return
        torch._foreach_mul_(weights, [self._multiplier(name, w) for name, w in self.weights.items()])

    def _multiplier(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The mask in its weight's dtype: foreach's one-kernel path on CUDA needs every list to share one dtype
        (bool masks made torch fall back to a multiply per matrix). Made again when the mask is replaced, edited
        in place (its version moves) or follows its weight to another device; x * 1.0 and x * 0.0 are what the
        bool mask gave, bit for bit."""
        mask = self._mask_for(name, weight)
        made = self._multipliers.get(name)
        if made is None or made[0] is not mask or made[1] != mask._version or made[2].dtype != weight.dtype:
            made = self._multipliers[name] = (mask, mask._version, mask.to(weight.dtype))
        return made[2]

    def _mask_for(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        # Masks follow their weights: made before the loop moved the model to its device, or moved since.
        mask = self.masks[name]
        if mask.device != weight.device:
            mask = self.masks[name] = mask.to(weight.device)
        return mask

    def step(self, completed_steps: int) -> float | None:
        """Call after every optimizer step; prunes when an event falls due. Returns the new sparsity or None."""
        event = self.schedule.get(completed_steps)
        if event is not None:
            self.prune_to(cubic_sparsity(event, self.num_events, self.final_sparsity, self.initial_sparsity))
            return self.current_sparsity
        self.apply()
        return None

    def finish(self) -> None:
        """Jump to the final sparsity if a stage ended before its last event (e.g. a run cut short)."""
        if self.current_sparsity != self.final_sparsity:
            self.prune_to(self.final_sparsity)

    def report(self) -> dict[str, dict]:
        return matrix_report(self.weights)
