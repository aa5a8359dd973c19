from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hmoe.config import ConfigError, apply_overrides
from hmoe.models.experts import GwPFMConfig, GwPFMInteraction
from hmoe.models.losses import (
    IPWConfig,
    LossConfig,
    TrainWrapper,
    bce_per_task,
    combined_pair_loss,
    ipw_weights,
    pairwise_ranking_loss,
    regularization_loss,
)
from hmoe.schema import EXPOSURE, LABELS, WEIGHT

TASKS = ("click", "like")
LABELS_B = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
REFERENCE_LOSS = 1.236026  # torch.manual_seed(0), CPU float32; see test_seeded_reference_loss


class TinyModel(nn.Module):
    """logits[b, k] = emb[item[b], k] + a GwPFM regulariser to check it is collected."""

    tasks = TASKS

    def __init__(self, l2: float = 0.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, len(TASKS))
        self.gw = GwPFMInteraction(("u", "i"), 2, GwPFMConfig(pair_weight_l2=l2))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.emb(batch["item"])


def _batch(seed: int = 0, batch: int = 8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(batch, len(TASKS), generator=gen) < 0.4).float()
    labels[0] = 1.0
    labels[1] = 0.0
    return {
        "item": torch.randint(0, 10, (batch,), generator=gen),
        LABELS: labels,
        WEIGHT: torch.rand(batch, generator=gen) + 0.5,
        EXPOSURE: torch.randint(0, 6, (batch,), generator=gen).float(),
    }


def test_bce_per_task_matches_torch() -> None:
    logits, labels = torch.randn(6, 2), (torch.rand(6, 2) > 0.5).float()
    weight = torch.rand(6, 2)
    expected = torch.stack(
        [
            F.binary_cross_entropy_with_logits(logits[:, k], labels[:, k], weight[:, k])
            for k in (0, 1)
        ]
    )
    torch.testing.assert_close(bce_per_task(logits, labels, weight), expected)


def test_pair_term_equals_loop_over_pairs() -> None:
    torch.manual_seed(1)
    z = torch.randn(8)
    pairs = [
        -torch.log(torch.sigmoid(z[i] - z[j]))
        for i in range(8)
        for j in range(8)
        if LABELS_B[i] == 1 and LABELS_B[j] == 0
    ]
    torch.testing.assert_close(pairwise_ranking_loss(z, LABELS_B), torch.stack(pairs).mean())


def test_pair_term_gradient_matches_autograd_reference() -> None:
    z = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pairwise_ranking_loss(x, LABELS_B), (z,))
    pos, neg = z[LABELS_B == 1], z[LABELS_B == 0]
    reference = F.softplus(neg.unsqueeze(0) - pos.unsqueeze(1)).mean()
    (fast_grad,) = torch.autograd.grad(pairwise_ranking_loss(z, LABELS_B), z)
    (reference_grad,) = torch.autograd.grad(reference, z)
    torch.testing.assert_close(fast_grad, reference_grad)


def test_combined_pair_equals_bce_at_alpha_one() -> None:
    z = torch.randn(8)
    bce = F.binary_cross_entropy_with_logits(z, LABELS_B)
    torch.testing.assert_close(combined_pair_loss(z, LABELS_B, 1.0), bce)
    assert not torch.allclose(combined_pair_loss(z, LABELS_B, 0.5), bce)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gradient_on_a_negative_equals_closed_form(alpha: float) -> None:
    torch.manual_seed(2)
    z = torch.randn(8, requires_grad=True)
    combined_pair_loss(z, LABELS_B, alpha).backward()
    pos, neg = LABELS_B == 1, LABELS_B == 0
    batch, num_pairs = len(z), int(pos.sum() * neg.sum())
    zd = z.detach()
    for j in torch.nonzero(neg).flatten().tolist():
        pair_grad = torch.sigmoid(zd[j] - zd[pos]).sum() / num_pairs
        closed = alpha * torch.sigmoid(zd[j]) / batch + (1 - alpha) * pair_grad
        torch.testing.assert_close(z.grad[j], closed)


