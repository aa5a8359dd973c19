"""Section: the ``hmoe`` preset on small data (20,000-row logs).

A user's first run on a small log should not lose to a DNN. Two small logs:

- ``datasets.SMALL`` draws 20,000 of ml-100k's 100,000 ratings uniformly (seed 0) and prepares
  them as Q1 (global temporal 80/10/10 split, history from the sampled log only), so every user
  has about a fifth of their ratings and histories are sparse. ``hmoe`` runs with TIM in both
  token forms (``paper``, the preset's, and the official code's ``code``), each set explicitly,
  and with early stopping guarded by the validation loss, beside ``dnn`` and ``din``.
- ``SMALL_SYNTH``: ``hmoe data synth`` with 20,000 rows at ``SMALL_SYNTH_ROWS_PER_USER`` rows
  per user (5,000 users, the handful of rows per user that ml-100k, with 943 users, cannot give
  at this size), click only, at a rating-like positive rate (``SMALL_SYNTH_CLICK_RATE``; the
  default 0.035 leaves about 70 test positives). ``dnn``, ``din`` and ``hmoe`` as they are.

Protocol as Q1 (``ctr.PROTOCOL``); the rows are read on validation AUC, test AUC beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from repro import ctr
from repro import multitask_data as md
from repro.common import Context, Section, fmt, mean_std, seeds_of, table, values
from repro.datasets import SMALL, SMALL_ROWS, prepared

SECTION = "small"
FORM = "model.encoder.sequence.tim.form"
Variants = tuple[tuple[str, str, dict[str, Any]], ...]
VARIANTS: Variants = (
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
SMALL_SYNTH = "synth-20k-4"
SMALL_SYNTH_ROWS = 20_000
SMALL_SYNTH_SEED = 0
SMALL_SYNTH_ROWS_PER_USER = 4
SMALL_SYNTH_CLICK_RATE = 0.3
SYNTH_VARIANTS: Variants = (("dnn", "dnn", {}), ("din", "din", {}), ("hmoe", "hmoe", {}))
HEADER = ["model", "val AUC", "test AUC", "val logloss", "best epoch", "epochs run", "seeds"]


def small_synth(ctx: Context) -> Path:
    """The prepared ``SMALL_SYNTH`` log (generated once)."""
    from hmoe.platform.data.synth import SPEC_FILE, SynthConfig

    raw = md.raw_dir(ctx, SMALL_SYNTH, SMALL_SYNTH_ROWS, SMALL_SYNTH_SEED)
    config = SynthConfig(
        rows_per_user=SMALL_SYNTH_ROWS_PER_USER,
        click_rate=SMALL_SYNTH_CLICK_RATE,
        tasks=("click",),
    )

    def spec() -> dict[str, Any]:
        made = md.synth_raw(ctx, SMALL_SYNTH, SMALL_SYNTH_ROWS, SMALL_SYNTH_SEED, config)
        return yaml.safe_load((made / SPEC_FILE).read_text()) | {"name": SMALL_SYNTH}

    return md.prepare_spec(ctx, SMALL_SYNTH, spec, raw)


def _stats(data: Any) -> str:
    """Rows per user in train and the share of test rows / users never seen in train."""
    from hmoe.platform.data.batches import load_schema, read_split
    from hmoe.schema import OOV_INDEX

    if not (data / "manifest.json").exists():
        return "dataset not prepared here"
    schema = load_schema(data)
    train, test = (read_split(data, split, schema) for split in ("train", "test"))
    users = train["user_id"].unique()
    unseen = test["user_id"] == OOV_INDEX
    test_users = test["user_id"][~unseen].unique().numel()
    positives = int(test["labels"][:, 0].sum())
    return (
        f"{len(train['user_id']):,} train rows over {users.numel():,} users "
        f"({len(train['user_id']) / users.numel():.1f} rows per user); "
        f"{float(unseen.float().mean()):.0%} of the {len(test['user_id']):,} test rows "
        f"({positives:,} positive) are users unseen in train ({test_users} seen test users)"
    )


def _table(ctx: Context, dataset: str, data: Path, variants: Variants) -> str:
    """The variants' rows on ``dataset`` and their order by mean validation AUC."""
    rows, val_means = [], {}
    for name, preset, extra in variants:
        runs = seeds_of(
            ctx,
            section=SECTION,
            dataset=dataset,
            variant=name,
            preset=preset,
            data=data,
            overrides=ctr.PROTOCOL[ctr.ML] | extra,
        )
        val = values(runs, "val_auc")
        if val:
            val_means[name] = mean_std(val)[0]
        rows.append(
            [
                f"`{name}`",
                fmt(val),
                fmt(values(runs, "test_auc")),
                fmt(values(runs, "val_logloss")),
                "/".join(str(r["best_epoch"]) for r in runs) or "n/a",
                "/".join(str(r["epochs_run"]) for r in runs) or "n/a",
                str(len(runs)),
            ]
        )
    ranked = sorted(val_means.items(), key=lambda kv: -kv[1])
    order = ", ".join(f"`{k}` {v:.4f}" for k, v in ranked)
    return f"{table(HEADER, rows)}\n\nBy mean validation AUC: {order or 'n/a'}."


def run(ctx: Context) -> Section:
    data = prepared(ctx, SMALL)
    synth = small_synth(ctx)
    body = "\n".join(
        [
            f"### `{SMALL}`: ml-100k, about a fifth of each user's ratings",
            "",
            f"{SMALL_ROWS:,} ratings of ml-100k drawn uniformly (seed 0), prepared as Q1: "
            f"{_stats(data)}. Settings as Q1. ml-100k has 943 users, so a 20,000-row sample "
            "keeps about a fifth of each user's ratings rather than a handful; its histories "
            "are built from the sample, so they are a fifth as long as in Q1.",
            "",
            _table(ctx, SMALL, data, VARIANTS),
            "",
            f"### `{SMALL_SYNTH}`: synthetic, {SMALL_SYNTH_ROWS_PER_USER} rows per user",
            "",
            f"`hmoe data synth --rows {SMALL_SYNTH_ROWS} --seed {SMALL_SYNTH_SEED} --set "
            f"rows_per_user={SMALL_SYNTH_ROWS_PER_USER} --set click_rate="
            f"{SMALL_SYNTH_CLICK_RATE} --set 'tasks=[click]'`, prepared with its own spec "
            f"(temporal 80/10/10 split, history: the user's earlier clicks): {_stats(synth)}. "
            "Settings as Q1.",
            "",
            _table(ctx, SMALL_SYNTH, synth, SYNTH_VARIANTS),
        ]
    )
    return Section(title="The hmoe preset on small data (20k-row logs)", body=body)
