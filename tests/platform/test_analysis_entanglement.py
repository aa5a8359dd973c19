"""Interest entanglement: distances, frequent pairs, conflict subset, gradient conflict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmoe.config import ConfigError
from hmoe.platform.analysis.entanglement import (
    EntanglementConfig,
    conflict_subset,
    distance_bands,
    frequent_pair_mask,
    gradient_conflict,
    gradient_conflict_by_group,
    user_item_distances,
)


def test_distances_match_a_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(6, 3, generator=gen), torch.randn(5, 3, generator=gen)
    u, i = np.array([0, 5, 2]), np.array([4, 1, 1])
    expected = [float((users[a] - items[b]).norm()) for a, b in zip(u, i, strict=True)]
    np.testing.assert_allclose(user_item_distances(users, items, u, i), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="one D"):
        user_item_distances(users, torch.randn(5, 4), u, i)


def test_frequent_pairs_need_both_sides_above_the_percentile() -> None:
    train_users = np.array([1, 1, 1, 2, 2, 3])  # counts 3, 2, 1
    train_items = np.array([7, 7, 8, 8, 8, 9])  # counts 2, 3, 1
    mask = frequent_pair_mask(
        train_users, train_items, np.array([1, 1, 2, 3, 4]), np.array([8, 9, 8, 8, 8]), 50.0
    )
    # median count = 2: frequent users {1}, items {8}; unseen user 4 is not frequent
    np.testing.assert_array_equal(mask, [True, False, False, False, False])


def test_identical_task_tables_give_an_empty_conflict_subset() -> None:
    gen = torch.Generator().manual_seed(1)
    users, items = torch.randn(50, 8, generator=gen), torch.randn(40, 8, generator=gen)
    rng = np.random.default_rng(1)
    u, i = rng.integers(0, 50, 3000), rng.integers(0, 40, 3000)
    like = user_item_distances(users, items, u, i)
    finish = user_item_distances(users.clone(), items.clone(), u, i)
    assert not conflict_subset(like, finish, 60.0, 40.0).any()


def test_conflict_subset_selects_far_for_one_and_near_for_the_other() -> None:
    far_task = np.arange(10.0)  # > 60th percentile (5.4): indices 6..9
    near_task = np.array([0, 0, 0, 0, 9, 9, 0, 9, 0, 9.0])  # <= 40th percentile (0): zeros
    np.testing.assert_array_equal(
        np.flatnonzero(conflict_subset(far_task, near_task, 60.0, 40.0)), [6, 8]
    )
    # independent references: about (1 - 0.6) * 0.4 = 16% of the pairs
    rng = np.random.default_rng(2)
    share = conflict_subset(rng.random(20000), rng.random(20000), 60.0, 40.0).mean()
    assert share == pytest.approx(0.16, abs=0.01)


def test_distance_bands() -> None:
    bands = distance_bands(np.arange(10.0), 40.0, 60.0)
    np.testing.assert_array_equal(bands, [0, 0, 0, 0, 1, 1, 2, 2, 2, 2])


def test_gradient_conflict_signs() -> None:
    shared = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    own = torch.nn.Parameter(torch.tensor([3.0]))
    losses = {
        "a": (shared * torch.tensor([1.0, 0.0])).sum(),
        "b": -(shared * torch.tensor([2.0, 0.0])).sum(),
        "c": (shared * torch.tensor([0.0, 1.0])).sum(),
        "d": own.sum(),  # does not touch the shared parameter
    }
    metrics = gradient_conflict(losses, [shared])
    assert metrics["grad_cos_a_b"] == pytest.approx(-1.0)
    assert metrics["grad_cos_a_c"] == pytest.approx(0.0)
    assert metrics["grad_cos_a_d"] == 0.0
    assert len(metrics) == 6
    sum(losses.values()).backward()  # the graph was kept for the training step
    assert shared.grad is not None


def test_gradient_conflict_matches_manual_gradients_of_a_model() -> None:
    torch.manual_seed(0)
    trunk, heads = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
    x, y = torch.randn(16, 4), torch.rand(16, 2)
    logits = heads(torch.relu(trunk(x)))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    losses = {"click": bce(logits[:, 0], y[:, 0]), "like": bce(logits[:, 1], y[:, 1])}
    got = gradient_conflict(losses, list(trunk.parameters()))["grad_cos_click_like"]
    flat = []
    for loss in losses.values():
        trunk.zero_grad()
        loss.backward(retain_graph=True)
        flat.append(torch.cat([p.grad.reshape(-1) for p in trunk.parameters()]))
    want = torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0)
    assert got == pytest.approx(float(want), rel=1e-5)


def test_gradient_conflict_and_config_errors() -> None:
    p = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match=">= 2"):
        gradient_conflict({"a": p.sum()}, [p])
    with pytest.raises(ValueError, match="shared parameter"):
        gradient_conflict({"a": p.sum(), "b": p.sum()}, [])
    with pytest.raises(ConfigError, match="low_percentile"):
        EntanglementConfig(low_percentile=70.0)
    with pytest.raises(ConfigError, match="different"):
        EntanglementConfig(tasks=("a", "a"))


def test_gradient_conflict_handles_sparse_embedding_gradients() -> None:
    table = torch.nn.Embedding(10, 3, sparse=True)
    ids = torch.tensor([1, 2, 3])
    out = table(ids)
    losses = {"a": out[:, 0].sum(), "b": -out[:, 0].sum()}
    assert gradient_conflict(losses, [table.weight])["grad_cos_a_b"] == pytest.approx(-1.0)


def test_gradient_conflict_by_group_equals_per_group_manual_gradients() -> None:
    """Each group's cosine and norms from two separate backward passes (the slow reference);
    a group only one task reaches has cosine 0; a frozen group is left out."""
    torch.manual_seed(1)
    trunk, own_a, heads = torch.nn.Linear(4, 3), torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    x, y = torch.randn(32, 4), torch.rand(32, 2)
    hidden = torch.relu(trunk(x))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    loss_a = bce(own_a(hidden)[:, 0], y[:, 0])
    loss_b = bce(heads(hidden)[:, 0], y[:, 1])
    groups = {
        "trunk weight": [trunk.weight],
        "trunk": list(trunk.parameters()),  # overlaps the first group
        "own a": list(own_a.parameters()),
        "frozen": [frozen],
    }
    got = gradient_conflict_by_group(loss_a, loss_b, groups)
    assert set(got) == {"trunk weight", "trunk", "own a"}
    manual = {}
    for name, loss in (("a", loss_a), ("b", loss_b)):
        for module in (trunk, own_a, heads):
            module.zero_grad()
        loss.backward(retain_graph=True)
        manual[name] = {
            "trunk weight": trunk.weight.grad.reshape(-1).clone(),
            "trunk": torch.cat([p.grad.reshape(-1) for p in trunk.parameters()]).clone(),
        }
    for group in ("trunk weight", "trunk"):
        a, b = manual["a"][group], manual["b"][group]
        cos = torch.nn.functional.cosine_similarity(a, b, dim=0)
        assert got[group].cosine == pytest.approx(float(cos), rel=1e-5)
        assert got[group].norm_a == pytest.approx(float(a.norm()), rel=1e-5)
        assert got[group].norm_b == pytest.approx(float(b.norm()), rel=1e-5)
    assert got["own a"].cosine == 0.0 and got["own a"].norm_b == 0.0 < got["own a"].norm_a
    with pytest.raises(ValueError, match="trainable"):
        gradient_conflict_by_group(loss_a, loss_b, {"frozen": [frozen]})


def test_parameter_groups_name_every_table_and_expert_with_its_owner() -> None:
    from hmoe.models.zoo import build
    from hmoe.platform.analysis.access import parameter_groups
    from tests.platform import analysis_helpers as h

    model = build(h.model_config("stem"), h.schema())
    groups = parameter_groups(model)
    fields = [c.name for c in h.schema().categorical]
    for set_name in model.set_names:
        for field in fields:
            assert f"table {set_name}/{field}" in groups
    experts = [g for g in groups if g.startswith("expert ")]
    assert len(experts) == len(model.experts)
    owners = {g.rsplit(" ", 1)[1] for g in experts}
    assert owners == {"shared", *h.TASKS}
    expert_params = sum(len(groups[g]) for g in experts)
    assert expert_params == sum(1 for _ in model.experts.parameters())