@pytest.mark.parametrize("labels", [torch.zeros(5), torch.ones(5)], ids=["no_pos", "no_neg"])
def test_one_class_batch_skips_pair_term_without_nan(labels: torch.Tensor) -> None:
    z = torch.randn(5, requires_grad=True)
    assert pairwise_ranking_loss(z, labels).item() == 0.0
    loss = combined_pair_loss(z, labels, 0.7)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    torch.testing.assert_close(loss, 0.7 * F.binary_cross_entropy_with_logits(z, labels))


def _slow_ipw(counts: list[float], positive: list[bool], rho_of, min_weight: float) -> list[float]:
    """Independent reference: one float at a time, no torch (see ``IPWConfig``)."""
    clipped = [min(max(1.0 / rho_of(max(k, 0.0)), min_weight), 1.0) for k in counts]
    chosen = [w for w, p in zip(clipped, positive, strict=True) if p]
    if not chosen:
        return [1.0] * len(counts)
    mean = sum(chosen) / len(chosen)
    return [w / mean if p else 1.0 for w, p in zip(clipped, positive, strict=True)]


COUNTS = [0.0, 1.0, 3.0, 8.0, 50.0, 2.0, 0.0, 1.5]
POSITIVE = [True, True, False, True, True, False, True, True]


def test_ipw_power_matches_the_slow_reference_and_down_weights_repeats() -> None:
    cfg = IPWConfig(enabled=True, exponent=0.5, min_weight=0.4)
    weights = ipw_weights(torch.tensor(COUNTS), cfg, torch.tensor(POSITIVE))
    expected = _slow_ipw(COUNTS, POSITIVE, lambda k: (1.0 + k) ** 0.5, 0.4)
    torch.testing.assert_close(weights, torch.tensor(expected))
    first = weights[0].item()
    assert weights[6].item() == pytest.approx(first)  # every first exposure weighs the same
    # 1 / sqrt(2), 1 / sqrt(2.5), then the floor 0.4 for k = 8 and 50 (1 / 3, 1 / sqrt(51))
    assert weights[1] < first and weights[7] < weights[1] and weights[3] < weights[7]
    assert weights[3].item() == pytest.approx(weights[4].item()) == pytest.approx(0.4 * first)
    torch.testing.assert_close(weights[torch.tensor(POSITIVE)].mean(), torch.tensor(1.0))
    assert torch.equal(weights[~torch.tensor(POSITIVE)], torch.ones(2))


def _slow_weighted_bce_optimum(click_prob: float, positive_weight: float) -> float:
    """The logit minimising ``w * p * -log q + (1 - p) * -log(1 - q)`` (the expected BCE of one
    (x, k) cell, positives weighted ``w``), by bisection on its slope; plain floats, no torch."""
    low, high = -40.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2.0
        q = 1.0 / (1.0 + math.exp(-mid))
        slope = -positive_weight * click_prob * (1.0 - q) + (1.0 - click_prob) * q
        low, high = (low, mid) if slope > 0.0 else (mid, high)
    return (low + high) / 2.0


def test_ipw_power_optimum_is_the_interest_logit_shifted_by_the_renormalisation() -> None:
    # the generator's form: click logit = interest + inflation * log(1 + k); the positives-only
    # weight removes the inflation up to one shift per batch, except what the floor keeps
    inflation, interest, floor = 1.0, -2.0, 0.05
    counts = [0.0, 1.0, 2.0, 5.0, 19.0, 40.0, 300.0]
    cfg = IPWConfig(enabled=True, exponent=inflation, min_weight=floor)
    weights = ipw_weights(torch.tensor(counts, dtype=torch.float64), cfg).tolist()
    mean_clipped = sum(max((1.0 + k) ** -inflation, floor) for k in counts) / len(counts)
    for k, weight in zip(counts, weights, strict=True):
        click_prob = 1.0 / (1.0 + math.exp(-(interest + inflation * math.log1p(k))))
        kept = max(0.0, math.log(floor * (1.0 + k) ** inflation))  # the floor's share of it
        expected = interest - math.log(mean_clipped) + kept
        got = _slow_weighted_bce_optimum(click_prob, weight)
        assert got == pytest.approx(expected, abs=1e-6), k


