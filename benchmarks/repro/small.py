"""Section: the ``hmoe`` preset on small data (a 20,000-row sample of ml-100k).

A user's first run on a small log should not lose to a DNN. ``datasets.SMALL`` draws 20,000 of
ml-100k's 100,000 ratings uniformly (seed 0) and prepares them as Q1 (global temporal 80/10/10
split, history from the sampled log only), so every user has about a fifth of their ratings and
histories are sparse. Protocol as Q1 (``ctr.PROTOCOL``). ``hmoe`` runs with TIM in both token
forms (``paper``, the preset's, and the official code's ``code``), each set explicitly, beside
the ``dnn`` and ``din`` baselines; the rows are read on validation AUC, test AUC beside it.
"""

from __future__ import annotations

from typing import Any

from repro import ctr
from repro.common import Context, Section, fmt, mean_std, seeds_of, table, values
from repro.datasets import SMALL, SMALL_ROWS, prepared

SECTION = "small"
FORM = "model.encoder.sequence.tim.form"
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("dnn", "dnn", {}),
    ("din", "din", {}),
    ("hmoe", "hmoe", {}),
    ("hmoe, TIM paper form", "hmoe", {FORM: "paper"}),
    ("hmoe, TIM code form", "hmoe", {FORM: "code"}),
    (
        "hmoe, TIM paper form, stops on val_logloss too",
        "hmoe",
        {FORM: "paper", "train.early_stopping_guard": "val_logloss"},
    ),
)


def _stats(data: Any) -> str:
    """Rows per user in train and the share of test rows / users never seen in train."""
    from hmoe.platform.data.batches import load_schema, read_split
    from hmoe.schema import OOV_INDEX

    schema = load_schema(data)
    train, test = (read_split(data, split, schema) for split in ("train", "test"))
    users = train["user_id"].unique()
    unseen = test["user_id"] == OOV_INDEX
    test_users = test["user_id"][~unseen].unique().numel()
    return (
        f"{len(train['user_id']):,} train rows over {users.numel():,} users "
        f"({len(train['user_id']) / users.numel():.1f} rows per user); "
        f"{float(unseen.float().mean()):.0%} of the {len(test['user_id']):,} test rows "
        f"are users unseen in train ({test_users} seen test users)"
    )


def run(ctx: Context) -> Section:
    data = prepared(ctx, SMALL)
    rows, val_means = [], {}
    for name, preset, extra in VARIANTS:
        runs = seeds_of(
            ctx,
            section=SECTION,
            dataset=SMALL,
            variant=name,
            preset=preset,
            data=data,
            overrides=ctr.PROTOCOL[ctr.ML] | extra,
        )
        val, test = values(runs, "val_auc"), values(runs, "test_auc")
        if val:
            val_means[name] = mean_std(val)[0]
        rows.append(
            [
                f"`{name}`",
                fmt(val),
                fmt(test),
                fmt(values(runs, "val_logloss")),
                "/".join(str(r["best_epoch"]) for r in runs) or "n/a",
                "/".join(str(r["epochs_run"]) for r in runs) or "n/a",
                str(len(runs)),
            ]
        )
    stats = _stats(data) if (data / "manifest.json").exists() else "dataset not prepared here"
    ranked = sorted(val_means.items(), key=lambda kv: -kv[1])
    order = ", ".join(f"`{k}` {v:.4f}" for k, v in ranked)
    header = [
        "model",
        "val AUC",
        "test AUC",
        "val logloss",
        "best epoch",
        "epochs run",
        "seeds",
    ]
    body = "\n".join(
        [
            f"`{SMALL}`: {SMALL_ROWS:,} ratings of ml-100k drawn uniformly (seed 0), prepared "
            f"as Q1: {stats}. Settings as Q1. ml-100k has 943 users, so a 20,000-row sample "
            "keeps about a fifth of each user's ratings rather than a handful; its histories are "
            "built from the sample, so they are a fifth as long as in Q1.",
            "",
            table(header, rows),
            "",
            f"By mean validation AUC: {order}.",
        ]
    )
    return Section(title="The hmoe preset on small data (20k rows of ml-100k)", body=body)
