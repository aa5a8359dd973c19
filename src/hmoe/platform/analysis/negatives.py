"""Where the loss's gradient goes when positives are sparse: its norm on the negatives' logits.

The ranking-loss paper's mechanism: with few (or down-weighted) positives a BCE-trained model
pushes the negatives' probabilities towards 0, and BCE's gradient on a negative's logit,
``w * sigmoid(z) / B``, vanishes with them; the pair term's gradient on a negative,
``sum_i sigmoid(z_j - z_i) / (P * N)``, depends on how the negative ranks against the positives
and does not. ``negative_gradient_norms`` measures the two terms of a Combined-Pair objective
``alpha * BCE_w + (1 - alpha) * pair`` (``alpha = 1``: BCE alone) on one batch, as the objective
scales them, with the library's own loss functions.

Legend for shape suffixes: ``B`` batch.
"""

from __future__ import annotations

import torch

from hmoe.models.losses import POSITIVE_THRESHOLD, bce_per_task, pairwise_ranking_loss

__all__ = ["negative_gradient_norms"]


def negative_gradient_norms(
    logits_B: torch.Tensor, labels_B: torch.Tensor, *, positive_weight: float, alpha: float
) -> dict[str, float]:
    """L2 norms over the batch's negatives of ``d loss / d logit``: ``bce`` (``alpha * BCE``,
    positives weighted ``positive_weight``), ``pair`` (``(1 - alpha) * pair``), ``total`` (their
    sum's gradient), and ``negatives`` (how many the batch has). A batch without a negative
    gives zeros."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if logits_B.shape != labels_B.shape or logits_B.dim() != 1:
        raise ValueError(f"logits {tuple(logits_B.shape)} and labels must be one [B] shape")
    z_B = logits_B.detach().double().requires_grad_(True)
    labels_B = labels_B.detach().double()
    positive_B = labels_B > POSITIVE_THRESHOLD
    weight_B = torch.where(positive_B, positive_weight, 1.0).to(z_B.dtype)
    terms = {
        "bce": alpha
        * bce_per_task(z_B.unsqueeze(1), labels_B.unsqueeze(1), weight_B.unsqueeze(1))[0],
        "pair": (1.0 - alpha) * pairwise_ranking_loss(z_B, labels_B),
    }
    out = {"negatives": float((~positive_B).sum())}
    grads = {}
    for name, loss in terms.items():
        grad_B = (
            torch.autograd.grad(loss, z_B, allow_unused=True)[0] if loss.requires_grad else None
        )
        grads[name] = torch.zeros_like(z_B) if grad_B is None else grad_B
        out[name] = float(grads[name][~positive_B].norm())
    out["total"] = float((grads["bce"] + grads["pair"])[~positive_B].norm())
    return out
