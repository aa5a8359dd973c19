"""target_attention: its hand-written backward against autograd on the plain formula."""

from __future__ import annotations

import pytest
import torch

from hmoe.models.attention import masked_softmax, target_attention

B, L, D = 5, 7, 6
SCALE = 1.0 / D**0.5


def _inputs(dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(3)
    e_BLD = torch.randn(B, L, D, generator=g, dtype=dtype, requires_grad=True)
    v_BD = torch.randn(B, D, generator=g, dtype=dtype, requires_grad=True)
    lengths_B = torch.tensor([0, 1, 3, L, 5])  # an all-padding row and a length-1 history
    mask_BL = torch.arange(L).unsqueeze(0) < lengths_B.unsqueeze(1)
    return e_BLD, v_BD, mask_BL


def _reference(e_BLD, v_BD, mask_BL, scale):
    alpha_BL = masked_softmax(torch.einsum("bld,bd->bl", e_BLD, v_BD) * scale, mask_BL)
    return torch.einsum("bl,bld->bd", alpha_BL, e_BLD), alpha_BL


@pytest.mark.parametrize("use_alpha", [False, True])
def test_matches_autograd_on_the_plain_formula(use_alpha: bool) -> None:
    e_BLD, v_BD, mask_BL = _inputs()
    g = torch.Generator().manual_seed(4)
    w_BD, w_BL = torch.randn(B, D, generator=g), torch.randn(B, L, generator=g)
    results = []
    for fn in (target_attention, _reference):
        pooled_BD, alpha_BL = fn(e_BLD, v_BD, mask_BL, SCALE)
        loss = (pooled_BD * w_BD).sum() + ((alpha_BL * w_BL).sum() if use_alpha else 0.0)
        results.append((pooled_BD, alpha_BL, *torch.autograd.grad(loss, (e_BLD, v_BD))))
    for ours, expected in zip(*results, strict=True):
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_padding_gets_zero_weight_and_zero_gradient() -> None:
    e_BLD, v_BD, mask_BL = _inputs()
    pooled_BD, alpha_BL = target_attention(e_BLD, v_BD, mask_BL, SCALE)
    (grad_e,) = torch.autograd.grad(pooled_BD.square().sum(), (e_BLD,))
    assert torch.all(alpha_BL[~mask_BL] == 0) and torch.all(grad_e[~mask_BL] == 0)
    assert torch.all(pooled_BD[0] == 0)  # the all-padding row
    torch.testing.assert_close(alpha_BL.sum(dim=1)[1:], torch.ones(B - 1))


def test_gradcheck_in_float64() -> None:
    e_BLD, v_BD, mask_BL = _inputs(torch.float64)
    assert torch.autograd.gradcheck(
        lambda e, v: target_attention(e, v, mask_BL, SCALE), (e_BLD, v_BD)
    )


def test_gradient_only_on_the_inputs_that_need_it() -> None:
    e_BLD, _, mask_BL = _inputs()
    v_BD = torch.randn(B, D)  # a constant target
    pooled_BD, _ = target_attention(e_BLD, v_BD, mask_BL, SCALE)
    pooled_BD.sum().backward()
    assert e_BLD.grad is not None and torch.isfinite(e_BLD.grad).all()


def test_backward_after_an_autocast_forward() -> None:
    # as the train loop does on CUDA: forward under bf16 autocast, backward outside it
    e_BLD, v_BD, mask_BL = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled_BD, alpha_BL = target_attention(e_BLD, v_BD, mask_BL, SCALE)
        loss = pooled_BD.float().square().sum() + alpha_BL.float().sum()
    grads = torch.autograd.grad(loss, (e_BLD, v_BD))
    expected_pooled, expected_alpha = _reference(e_BLD, v_BD, mask_BL, SCALE)
    loss = expected_pooled.square().sum() + expected_alpha.sum()
    expected = torch.autograd.grad(loss, (e_BLD, v_BD))
    for grad, reference in zip(grads, expected, strict=True):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, reference, atol=3e-2, rtol=3e-2)
