"""IPW of repeated exposure on a synthetic log with exposure-inflated clicks.

``hmoe data synth`` with ``exposure_inflation`` adds ``inflation * log(1 + k)`` to the click logit
of an impression whose (user, item) was shown ``k`` times before, whatever the user's interest,
and records the planted interest: the click drawn, with the row's own random number, from the
click logit without that term (``click_interest``, a subset of the observed clicks). The data set
carries it as a second label, ``interest``, with task weight 0: the models learn from the
observed clicks only. The section scores the click head's ranking of the test split against both
labels, trained with and without the IPW weights of ``loss.ipw`` (``hmoe.models.losses.IPWConfig``)
on the click positives.

Each run picks its best epoch on the validation split's observed clicks, as a practitioner who
has no planted interest would: the rows without IPW on the click AUC (``val_auc_click``), the
IPW row on the IPW-weighted click logloss (``val_ipw_logloss``: the same weights on the
validation positives, an estimate of the loss against the interest). The click AUC would reward
the very inflation IPW removes, and pick the IPW run's late epochs for it.

The world has no planted sequence effect. That effect raises the click logit of an item whose
category the user clicked recently, and it is part of the planted interest; but the click history
it reads holds the observed clicks, which the inflation adds to on every repeat. With it on, the
planted interest itself rises with ``k`` (``log(1 + k)`` alone then ranks the interest clicks
better than chance), so the interest AUC rewards a model for keeping the exposure term that IPW
exists to remove, and a model that ranks interest only roughly loses by IPW. The section reports
that AUC of ``log(1 + k)`` alone (``exposure_interest_auc``; 0.5: independent), so the report
shows whether this world keeps the two apart (tests/test_repro_exposure.py checks that it does).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from repro.common import (
    FIVE_SEEDS,
    Context,
    Section,
    first_task_logits,
    fmt,
    incomplete,
    mean_std,
    seeds_of,
    table,
    values,
)

SECTION = "exposure"
DATASET = "synth_exposure_noseq"
ROWS = 100_000
SYNTH_SEED = 11
# dense enough that the test split's click and interest AUCs rest on many clicks, not on a few
CLICK_RATE = 0.10
INFLATION = 1.0  # click odds times (1 + k) on the k-th repeat, at low click rates
# no planted sequence effect: it would tie the planted interest to k (module docstring)
PLANTED_STRENGTH = 0.0
INTEREST_TASK = "interest"
PRESET = "dnn"
EPOCHS = 4
# variant -> loss overrides; "power" uses the generator's own form (1 + k) ** -INFLATION
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"loss.ipw.enabled": False},
    "power 1.0": {
        "loss.ipw.enabled": True,
        "loss.ipw.exponent": INFLATION,
        # the best epoch by the weighted loss, not by the click AUC IPW argues against
        "train.early_stopping_metric": "val_ipw_logloss",
    },
}
# the similarity ablation, without IPW: the former 20-bucket table instead of MNSE
BUCKETS = "none, similarity buckets"
BUCKET_LEVELS = 20
ABLATIONS: dict[str, dict[str, Any]] = {
    BUCKETS: {
        "loss.ipw.enabled": False,
        "model.encoder.similarity.kind": "bucket",
        "model.encoder.similarity.num_levels": BUCKET_LEVELS,
    },
}
# k is heavy-tailed here (a heavy user sees a popular item many times over): with exponent 1 a
# floor of 0.1 binds from k = 10 on, for a large share of the repeat clicks, and leaves them an
# inflation of up to log((1 + k) / 10); at 0.01 it binds only from k = 100 on, for few of them
# (tests/test_repro_exposure.py holds the share under a bound)
MIN_WEIGHT = 0.01
SHARED: dict[str, Any] = {
    "loss.task_weights": {INTEREST_TASK: 0.0},
    "loss.ipw.tasks": ["click"],
    "loss.ipw.min_weight": MIN_WEIGHT,
    "train.early_stopping_metric": "val_auc_click",
    "train.epochs": EPOCHS,
}


def synth_config() -> Any:
    from hmoe.platform.data.synth import SynthConfig
    from hmoe.platform.data.synth_model import PlantedConfig

    return SynthConfig(
        tasks=("click",),
        click_rate=CLICK_RATE,
        fatigue=0.0,
        exposure_inflation=INFLATION,
        planted=PlantedConfig(strength=PLANTED_STRENGTH),
    )


def _raw(ctx: Context) -> Path:
    return ctx.work / "raw" / f"{DATASET}-{ROWS}-{SYNTH_SEED}"


def _prepared(ctx: Context) -> Path:
    from hmoe.platform.data import prepare
    from hmoe.platform.data.synth import SPEC_FILE, synthesize
    from hmoe.platform.data.synth_model import INTEREST_CLICK

    out = ctx.work / "data" / DATASET
    if ctx.cached_only or (out / "manifest.json").exists():
        return out
    raw = _raw(ctx)
    if not (raw / SPEC_FILE).exists():
        import ray

        if not ray.is_initialized():  # synthesize asks the running cluster for its CPUs
            ray.init(include_dashboard=False, configure_logging=False)
        ctx.log(f"synthesizing {ROWS:,} rows (seed {SYNTH_SEED}) -> {raw}")
        synthesize(raw, ROWS, SYNTH_SEED, synth_config(), overwrite=True)
    spec = yaml.safe_load((raw / SPEC_FILE).read_text())
    spec["name"] = DATASET
    spec["labels"] = [*spec["labels"], {"task": INTEREST_TASK, "column": INTEREST_CLICK}]
    spec_path = ctx.work / "specs" / f"{DATASET}.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    ctx.log(f"preparing {DATASET} -> {out}")
    prepare(spec_path, out, base_dir=raw)
    return out


def _interest_metrics(model: Any, cfg: Any) -> dict[str, float]:
    """The click head's test ranking against the observed clicks and the planted interest."""
    import numpy as np

    from hmoe.platform.core.metrics import auc
    from hmoe.platform.data.batches import load_schema, read_split
    from hmoe.schema import EXPOSURE, LABELS

    schema = load_schema(cfg.data.path)
    data = read_split(cfg.data.path, "test", schema)
    logits_N = first_task_logits(model, data, cfg.data.eval_batch_size)
    labels_NK = data[LABELS].numpy()
    interest = schema.tasks.index(INTEREST_TASK)
    exposure_N = data[EXPOSURE].numpy()
    repeated_N = exposure_N >= 1
    return {
        "click_auc": auc(labels_NK[:, 0], logits_N),
        "interest_auc": auc(labels_NK[:, interest], logits_N),
        "test_clicks": float(labels_NK[:, 0].sum()),
        "test_interest_clicks": float(labels_NK[:, interest].sum()),
        # the exposure count alone against the interest: 0.5 when the two are independent
        "exposure_interest_auc": auc(labels_NK[:, interest], np.log1p(exposure_N)),
        "test_repeat_share": float(repeated_N.mean()),
        "repeat_click_share": float(repeated_N[labels_NK[:, 0] > 0].mean()),
        "mean_logit_repeat_minus_first": float(
            logits_N[repeated_N].mean() - logits_N[~repeated_N].mean()
        ),
    }


