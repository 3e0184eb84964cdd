import pytest
import torch

from spd.pruning import (PRUNED_MATRICES, MagnitudePruner, cubic_sparsity, encoder_layers, event_steps,
                         prunable_matrices)


def test_cubic_formula_at_every_event():
    K, sf = 12, 0.9
    for k in range(K + 1):
        assert cubic_sparsity(k, K, sf) == pytest.approx(sf + (0.0 - sf) * (1 - k / K) ** 3)
    assert cubic_sparsity(0, K, sf) == 0.0
    assert cubic_sparsity(K, K, sf) == pytest.approx(sf)
    values = [cubic_sparsity(k, K, sf) for k in range(K + 1)]
    assert values == sorted(values)
    # cubic: most of the pruning happens early
    assert values[6] > sf * 0.85


def test_event_steps_even_and_last_at_stage_end():
    assert event_steps(120, 12) == list(range(10, 121, 10))
    steps = event_steps(100, 12)
    assert steps[-1] == 100 and len(steps) == 12 and steps == sorted(steps)


def test_pruner_follows_schedule_and_hits_exact_counts(bert):
    weights = prunable_matrices(encoder_layers(bert))
    assert len(weights) == 6 * 4
    pruner = MagnitudePruner(weights, 0.9, prune_steps=24, num_events=12)
    seen = {}
    for t in range(1, 25):
        s = pruner.step(t)
        if s is not None:
            seen[t] = s
    assert list(seen) == event_steps(24, 12)
    for k, (t, s) in enumerate(seen.items(), start=1):
        assert s == pytest.approx(cubic_sparsity(k, 12, 0.9))
    for name, w in weights.items():
        assert int((w == 0).sum()) == round(0.9 * w.numel()), name


def test_pruned_weights_are_the_smallest_and_stay_zero_through_optimizer_steps(bert):
    weights = prunable_matrices(encoder_layers(bert))
    before = {n: w.detach().abs().clone() for n, w in weights.items()}
    pruner = MagnitudePruner(weights, 0.5, prune_steps=1, num_events=1)
    pruner.step(1)
    for n, w in weights.items():
        kept = before[n][w != 0]
        dropped = before[n][w == 0]
        assert dropped.max() <= kept.min()
    opt = torch.optim.AdamW(bert.parameters(), lr=1e-2)
    masks = {n: (w == 0).clone() for n, w in weights.items()}
    ids = torch.randint(0, 200, (2, 8))
    for step in range(2, 6):
        loss = bert(input_ids=ids, labels=torch.tensor([0, 1])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        pruner.step(step)
        for n, w in weights.items():
            assert torch.all(w[masks[n]] == 0)
            assert int((w == 0).sum()) == round(0.5 * w.numel())


def test_only_the_six_weight_matrices_are_pruned(bert):
    weights = prunable_matrices(encoder_layers(bert))
    names = set(weights)
    assert all(n.endswith(".weight") for n in names)
    assert all(any(f".{m}.weight" in n for m in PRUNED_MATRICES) for n in names)
    pruned_ids = {id(w) for w in weights.values()}
    for name, p in bert.named_parameters():
        if id(p) not in pruned_ids:
            # biases, LayerNorm, embeddings, pooler, classifier
            assert ("bias" in name or "LayerNorm" in name or "embeddings" in name or "pooler" in name
                    or "classifier" in name), name
    MagnitudePruner(weights, 0.9, prune_steps=1).step(1)
    for name, p in bert.named_parameters():
        if id(p) not in pruned_ids:
            assert int((p == 0).sum()) < p.numel() * 0.5 or "bias" in name, name


def test_sparsity_outside_range_rejected(bert):
    with pytest.raises(ValueError):
        MagnitudePruner(prunable_matrices(encoder_layers(bert)), 1.0, prune_steps=1)


def test_re_masking_multiplies_in_the_weights_dtype_and_sees_every_change_of_a_mask(bert):
    """apply() multiplies by the masks cast to the weights' dtype (foreach's one-kernel CUDA path needs one dtype
    across its lists); the cast copy must follow a mask that is replaced or edited in place."""
    weights = prunable_matrices(encoder_layers(bert))
    pruner = MagnitudePruner(weights, 0.5, prune_steps=1, num_events=1)
    pruner.step(1)
    name, w = next(iter(weights.items()))
    assert all(pruner._multiplier(n, v).dtype == v.dtype for n, v in weights.items())
    kept = pruner.masks[name].nonzero()[0].tolist()
    pruner.masks[name][tuple(kept)] = False                 # edited in place
    with torch.no_grad():
        w.add_(1.0)
    pruner.apply()
    assert w[tuple(kept)] == 0 and int((w == 0).sum()) == round(0.5 * w.numel()) + 1
    pruner.masks = {n: torch.ones_like(m) for n, m in pruner.masks.items()}    # replaced (as a resume does)
    with torch.no_grad():
        w.add_(1.0)
    pruner.apply()
    assert int((w == 0).sum()) == 0