def test_ipw_table_matches_the_slow_reference() -> None:
    table = (0.02, 0.03, 0.05, 0.05)  # click rates by exposure index: rho = 1, 1.5, 2.5, 2.5
    cfg = IPWConfig(estimator="table", propensities=table, min_weight=0.5)
    weights = ipw_weights(torch.tensor(COUNTS), cfg, torch.tensor(POSITIVE))
    expected = _slow_ipw(
        COUNTS, POSITIVE, lambda k: table[min(int(k), len(table) - 1)] / table[0], 0.5
    )
    torch.testing.assert_close(weights, torch.tensor(expected))
    assert weights[1] < weights[0] and weights[3] < weights[1]


@pytest.mark.parametrize(
    "cfg",
    [
        IPWConfig(exponent=0.01, min_weight=0.99),
        IPWConfig(exponent=3.0, min_weight=0.01),
        IPWConfig(estimator="table", propensities=(1.0, 1.0001), min_weight=0.999),
        IPWConfig(estimator="table", propensities=(2.0, 3.0, 3.0, 7.0)),
    ],
)
def test_every_valid_config_down_weights_repeats(cfg: IPWConfig) -> None:
    counts = torch.arange(0.0, 40.0)
    weights = ipw_weights(counts, cfg)
    assert (weights[1:] <= weights[:-1]).all()  # non-increasing in k
    assert (weights[1:] < weights[0]).all()  # strictly below the first exposure's


def test_ipw_edge_cases() -> None:
    cfg = IPWConfig(exponent=1.0, min_weight=0.2)
    # every positive a first exposure: all weights 1
    assert torch.equal(
        ipw_weights(torch.zeros(5), cfg, torch.ones(5, dtype=torch.bool)), torch.ones(5)
    )
    # no positive in the batch: nothing to renormalise, every weight 1
    no_positive = torch.zeros(4, dtype=torch.bool)
    assert torch.equal(
        ipw_weights(torch.tensor([0.0, 1.0, 2.0, 9.0]), cfg, no_positive), torch.ones(4)
    )
    # a negative count (a missing value) counts as a first exposure
    weights = ipw_weights(torch.tensor([-3.0, 0.0, 1.0]), cfg)
    assert weights[0] == weights[1] > weights[2]
    # clipping bounds: the ratio to a first exposure never falls below min_weight
    weights = ipw_weights(torch.tensor([0.0, 1e6]), cfg)
    assert weights[1].item() / weights[0].item() == pytest.approx(0.2)