def _runs(ctx: Context, data: Path) -> dict[str, list[dict]]:
    return {
        variant: seeds_of(
            ctx,
            section=SECTION,
            dataset=DATASET,
            variant=f"{PRESET}/ipw {variant}",
            preset=PRESET,
            data=data,
            overrides=SHARED | overrides,
            extra=_interest_metrics,
        )
        for variant, overrides in (VARIANTS | ABLATIONS).items()
    }


def _effect(runs: dict[str, list[dict]], metric: str, variant: str) -> tuple[float, float, int]:
    """(IPW minus none of ``metric``'s seed means, twice the larger seed std, seeds)."""
    on, off = values(runs[variant], metric), values(runs["none"], metric)
    delta = mean_std(on)[0] - mean_std(off)[0]
    return delta, 2.0 * max(mean_std(on)[1], mean_std(off)[1]), min(len(on), len(off))


def _verdict(runs: dict[str, list[dict]]) -> str:
    parts = []
    for variant in [*VARIANTS, *ABLATIONS]:
        if variant == "none" or not runs[variant] or not runs["none"]:
            continue
        interest, noise_i, seeds = _effect(runs, "interest_auc", variant)
        click, noise_c, _ = _effect(runs, "click_auc", variant)
        verdict = "beyond" if abs(interest) > noise_i else "**within**"
        parts.append(
            f"`{variant}` minus none: AUC against the planted interest {interest:+.4f} "
            f"({verdict} twice the larger seed std, {noise_i:.4f}; {seeds} seeds), against the "
            f"observed clicks {click:+.4f} (2 std {noise_c:.4f})"
        )
    return "; ".join(parts) + ".\n" if parts else ""


