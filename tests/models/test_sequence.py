"""Sequence encoders: TIM / DIN against per-sample loops, masking, edge lengths, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from hmoe.config import ConfigError, apply_overrides
from hmoe.models.common import MLPConfig
from hmoe.models.sequence import (
    DINConfig,
    SASRecConfig,
    SequenceEncoder,
    SequenceEncoderConfig,
    TIMConfig,
    TimeIntervalConfig,
    masked_softmax,
)

B, L, D = 4, 5, 8
LENGTHS = torch.tensor([0, 1, 3, 5])  # all-padding, length 1, partial, full
KIND_CONFIGS = {
    "tim": SequenceEncoderConfig(kind="tim"),
    "tim_code": SequenceEncoderConfig(kind="tim", tim=TIMConfig(form="code")),
    "tim_interval": SequenceEncoderConfig(
        kind="tim", tim=TIMConfig(time_intervals=TimeIntervalConfig(num_buckets=6))
    ),
    "din": SequenceEncoderConfig(kind="din", din=DINConfig(attention=MLPConfig(hidden_dims=(6,)))),
    "din_plus": SequenceEncoderConfig(kind="din_plus"),
    "sasrec": SequenceEncoderConfig(kind="sasrec", sasrec=SASRecConfig(num_heads=2, dropout=0.0)),
    "sasrec_target": SequenceEncoderConfig(
        kind="sasrec", sasrec=SASRecConfig(pooling="target", dropout=0.0)
    ),
    "mean": SequenceEncoderConfig(kind="mean"),
}
NUM_TOKENS = {"tim_code": 3, "din_plus": 2}


def _inputs(seed: int = 0, lengths: torch.Tensor = LENGTHS):
    g = torch.Generator().manual_seed(seed)
    behaviours = torch.randn(len(lengths), L, D, generator=g)
    target = torch.randn(len(lengths), D, generator=g)
    delta = torch.rand(len(lengths), L, generator=g).mul(1e6).sort(dim=1, descending=True).values
    return behaviours, target, lengths.clone(), delta


def _encoder(name: str, init_std: float = 0.3) -> SequenceEncoder:
    torch.manual_seed(0)
    return SequenceEncoder(KIND_CONFIGS[name], dim=D, max_len=L, init_std=init_std)


@pytest.mark.parametrize("name", list(KIND_CONFIGS))
def test_shapes_masks_and_finite_outputs(name: str) -> None:
    encoder = _encoder(name)
    inputs = _inputs()
    tokens = encoder(*inputs)
    alpha = encoder.attention_weights(*inputs)
    assert tokens.shape == (B, NUM_TOKENS.get(name, 1), D) == (B, encoder.num_tokens, D)
    assert torch.isfinite(tokens).all() and torch.isfinite(alpha).all()
    assert alpha.shape == (B, L)
    padding = torch.arange(L).unsqueeze(0) >= LENGTHS.unsqueeze(1)
    assert torch.equal(alpha[padding], torch.zeros(int(padding.sum())))
    if name not in ("tim_code",):
        assert torch.equal(tokens[0], torch.zeros_like(tokens[0]))  # empty history
    if name != "din":  # DIN's softmax default; "none" is tested separately
        torch.testing.assert_close(alpha[1:].sum(dim=1), torch.ones(B - 1))
    assert alpha[1, 0].item() == pytest.approx(1.0)  # length-1 history


@pytest.mark.parametrize("name", list(KIND_CONFIGS))
def test_padding_contents_do_not_matter(name: str) -> None:
    encoder = _encoder(name).eval()
    behaviours, target, lengths, delta = _inputs()
    padding = (torch.arange(L).unsqueeze(0) >= lengths.unsqueeze(1)).unsqueeze(-1)
    noisy = torch.where(padding, torch.randn(B, L, D) * 100.0, behaviours)
    noisy_delta = torch.where(padding.squeeze(-1), torch.rand(B, L) * 1e9, delta)
    torch.testing.assert_close(
        encoder(behaviours, target, lengths, delta), encoder(noisy, target, lengths, noisy_delta)
    )


@pytest.mark.parametrize("name", list(KIND_CONFIGS))
def test_every_parameter_gets_a_finite_gradient(name: str) -> None:
    encoder = _encoder(name)
    behaviours, target, lengths, delta = _inputs()
    behaviours.requires_grad_(True)  # the mean encoder has no parameter of its own
    encoder(behaviours, target, lengths, delta).pow(2).sum().backward()
    for pname, p in encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", list(KIND_CONFIGS))
def test_all_padding_batch_has_no_nan_in_outputs_or_gradients(name: str) -> None:
    encoder = _encoder(name)
    behaviours, target, _, delta = _inputs()
    behaviours.requires_grad_(True)
    tokens = encoder(behaviours, target, torch.zeros(B, dtype=torch.long), delta)
    tokens.sum().backward()
    assert torch.isfinite(tokens).all() and torch.isfinite(behaviours.grad).all()
    for pname, p in encoder.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), pname


def _tim_loop(encoder: SequenceEncoder, behaviours, target, lengths, delta, form: str):
    """Per-sample python loop of TIM (spec §2.1), position or interval temporal index."""
    table = encoder.pool.temporal.weight
    intervals = encoder.pool.intervals
    outputs = []
    for b in range(behaviours.shape[0]):
        n = int(lengths[b])
        v = target[b] + table[0]
        keys, logits = [], []
        for i in range(n):
            if intervals is None:
                index = n - i
            else:
                bucket = math.floor(math.log2(1.0 + float(delta[b, i]) / intervals.unit_seconds))
                index = min(bucket, intervals.num_buckets - 1) + 1
            e = behaviours[b, i] + table[index]
            keys.append(e)
            logits.append(torch.dot(e, v) / math.sqrt(D))
        weights = torch.softmax(torch.stack(logits), 0) if n else []
        if form == "paper":
            u = sum((w * (e * v) for w, e in zip(weights, keys, strict=True)), torch.zeros(D))
            outputs.append(u.unsqueeze(0))
        else:
            pooled = sum((w * e for w, e in zip(weights, keys, strict=True)), torch.zeros(D))
            norm = encoder.pool.norm
            normed = (pooled - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
            u = encoder.pool.project(normed * norm.weight + norm.bias)
            outputs.append(torch.stack([u, v, u * v]))
    return torch.stack(outputs)


@pytest.mark.parametrize("name", ["tim", "tim_code", "tim_interval"])
def test_tim_matches_per_sample_loop(name: str) -> None:
    encoder = _encoder(name).eval()  # eval: the code form's BatchNorm uses running stats
    if name == "tim_code":
        encoder.pool.norm.running_mean.uniform_(-0.5, 0.5)
        encoder.pool.norm.running_var.uniform_(0.5, 2.0)
    inputs = _inputs(seed=3)
    inputs[3][2, :3] = torch.tensor([3600.0 * 24, 600.0, 59.0])  # known interval buckets
    form = encoder.pool.form
    expected = _tim_loop(encoder, *inputs, form=form)
    torch.testing.assert_close(encoder(*inputs), expected, atol=1e-5, rtol=1e-5)


def test_tim_temporal_indices() -> None:
    position = _encoder("tim").pool
    _, _, lengths, delta = _inputs()
    assert position.temporal_index(lengths, delta)[2].tolist() == [3, 2, 1, 0, 0]
    assert position.temporal_index(lengths, delta)[3].tolist() == [5, 4, 3, 2, 1]
    interval = _encoder("tim_interval").pool  # unit 60 s, 6 buckets -> indices 1..6
    seconds = torch.tensor([[0.0, 59.0, 60.0, 180.0, 1e9]])
    assert interval.temporal_index(torch.tensor([5]), seconds).tolist() == [[1, 1, 2, 3, 6]]


def test_tim_uniform_attention_without_temporal_is_mean_product() -> None:
    """Spec §10: alpha uniform and p_f = 0 -> u = mean(e_i) * v_t."""
    encoder = _encoder("tim")
    with torch.no_grad():
        encoder.pool.temporal.weight.zero_()
    target = torch.zeros(1, D)
    target[0, :2] = 1.0
    behaviours = torch.randn(1, L, D)
    behaviours[0, :, 1] = 2.0 - behaviours[0, :, 0]  # <e_i, v> = 2 for every i: uniform alpha
    lengths, delta = torch.tensor([4]), torch.zeros(1, L)
    expected = behaviours[0, :4].mean(0) * target[0]
    torch.testing.assert_close(encoder(behaviours, target, lengths, delta)[0, 0], expected)
    alpha = encoder.attention_weights(behaviours, target, lengths, delta)
    torch.testing.assert_close(alpha[0, :4], torch.full((4,), 0.25))


def test_tim_history_order_matters_only_through_temporal_encoding() -> None:
    encoder = _encoder("tim")
    behaviours, target, lengths, delta = _inputs()
    permuted = behaviours.clone()
    permuted[3] = behaviours[3, [2, 0, 4, 1, 3]]
    assert not torch.allclose(
        encoder(behaviours, target, lengths, delta)[3], encoder(permuted, target, lengths, delta)[3]
    )
    with torch.no_grad():
        encoder.pool.temporal.weight.zero_()
    torch.testing.assert_close(
        encoder(behaviours, target, lengths, delta)[3], encoder(permuted, target, lengths, delta)[3]
    )


def _din_loop(encoder: SequenceEncoder, behaviours, target, lengths, normalise: str):
    pool = encoder.pool
    outputs = []
    for b in range(behaviours.shape[0]):
        n = int(lengths[b])
        v = target[b]
        scores = [
            pool.score(pool.mlp(torch.cat([e, v, e - v, e * v]).unsqueeze(0)))[0, 0]
            for e in behaviours[b, :n]
        ]
        if normalise == "softmax" and n:
            scores = list(torch.softmax(torch.stack(scores), 0))
        u = sum((s * e for s, e in zip(scores, behaviours[b, :n], strict=True)), torch.zeros(D))
        outputs.append(torch.stack([u, u * v]) if pool.plus else u.unsqueeze(0))
    return torch.stack(outputs)


@pytest.mark.parametrize("name", ["din", "din_plus"])
@pytest.mark.parametrize("normalise", ["softmax", "none"])
@pytest.mark.parametrize("hidden", [(), (6, 3)])
def test_din_matches_per_sample_loop(name: str, normalise: str, hidden: tuple[int, ...]) -> None:
    """The fast activation unit (first layer split per behaviour / per sample) equals the
    MLP applied to the concatenated ``[e, v, e - v, e * v]`` behaviour by behaviour."""
    attention = MLPConfig(hidden_dims=hidden, activation="dice", use_batch_norm=True)
    config = SequenceEncoderConfig(
        kind=name, din=DINConfig(attention=attention, normalise=normalise)
    )
    torch.manual_seed(0)
    encoder = SequenceEncoder(config, dim=D, max_len=L, init_std=0.3).eval()
    for module in encoder.modules():  # non-trivial running statistics for the eval-mode norms
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    inputs = _inputs(seed=4)
    expected = _din_loop(encoder, *inputs[:3], normalise=normalise)
    torch.testing.assert_close(encoder(*inputs), expected, atol=1e-5, rtol=1e-5)


def test_mean_matches_reference() -> None:
    behaviours, target, lengths, delta = _inputs()
    tokens = _encoder("mean")(behaviours, target, lengths, delta)
    for b, n in enumerate(lengths.tolist()):
        expected = behaviours[b, :n].mean(0) if n else torch.zeros(D)
        torch.testing.assert_close(tokens[b, 0], expected)


def test_sasrec_is_causal() -> None:
    """Changing behaviour j never changes the block output at positions < j."""
    block = _encoder("sasrec").pool.blocks[0]
    x = torch.randn(1, L, D)
    allowed = torch.ones(L, L, dtype=torch.bool).tril().unsqueeze(0)
    changed = x.clone()
    changed[0, 3] += 5.0
    before, after = block(x, allowed), block(changed, allowed)
    torch.testing.assert_close(before[0, :3], after[0, :3])
    assert not torch.allclose(before[0, 3], after[0, 3])


def test_sasrec_last_pooling_picks_newest_behaviour() -> None:
    encoder = _encoder("sasrec")
    alpha = encoder.attention_weights(*_inputs())
    expected = torch.zeros(B, L)
    for b, n in enumerate(LENGTHS.tolist()):
        if n:
            expected[b, n - 1] = 1.0
    assert torch.equal(alpha, expected)


def test_seeded_reference_values() -> None:
    tokens = _encoder("tim")(*_inputs(seed=7))
    expected = torch.tensor([0.0, 1.7785, 3.7473, 2.3082])  # seed 0, std 0.3
    torch.testing.assert_close(tokens.sum(dim=(1, 2)), expected, atol=1e-4, rtol=0)


def test_masked_softmax_all_masked_row_is_zero() -> None:
    logits = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    mask = torch.tensor([[False, False], [True, False]])
    assert masked_softmax(logits, mask).tolist() == [[0.0, 0.0], [1.0, 0.0]]


def test_config_blocks() -> None:
    assert SequenceEncoderConfig().tim == TIMConfig()
    assert SequenceEncoderConfig(kind="din_plus").din == DINConfig()
    assert SequenceEncoderConfig(kind="mean").tim is None
    with pytest.raises(ConfigError, match="'tim' block"):
        SequenceEncoderConfig(kind="din", tim=TIMConfig())
    switched = apply_overrides(SequenceEncoderConfig(), {"kind": "sasrec", "tim": None})
    assert switched.sasrec == SASRecConfig() and switched.tim is None
    round_trip = SequenceEncoderConfig.from_dict(KIND_CONFIGS["tim_interval"].to_dict())
    assert round_trip == KIND_CONFIGS["tim_interval"]
    with pytest.raises(ValueError, match="num_heads"):
        SequenceEncoder(
            SequenceEncoderConfig(kind="sasrec", sasrec=SASRecConfig(num_heads=3)), D, L, 0.1
        )


def test_gradcheck_masked_softmax_and_tim_in_float64() -> None:
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, False], [False] * 4, [True] * 4])
    assert torch.autograd.gradcheck(lambda x: masked_softmax(x, mask), (logits,))
    encoder = _encoder("tim").double()
    behaviours, target, lengths, delta = _inputs()
    behaviours = behaviours.double().requires_grad_(True)
    target = target.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda e, v: encoder(e, v, lengths, delta.double()), (behaviours, target)
    )


@pytest.mark.parametrize("name", list(KIND_CONFIGS))
def test_a_training_batch_of_one_sample(name: str) -> None:
    # a split's last batch can hold one row; the code form's BatchNorm then uses running stats
    encoder = _encoder(name).train()
    behaviours, target, lengths, delta = _inputs(lengths=torch.tensor([3]))
    tokens = encoder(behaviours, target, lengths, delta)
    if tokens.requires_grad:  # mean pooling has no parameter
        tokens.sum().backward()
    assert torch.isfinite(tokens).all()
    if name == "tim_code":
        encoder.eval()
        torch.testing.assert_close(encoder(behaviours, target, lengths, delta), tokens)


def _slow_rollout(encoder: SequenceEncoder, behaviours, target, lengths) -> torch.Tensor:
    """SASRec's attention rollout, one sample and one query at a time, from the blocks'
    parameters: per block the head-mean softmax over the allowed keys (causal, real), then
    the pooling weights carried back through ``(A + I) / 2`` block by block."""
    pool = encoder.pool
    out = torch.zeros(len(lengths), L)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            continue
        x = behaviours[b, :n] + torch.stack([pool.position.weight[n - i] for i in range(n)])
        maps = []
        for block in pool.blocks:
            h = block.norm_attention(x)
            q, k, v = block.qkv(h).chunk(3, dim=-1)
            heads, width = block.heads, D // block.heads
            a = torch.zeros(n, n)
            for head in range(heads):
                cols = slice(head * width, (head + 1) * width)
                for i in range(n):
                    scores = torch.tensor(
                        [float(q[i, cols] @ k[j, cols]) / math.sqrt(width) for j in range(i + 1)]
                    )
                    a[i, : i + 1] += torch.softmax(scores, dim=0) / heads
            maps.append(a)
            y = torch.zeros(n, D)
            for head in range(heads):
                cols = slice(head * width, (head + 1) * width)
                weights = torch.zeros(n, n)
                for i in range(n):
                    scores = torch.tensor(
                        [float(q[i, cols] @ k[j, cols]) / math.sqrt(width) for j in range(i + 1)]
                    )
                    weights[i, : i + 1] = torch.softmax(scores, dim=0)
                y[:, cols] = weights @ v[:, cols]
            x = x + block.out(y)
            x = x + block.ffn(block.norm_ffn(x))
        x = pool.norm(x)
        if pool.pooling == "target":
            w = torch.softmax(torch.stack([x[i] @ target[b] for i in range(n)]) / math.sqrt(D), 0)
        else:
            w = torch.zeros(n)
            w[n - 1] = 1.0
        for a in reversed(maps):
            w = w @ (0.5 * (a + torch.eye(n)))
        out[b, :n] = w
    return out


@pytest.mark.parametrize("name", ["sasrec", "sasrec_target"])
def test_sasrec_behaviour_weights_equal_a_slow_rollout(name: str) -> None:
    encoder = _encoder(name).eval()
    behaviours, target, lengths, delta = _inputs(seed=3)
    with torch.no_grad():
        fast = encoder.behaviour_weights(behaviours, target, lengths, delta)
        slow = _slow_rollout(encoder, behaviours, target, lengths)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    real = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    assert torch.all(fast[~real] == 0.0)  # padding and the empty history get nothing
    torch.testing.assert_close(fast.sum(dim=1), (lengths > 0).float())
    # the newest behaviour keeps at least the residual's half per block under last pooling
    if name == "sasrec":
        newest = fast[torch.arange(B), (lengths - 1).clamp(min=0)]
        assert torch.all(newest[lengths > 0] >= 0.5 ** len(encoder.pool.blocks) - 1e-6)


def test_behaviour_weights_of_target_attention_encoders_are_their_pooling_weights() -> None:
    encoder = _encoder("din")
    inputs = _inputs(seed=5)
    assert torch.equal(encoder.behaviour_weights(*inputs), encoder.attention_weights(*inputs))
