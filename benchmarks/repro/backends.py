"""Section: the ``torchrec`` embedding backend against the ``torch`` one (criteo-tiny, Q2).

Both backends train the same presets (``hmoe``, ``dcnv2``) on the Q2 protocol; only where the id
tables live differs. The ``torch`` backend's tables are trained by the dense Adam with the
presets' whole-table ``loss.embedding_l2``; the ``torchrec`` backend's by FBGEMM's fused
row-wise Adagrad with the touched-row ``table_l2``, so its learning rate and L2 are chosen here,
per model, from ``CANDIDATES`` by mean validation AUC over the seeds. Test AUC is read once per
backend: the ``torch`` preset and the chosen ``torchrec`` candidate. The verdict: torchrec is
within seed noise when the test AUCs' means differ by less than 2 of the larger seed std.
"""

from __future__ import annotations

from typing import Any

from repro import ctr
from repro.common import Context, Section, fmt, mean_std, seeds_of, table, values

SECTION = "backends"
MODELS = ("hmoe", "dcnv2")
# (table_lr, table_l2) of the torchrec backend; the decay per touched row and step is 2 lr l2
CANDIDATES: tuple[tuple[float, float], ...] = (
    (0.01, 0.0),
    (0.03, 0.0),
    (0.1, 0.0),
    (0.3, 0.0),
    (1.0, 0.0),
    (0.3, 0.01),
    (0.03, 0.01),
    (0.1, 0.01),
    (0.1, 0.1),
    (0.03, 0.3),
)
NOISE_STDS = 2.0  # a difference under this many seed stds is noise


def _runs(ctx: Context, preset: str, candidate: tuple[float, float] | None) -> list[dict[str, Any]]:
    overrides = dict(ctr.PROTOCOL[ctr.CRITEO])
    variant = f"{preset} torch"
    if candidate is not None:
        lr, l2 = candidate
        overrides |= {
            "model.embedding.backend": "torchrec",
            "model.embedding.table_lr": lr,
            "model.embedding.table_l2": l2,
        }
        variant = f"{preset} torchrec table_lr={lr} table_l2={l2}"
    return seeds_of(
        ctx,
        section=SECTION,
        dataset=ctr.CRITEO,
        variant=variant,
        preset=preset,
        data=ctr.prepared(ctx, ctr.CRITEO),
        overrides=overrides,
    )


def _best_epochs(runs: list[dict[str, Any]]) -> str:
    return "/".join(str(r["best_epoch"]) for r in runs) or "n/a"


def run(ctx: Context) -> Section:
    chosen_rows, candidate_rows, verdicts = [], [], []
    for preset in MODELS:
        torch_runs = _runs(ctx, preset, None)
        scored, short = [], 0
        for candidate in CANDIDATES:
            runs = _runs(ctx, preset, candidate)
            val = values(runs, "val_auc")
            candidate_rows.append(
                [f"`{preset}`", f"{candidate[0]:g}", f"{candidate[1]:g}", fmt(val), str(len(runs))]
            )
            short += len(val) < len(ctx.seeds)
            if val:
                scored.append((mean_std(val)[0], candidate, runs))
        # a choice among candidates with seeds missing would favour whichever ran first
        if short:
            verdicts.append(
                f"`{preset}`: no choice yet, {short} of {len(CANDIDATES)} candidates lack some "
                f"of the {len(ctx.seeds)} seeds"
            )
            continue
        _, best, best_runs = max(scored, key=lambda s: s[0])
        for name, runs in ((f"`{preset}` torch", torch_runs), (f"`{preset}` torchrec", best_runs)):
            settings = f"table_lr={best[0]:g} table_l2={best[1]:g}"
            if runs is torch_runs:
                settings = "preset"
            chosen_rows.append(
                [
                    name,
                    settings,
                    fmt(values(runs, "val_auc")),
                    fmt(values(runs, "test_auc")),
                    fmt(values(runs, "test_logloss")),
                    _best_epochs(runs),
                    f"{mean_std([r['wall_s'] for r in runs])[0]:.0f}",
                    str(len(runs)),
                ]
            )
        a_torch, a_rec = values(torch_runs, "test_auc"), values(best_runs, "test_auc")
        if a_torch and a_rec:
            diff = mean_std(a_rec)[0] - mean_std(a_torch)[0]
            noise = max(mean_std(a_torch)[1], mean_std(a_rec)[1])
            if abs(diff) < NOISE_STDS * noise:
                verdict = f"within seed noise (|difference| < {NOISE_STDS:g} std)"
            else:
                side = "better" if diff > 0 else "worse"
                verdict = f"{side} than torch beyond seed noise (|difference| ≥ {NOISE_STDS:g} std)"
            verdicts.append(
                f"`{preset}`: torchrec − torch = {diff:+.4f} test AUC, larger seed std "
                f"{noise:.4f}: **{verdict}**"
            )
    header = [
        "model / backend", "tables", "val AUC", "test AUC", "test logloss", "best epoch",
        "s per run", "seeds",
    ]  # fmt: skip
    body = (
        "criteo-tiny, Q2 settings (`train.epochs=10`, `train.batch_size=512`, best-validation "
        "epoch), 1 thread. `torch`: the preset's tables (`nn.Embedding`, dense Adam, whole-table "
        "`loss.embedding_l2`). `torchrec`: the same model with `model.embedding.backend="
        "torchrec` (FBGEMM fused row-wise Adagrad, touched-row `table_l2`), its `table_lr` and "
        "`table_l2` chosen per model by mean validation AUC among the candidates below; test "
        "AUC read once per backend.\n\n"
        + table(header, chosen_rows)
        + "\n\n"
        + "\n".join(f"- {v}" for v in verdicts)
        + "\n\nCandidates of the `torchrec` tables (validation AUC only):\n\n"
        + table(["model", "table_lr", "table_l2", "val AUC", "seeds"], candidate_rows)
    )
    return Section(title="Embedding backends: torch against torchrec (criteo-tiny)", body=body)