def test_ipw_weighted_loss_has_finite_gradients_and_moves_weight_off_repeats() -> None:
    counts = torch.tensor([0.0, 0.0, 4.0, 4.0, 1e4, 0.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    logits = torch.zeros(6, requires_grad=True)
    weight = ipw_weights(counts, IPWConfig(exponent=1.0, min_weight=0.1), labels > 0.5)
    bce_per_task(logits.unsqueeze(1), labels.unsqueeze(1), weight.unsqueeze(1)).sum().backward()
    grad = logits.grad
    assert grad is not None and torch.isfinite(grad).all()
    # the repeat-exposure positives pull their logit up less than the first-exposure positive
    assert grad[0] < grad[2] < 0 and grad[2] < grad[4] < 0
    assert torch.equal(grad[[1, 3, 5]], torch.full((3,), 0.5 / 6))  # negatives: weight 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"min_weight": 1.0}, "min_weight"),
        ({"min_weight": 0.0}, "min_weight"),
        ({"min_weight": 1.5}, "min_weight"),
        ({"exponent": 0.0}, "exponent"),
        ({"exponent": -1.0}, "exponent"),
        ({"estimator": "table"}, "propensities"),
        ({"estimator": "table", "propensities": [1.0]}, "two entries"),
        ({"estimator": "table", "propensities": [1.0, 0.0]}, "propensities"),
        ({"estimator": "table", "propensities": [1.0, 0.5, 0.25]}, "non-decreasing"),
        ({"estimator": "table", "propensities": [1.0, 1.0, 2.0]}, "second above the first"),
        ({"estimator": "table", "propensities": [1.0, 2.0, 1.5]}, "non-decreasing"),
    ],
)
def test_invalid_ipw_config(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(IPWConfig(), overrides)


def test_invalid_loss_config() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        apply_overrides(LossConfig(), {"ranking.alpha": 1.5})
    with pytest.raises(ConfigError, match="task_weights"):
        LossConfig(task_weights={"click": -1.0})
    with pytest.raises(ConfigError, match="unknown task"):
        TrainWrapper(TinyModel(), LossConfig(task_weights={"cvr": 1.0}))
    with pytest.raises(ConfigError, match="unknown task"):
        TrainWrapper(TinyModel(), apply_overrides(LossConfig(), {"ranking.tasks": ["cvr"]}))


def test_train_wrapper_outputs_and_plain_bce() -> None:
    torch.manual_seed(3)
    model, batch = TinyModel(), _batch()
    loss, outputs = TrainWrapper(model, LossConfig(use_sample_weight=False))(batch)
    logits = model(batch)
    expected = bce_per_task(logits, batch[LABELS])
    torch.testing.assert_close(loss, expected.sum())
    assert outputs["logits"].shape == outputs["probabilities"].shape == (8, 2)
    torch.testing.assert_close(outputs["probabilities"], torch.sigmoid(logits))
    torch.testing.assert_close(outputs["task_losses"], expected)
    assert torch.equal(outputs["pair"], torch.zeros(2))
    loss.backward()
    assert torch.isfinite(model.emb.weight.grad).all()


def test_train_wrapper_combines_everything() -> None:
    torch.manual_seed(4)
    model, batch = TinyModel(l2=0.1), _batch()
    cfg = LossConfig.from_dict(
        {
            "task_weights": {"like": 0.5},
            "ranking": {"enabled": True, "alpha": 0.6, "tasks": ["click"]},
            "ipw": {"enabled": True, "tasks": ["click"], "exponent": 1.0},
            "embedding_l2": 0.01,
        }
    )
    loss, outputs = TrainWrapper(model, cfg)(batch)
    logits, labels = model(batch), batch[LABELS]
    ipw = ipw_weights(batch[EXPOSURE], cfg.ipw, labels[:, 0] > 0.5)
    click = combined_pair_loss(logits[:, 0], labels[:, 0], 0.6, batch[WEIGHT] * ipw)
    like = F.binary_cross_entropy_with_logits(logits[:, 1], labels[:, 1], batch[WEIGHT])
    reg = 0.01 * model.emb.weight.square().sum() + 0.1 * model.gw.pair_weight.square().sum()
    torch.testing.assert_close(loss, click + 0.5 * like + reg)
    torch.testing.assert_close(outputs["regularization"], reg.detach())
    assert outputs["pair"][0] > 0 and outputs["pair"][1] == 0
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_train_wrapper_one_class_batch_is_finite() -> None:
    batch = _batch()
    batch[LABELS] = torch.zeros_like(batch[LABELS])
    cfg = apply_overrides(LossConfig(), {"ranking.enabled": True, "ipw.enabled": True})
    loss, outputs = TrainWrapper(TinyModel(), cfg)(batch)
    loss.backward()
    assert torch.isfinite(loss) and torch.equal(outputs["pair"], torch.zeros(2))


def test_train_wrapper_rejects_bad_shapes_and_missing_tasks() -> None:
    batch = _batch()
    batch[LABELS] = batch[LABELS][:, :1]
    with pytest.raises(ValueError, match="logits of shape"):
        TrainWrapper(TinyModel(), LossConfig())(batch)
    with pytest.raises(ValueError, match="task names"):
        TrainWrapper(nn.Linear(2, 2), LossConfig())
    no_exposure = {k: v for k, v in _batch().items() if k != EXPOSURE}
    with pytest.raises(ValueError, match="exposure"):
        TrainWrapper(TinyModel(), apply_overrides(LossConfig(), {"ipw.enabled": True}))(no_exposure)


def test_regularization_loss_is_zero_without_regularisers() -> None:
    assert regularization_loss(nn.Linear(2, 2), 0.5).item() == 0.0


def test_seeded_reference_loss() -> None:
    torch.manual_seed(0)
    cfg = apply_overrides(LossConfig(), {"ranking.enabled": True, "ipw.enabled": True})
    loss, _ = TrainWrapper(TinyModel(), cfg)(_batch(seed=5))
    assert loss.item() == pytest.approx(REFERENCE_LOSS, abs=1e-5)


def test_every_numeric_knob_has_an_effect() -> None:
    base = LossConfig.from_dict(
        {
            "task_weights": {"click": 1.0, "like": 1.0},
            "ranking": {"enabled": True, "alpha": 0.7},
            "ipw": {"enabled": True, "exponent": 0.5, "min_weight": 0.5},
            "embedding_l2": 0.01,
        }
    )
    table = apply_overrides(base, {"ipw.estimator": "table", "ipw.propensities": [1.0, 2.0]})
    batch = _batch(seed=6, batch=32)
    torch.manual_seed(7)
    model = TinyModel()

    def loss_of(cfg: LossConfig) -> float:
        return TrainWrapper(model, cfg)(batch)[0].item()

    perturbations = [
        (base, "task_weights.like", 0.3),
        (base, "ranking.alpha", 0.2),
        (base, "ipw.exponent", 2.0),
        (base, "ipw.min_weight", 0.8),
        (base, "embedding_l2", 0.5),
        (table, "ipw.propensities", [1.0, 1.25]),
    ]
    for cfg, path, value in perturbations:
        assert loss_of(apply_overrides(cfg, {path: value})) != loss_of(cfg), path


def test_positive_weight_scales_only_the_positives_bce() -> None:
    torch.manual_seed(5)
    model, batch = TinyModel(), _batch()
    cfg = LossConfig(use_sample_weight=False, positive_weight=0.2)
    loss, _ = TrainWrapper(model, cfg)(batch)
    logits, labels = model(batch), batch[LABELS]
    per_row = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    beta = torch.where(labels > 0.5, 0.2, 1.0)
    torch.testing.assert_close(loss, (per_row * beta).mean(dim=0).sum())
    plain, _ = TrainWrapper(model, LossConfig(use_sample_weight=False))(batch)
    assert loss < plain  # positives weigh less, nothing else changed
    with pytest.raises(ConfigError, match="positive_weight"):
        LossConfig(positive_weight=0.0)


@pytest.mark.parametrize("fused", [False, True])
def test_embedding_l2_by_optimizer_matches_the_l2_in_the_loss(fused: bool) -> None:
    """Adam's coupled L2 on the tables' group takes exactly the gradient of the loss's term."""
    cfg = apply_overrides(LossConfig(), {"ranking.enabled": True, "embedding_l2": 0.05})
    torch.manual_seed(3)
    in_loss = TinyModel(l2=0.1)
    by_optimizer = TinyModel(l2=0.1)
    by_optimizer.load_state_dict(in_loss.state_dict())
    wrap_a = TrainWrapper(in_loss, cfg)
    wrap_b = TrainWrapper(by_optimizer, cfg, embedding_l2_by_optimizer=True)
    groups = wrap_b.param_groups(1e-3)
    assert [g["weight_decay"] for g in groups] == [1e-3 + 2 * 0.05, 1e-3]
    assert groups[0]["params"] == [by_optimizer.emb.weight]
    opt_a = torch.optim.Adam(wrap_a.param_groups(1e-3), lr=0.1, fused=fused)
    opt_b = torch.optim.Adam(groups, lr=0.1, fused=fused)
    for step in range(3):
        batch = _batch(seed=10 + step)
        loss_a, out_a = wrap_a(batch)
        loss_b, out_b = wrap_b(batch)
        torch.testing.assert_close(loss_b, loss_a)  # the reported loss keeps the term's value
        torch.testing.assert_close(out_b["regularization"], out_a["regularization"])
        for opt, loss in ((opt_a, loss_a), (opt_b, loss_b)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, a), b in zip(in_loss.named_parameters(), by_optimizer.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_without_embedding_l2_by_optimizer_there_is_one_group() -> None:
    cfg = apply_overrides(LossConfig(), {"embedding_l2": 0.05})
    groups = TrainWrapper(TinyModel(), cfg).param_groups(0.01)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.01
    off = TrainWrapper(TinyModel(), LossConfig(), embedding_l2_by_optimizer=True)
    assert len(off.param_groups(0.0)) == 1
