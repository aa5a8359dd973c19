"""Section: the gradient on negatives under BCE vs Combined-Pair as positives get sparser.

The mechanism behind the ``sparse`` section's table, measured on its own settings (criteo-tiny,
``dcnv2``, positives weighted beta_pos in the BCE, the repo's best alpha per beta): after
training, on the restored best-epoch model, the validation split in batches of the training
batch size; per batch, the L2 norm over the negatives of ``d loss / d logit`` of each term of
the run's own objective (``hmoe.platform.analysis.negatives.negative_gradient_norms``: BCE
alone, or ``alpha * BCE_w + (1 - alpha) * pair``), averaged over the batches. The BCE column of
the Combined-Pair run is its ``alpha``-scaled BCE term.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from repro import ctr, sparse
from repro.common import Context, Section, fmt, mean_std, seeds_of, table, values

SECTION = "negatives"
# the two ends of the sparse section's betas (every beta there would double the section's
# 12 runs on a 2-core box; the end points carry the trend the mechanism is about)
BETAS = (min(sparse.BETAS), max(sparse.BETAS))
PREFIX = "neg_grad_"


def _norms(beta: float, alpha: float):
    """``extra`` hook: mean over validation batches of the objective's per-term norms."""

    def extra(model: Any, cfg: Any) -> Mapping[str, float]:
        import torch

        from hmoe.platform.analysis.negatives import negative_gradient_norms
        from hmoe.platform.data.batches import iter_minibatches, load_schema, read_split
        from hmoe.schema import LABELS

        val = read_split(cfg.data.path, "val", load_schema(cfg.data.path))
        model.eval()
        sums: dict[str, float] = {}
        batches = 0
        for batch in iter_minibatches(val, cfg.train.batch_size, seed=0, drop_last=True):
            with torch.no_grad():
                logits_B = model(batch)[:, 0]
            norms = negative_gradient_norms(
                logits_B, batch[LABELS][:, 0], positive_weight=beta, alpha=alpha
            )
            for k, v in norms.items():
                sums[k] = sums.get(k, 0.0) + v
            batches += 1
        return {f"{PREFIX}{k}": v / batches for k, v in sums.items()}

    return extra


def _runs(ctx: Context, beta: float, ranking: bool) -> list[dict[str, Any]]:
    overrides = ctr.PROTOCOL[ctr.CRITEO] | {"loss.positive_weight": beta}
    alpha = 1.0
    if ranking:
        alpha = sparse.BEST_ALPHA[beta]
        overrides |= {"loss.ranking.enabled": True, "loss.ranking.alpha": alpha}
    return seeds_of(
        ctx,
        section=SECTION,
        dataset=ctr.CRITEO,
        variant=f"beta={beta} {'combined-pair' if ranking else 'bce'}",
        preset=sparse.BACKBONE,
        data=ctr.prepared(ctx, ctr.CRITEO),
        overrides=overrides,
        extra=_norms(beta, alpha),
    )


def run(ctx: Context) -> Section:
    rows, totals = [], {}
    for beta in BETAS:
        bce, pair = _runs(ctx, beta, False), _runs(ctx, beta, True)
        totals[beta] = (values(bce, f"{PREFIX}total"), values(pair, f"{PREFIX}total"))
        rows.append(
            [
                f"{beta}",
                f"{sparse.BEST_ALPHA[beta]}",
                fmt(values(bce, f"{PREFIX}total"), 5),
                fmt(values(pair, f"{PREFIX}bce"), 5),
                fmt(values(pair, f"{PREFIX}pair"), 5),
                fmt(values(pair, f"{PREFIX}total"), 5),
                fmt(values(bce, "test_auc")),
                fmt(values(pair, "test_auc")),
                str(min(len(bce), len(pair))),
            ]
        )
    header = [
        "beta_pos", "alpha", "‖∇neg‖ BCE run", "‖∇neg‖ C-P run: BCE term", "C-P: pair term",
        "C-P: total", "AUC BCE", "AUC C-P", "seeds",
    ]  # fmt: skip
    return Section(
        title="Gradient on negatives: BCE vs Combined-Pair under sparse positives (criteo-tiny)",
        body="\n\n".join(
            [__doc__.split("\n", 2)[2].strip(), table(header, rows), _findings(totals)]
        ),
    )


def _findings(totals: Mapping[float, tuple[list[float], list[float]]]) -> str:
    lines = []
    for beta, (bce, pair) in totals.items():
        if min(len(bce), len(pair)) < 2:
            continue
        (mb, sb), (mp, sp) = mean_std(bce), mean_std(pair)
        verdict = "beyond" if abs(mp - mb) > 2 * max(sb, sp) else "within (noise)"
        lines.append(
            f"- beta {beta}: Combined-Pair / BCE total norm on negatives = {mp / mb:.2f}x "
            f"({verdict} 2 seed stds)."
        )
    ends = [b for b in (min(totals), max(totals)) if min(map(len, totals[b])) >= 2]
    if len(ends) == 2:
        lo, hi = ends
        for name, index in (("BCE", 0), ("Combined-Pair", 1)):
            ratio = mean_std(totals[lo][index])[0] / mean_std(totals[hi][index])[0]
            lines.append(f"- {name}: norm at beta {lo} / norm at beta {hi} = {ratio:.2f}x.")
    return "\n".join(lines) if lines else "Not run."