def _timing(runs: dict[str, list[dict]]) -> str:
    walls = [float(r["wall_s"]) for records in runs.values() for r in records]
    if not walls:
        return ""
    return (
        f"{len(walls)} runs, {sum(walls) / 60:.1f} min of training in all "
        f"({min(walls):.0f}–{max(walls):.0f} s per run).\n"
    )


def _label(variant: str) -> str:
    if variant in ABLATIONS:
        return f"none; similarity as {BUCKET_LEVELS} buckets instead of MNSE"
    return variant if variant == "none" else f"`{variant}`, min_weight {MIN_WEIGHT}"


def run(ctx: Context) -> Section:
    # IPW's effect on the interest AUC is small next to the seed spread, and the verdict calls
    # it only beyond twice the larger seed std (``_effect``)
    ctx = dataclasses.replace(ctx, seeds=FIVE_SEEDS)
    data = _prepared(ctx)
    runs = _runs(ctx, data)
    every = [r for records in runs.values() for r in records]
    facts = (
        f"{fmt(values(every, 'test_clicks'), 0)} test clicks, of which "
        f"{fmt(values(every, 'test_interest_clicks'), 0)} are interest clicks; "
        f"{fmt(values(every, 'test_repeat_share'), 3)} of the test rows and "
        f"{fmt(values(every, 'repeat_click_share'), 3)} of the test clicks are repeats (k >= 1); "
        "log(1 + k) alone ranks the planted interest at AUC "
        f"{fmt(values(every, 'exposure_interest_auc'))} (0.5: interest independent of exposure)"
        if every
        else "not run"
    )
    header = [
        "IPW (`loss.ipw`)",
        "test AUC vs planted interest",
        "test AUC vs observed clicks",
        "mean logit, repeat − first exposure",
        "best epoch",
    ]
    rows = [
        [
            _label(variant),
            fmt(values(records, "interest_auc")),
            fmt(values(records, "click_auc")),
            fmt(values(records, "mean_logit_repeat_minus_first"), 3),
            fmt([float(r["best_epoch"]) for r in records], 1),
        ]
        for variant, records in runs.items()
    ]
    body = "\n".join(
        [
            f"`hmoe data synth` with {ROWS:,} rows (seed {SYNTH_SEED}), task `click` at rate "
            f"{CLICK_RATE}, no fatigue, no planted sequence effect (`planted.strength: "
            f"{PLANTED_STRENGTH}`: its click history holds the inflated clicks, which would "
            "make the planted interest rise with k) and "
            f"`exposure_inflation: {INFLATION}`: the click logit of "
            f"an impression gains {INFLATION} · log(1 + k) for its k earlier exposures of the "
            "same (user, item), whatever the user's interest. The planted interest is the click "
            "drawn from the logit without that term (same random number; "
            "`click_interest`), prepared as a second label with task weight 0, so the model "
            "learns from the observed clicks alone. The best epoch of a run without IPW is the "
            "one with the highest validation click AUC (`val_auc_click`); that of the IPW row "
            "the one with the lowest IPW-weighted validation click logloss (`val_ipw_logloss`: "
            "the same weights on the validation positives, renormalised over the whole split's "
            "positives), since the click AUC rewards the very inflation IPW removes. "
            f"Preset `{PRESET}`, {EPOCHS} epochs; IPW weights the click positives by "
            "clip((1 + k) ** -exponent, min_weight, 1), renormalised to mean 1 over the "
            "batch's positives (`IPWConfig`); exponent 1.0 is the generator's own form, for "
            "which the weighted loss is minimised at the interest's odds times the batch's "
            "renormalising constant (a logit shift that leaves the ranking alone) wherever "
            "the floor does not bind. "
            f"Test split (temporal, last 10%): {facts}. The logit column is the click head's "
            "mean logit on repeats minus first exposures of the test split. The last row is the "
            "similarity ablation (no IPW): the user-item cosine and the behaviours' cosines to "
            f"the target encoded by the former {BUCKET_LEVELS}-bucket table "
            "(`model.encoder.similarity.kind: bucket`) instead of MNSE.\n",
            table(header, rows),
            "",
            _verdict(runs),
            incomplete(SECTION, FIVE_SEEDS, {_label(v): len(r) for v, r in runs.items()}),
            _timing(runs),
        ]
    )
    return Section(title="IPW of repeated exposure (synthetic, planted interest)", body=body)
