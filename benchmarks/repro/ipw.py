"""IPW on the Open Bandit small data (issue #8, Q3 of ``../shared/docs/benchmarks.md``).

1. Off-policy evaluation, reproduced without obp's code: the value of obp's evaluation policy
   (Bernoulli Thompson sampling with the ZOZOTOWN production prior, campaign "all", slate of 3,
   ``random_state`` 12345, 100,000 Monte Carlo rounds) estimated by IPW from the uniform-random
   ``random/all`` logs, against obp's published 0.004553 and the on-policy truth (mean click of
   the ``bts/all`` logs, 0.0042). The estimator and the policy's action distribution are ours
   (``hmoe.platform.analysis.offpolicy``); only the prior, a table of 80 Beta parameters, is read
   as data from the obp 0.5.7 sdist fetched from PyPI at run time (obp itself needs Python < 3.11
   and is never installed or imported). The result is stored as a record so ``--cached`` renders it.
2. Training with the logged propensities (``loss.use_sample_weight``: each row's BCE times
   ``batch["weight"]`` = 1 / propensity) against the same model without them, on the shipped
   spec (uniform logging: the weight is the constant 80) and on a derived data set that trains
   on the Thompson-sampling logs (propensities 4.5e-5 .. 0.95) and tests on the uniform logs.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from repro.common import Context, Section, fmt, seeds_of, table, values
from repro.datasets import SPECS_DIR, prepared

SECTION = "ipw"
OBP_VERSION = "0.5.7"
OBP_PYTHON = "3.10"  # obp declares Python < 3.11; pip needs a target version to fetch its sdist
PRIOR_MEMBER = f"obp-{OBP_VERSION}/obp/policy/conf/prior_bts.yaml"
# the quickstart's evaluation policy (obp examples/quickstart/obd.ipynb)
CAMPAIGN = "all"
LEN_LIST = 3
N_SIM = 100_000
RANDOM_STATE = 12345
PRINTED_DIGITS = 6  # obp's notebook prints the estimates to 6 decimals
# obp 0.5.4 quickstart on this exact small data (SOURCE.md of the data, benchmarks.md Q3)
PEER = {"IPW": 0.004553, "DM": 0.003545, "DR": 0.004727}
PEER_TRUTH = 0.0042

PRESETS = ("dnn", "deepfm", "hmoe")
EPOCHS = 10  # 16 steps of 512 rows per epoch: the presets' 4 epochs barely move the model
SHIPPED = "open_bandit_small"
BTS_TO_RANDOM = "open_bandit_bts_to_random"
VARIANTS = {"ipw": True, "plain": False}  # variant -> loss.use_sample_weight


def _logs(ctx: Context, policy: str) -> Path:
    return ctx.data_root / "open_bandit_small" / policy / CAMPAIGN / f"{CAMPAIGN}.csv"


def _read_logs(path: Path) -> dict[str, np.ndarray]:
    from pyarrow import csv

    columns = ["item_id", "position", "click", "propensity_score"]
    t = csv.read_csv(path, convert_options=csv.ConvertOptions(include_columns=columns))
    return {name: t.column(name).to_numpy() for name in columns}


def _fetch_prior(ctx: Context) -> dict[str, Any]:
    """The ZOZOTOWN Beta prior of obp's BernoulliTS, read as data from the obp sdist."""
    folder = ctx.work / "obp"
    sdist = folder / f"obp-{OBP_VERSION}.tar.gz"
    if not sdist.exists():
        folder.mkdir(parents=True, exist_ok=True)
        ctx.log(f"fetching the obp {OBP_VERSION} sdist from PyPI (its prior table only)")
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
                *("--python-version", OBP_PYTHON, "-d", str(folder), f"obp=={OBP_VERSION}"),
            ],
            check=True,
        )
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(PRIOR_MEMBER)
        assert member is not None, f"{PRIOR_MEMBER} missing from {sdist}"
        return yaml.safe_load(member.read())[CAMPAIGN]


def _estimate(ctx: Context) -> dict[str, float]:
    from hmoe.platform.analysis.offpolicy import (
        ipw_estimate,
        snipw_estimate,
        thompson_slate_distribution,
    )

    prior = _fetch_prior(ctx)
    started = time.perf_counter()
    pi_e_AL = thompson_slate_distribution(
        prior["alpha"], prior["beta"], len_list=LEN_LIST, n_sim=N_SIM, random_state=RANDOM_STATE
    )
    logged = _read_logs(_logs(ctx, "random"))
    # positions 1..3 -> 0..2 (obp: dense rank - 1)
    _, position_N = np.unique(logged["position"], return_inverse=True)
    pi_e_N = pi_e_AL[logged["item_id"], position_N]
    pi_b_N = logged["propensity_score"]
    reward_N = logged["click"].astype(np.float64)
    truth = float(_read_logs(_logs(ctx, "bts"))["click"].mean())
    return {
        "ipw": ipw_estimate(reward_N, pi_e_N, pi_b_N),
        "snipw": snipw_estimate(reward_N, pi_e_N, pi_b_N),
        "on_policy_truth": truth,
        "logged_mean_click": float(reward_N.mean()),
        "rows": float(reward_N.size),
        "clicks": float(reward_N.sum()),
        "seconds": time.perf_counter() - started,
    }


def _ope(ctx: Context) -> dict[str, Any] | None:
    """The stored OPE record (computed once; ``--force`` recomputes)."""
    import datetime as dt

    key = {
        "section": SECTION,
        "dataset": SHIPPED,
        "variant": "ope_bernoulli_ts",
        "seed": RANDOM_STATE,
        "preset": None,
        "overrides": {"campaign": CAMPAIGN, "len_list": LEN_LIST, "n_sim": N_SIM},
        "quick": ctx.quick,
    }
    stored = None if ctx.force else ctx.find(key)
    if stored is not None or ctx.cached_only:
        return stored
    try:
        metrics = _estimate(ctx)
    except (OSError, subprocess.CalledProcessError, KeyError) as error:
        ctx.log(f"  OPE not run: {type(error).__name__}: {error}")
        return None
    record = key | {
        "metrics": metrics,
        "ia": {},
        "best_epoch": 0,
        "epochs_run": 0,
        "params": 0,
        "wall_s": round(metrics["seconds"], 1),
        "config_hash": "",
        "date": dt.date.today().isoformat(),
    }
    ctx.add(record)
    ctx.log(f"  OPE IPW {metrics['ipw']:.8f} (obp {PEER['IPW']})")
    return record


def _bts_to_random_spec(ctx: Context) -> dict[str, Any]:
    """Train / validate on the Thompson-sampling logs (temporal 80/20), test on the uniform logs.

    Item ids are the same 80 items in both campaigns' files (item_feature_0 agrees per id), but
    the hashed item categories differ per file, so every row takes the bts item table.
    """
    spec = yaml.safe_load((SPECS_DIR / f"{SHIPPED}.yaml").read_text())
    root = "${HMOE_DATA_ROOT}/open_bandit_small"
    bts, uniform = f"{root}/bts/all/all.csv", f"{root}/random/all/all.csv"
    spec["name"] = BTS_TO_RANDOM
    spec["log"]["paths"] = [bts, uniform]
    spec["side_tables"][0]["table"]["paths"] = [f"{root}/bts/all/item_context.csv"]
    spec["split"] = {
        "kind": "temporal",
        "fractions": [0.8, 0.2, 0.0],
        "pinned_files": {uniform: "test"},
    }
    return spec


def _prepared_bts_to_random(ctx: Context) -> Path:
    from hmoe.platform.data import prepare

    out = ctx.work / "data" / BTS_TO_RANDOM
    if (out / "manifest.json").exists():
        return out
    ctx.log(f"preparing {BTS_TO_RANDOM} -> {out}")
    spec_path = ctx.work / "specs" / f"{BTS_TO_RANDOM}.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(yaml.safe_dump(_bts_to_random_spec(ctx), sort_keys=False))
    prepare(spec_path, out, base_dir=SPECS_DIR)
    return out


def _logits(model: Any, data: Mapping[str, Any], batch_size: int) -> np.ndarray:
    """Click logits ``[N]`` of the first (only) task, float64."""
    import torch

    from hmoe.platform.batches import iter_minibatches

    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = [model(batch).float() for batch in iter_minibatches(data, batch_size)]
    model.train(was_training)
    return torch.cat(logits)[:, 0].double().numpy()


def _weighted_metrics(model: Any, cfg: Any) -> dict[str, float]:
    """IPW-weighted AUC / logloss (weight = 1 / logged propensity) of the val and test splits."""
    from hmoe.platform.analysis.offpolicy import weighted_auc, weighted_logloss
    from hmoe.platform.batches import load_schema, read_split
    from hmoe.schema import LABELS, WEIGHT

    schema = load_schema(cfg.data.path)
    out: dict[str, float] = {}
    for split, name in (("val", "val"), ("test", "test")):
        data = read_split(cfg.data.path, split, schema)
        logits_N = _logits(model, data, cfg.data.eval_batch_size)
        probs_N = 1.0 / (1.0 + np.exp(-logits_N))
        labels_N = data[LABELS][:, 0].numpy()
        weights_N = data[WEIGHT].numpy()
        # AUC on logits: float32 sigmoids of nearby logits can tie, the logits do not
        out[f"ipw_{name}_auc"] = weighted_auc(labels_N, logits_N, weights_N)
        out[f"ipw_{name}_logloss"] = weighted_logloss(labels_N, probs_N, weights_N)
        out[f"{name}_mean_pred"] = float(probs_N.mean())
        out[f"{name}_clicks"] = float(labels_N.sum())
        out[f"{name}_max_weight"] = float(weights_N.max())
    return out


def _train(ctx: Context, dataset: str, data: Path) -> dict[tuple[str, str], list[dict]]:
    runs = {}
    for preset in PRESETS:
        for variant, weighted in VARIANTS.items():
            runs[preset, variant] = seeds_of(
                ctx,
                section=SECTION,
                dataset=dataset,
                variant=f"{preset}/{variant}",
                preset=preset,
                data=data,
                overrides={"loss.use_sample_weight": weighted, "train.epochs": EPOCHS},
                extra=_weighted_metrics,
            )
    return runs


def _ope_text(record: dict[str, Any] | None) -> str:
    if record is None:
        return (
            "Not run (the obp sdist, whose prior table the evaluation policy needs, could not be "
            "fetched, or the report was rendered from stored runs only).\n"
        )
    m = record["metrics"]
    ours = round(m["ipw"], PRINTED_DIGITS)
    verdict = "reproduced exactly" if ours == PEER["IPW"] else "NOT reproduced"
    rows = [
        ["IPW", f"{m['ipw']:.8f} → **{ours:.{PRINTED_DIGITS}f}**", f"{PEER['IPW']:.6f}"],
        ["SNIPW (self-normalised)", f"{m['snipw']:.6f}", "—"],
        ["DM", "not implemented", f"{PEER['DM']:.6f}"],
        ["DR", "not implemented", f"{PEER['DR']:.6f}"],
        ["on-policy truth (`bts/all` mean click)", f"{m['on_policy_truth']:.4f}", f"{PEER_TRUTH}"],
    ]
    rel = abs(m["ipw"] - m["on_policy_truth"]) / m["on_policy_truth"]
    return (
        f"Evaluation policy: Bernoulli Thompson sampling, ZOZOTOWN prior (campaign `{CAMPAIGN}`, "
        f"read as data from the obp {OBP_VERSION} sdist), slate of {LEN_LIST}, action distribution "
        f"by {N_SIM:,} Monte Carlo rounds of `numpy.random.RandomState({RANDOM_STATE})` Beta draws "
        f"(`thompson_slate_distribution`); logged data `random/all` ({int(m['rows']):,} rows, "
        f"{int(m['clicks'])} clicks, uniform propensity). Estimator `ipw_estimate` = "
        "mean(r · π_e(a|pos) / π_b(a|pos)), both in `hmoe.platform.analysis.offpolicy` "
        "(no obp code installed, imported or copied).\n\n"
        + table(["estimate", "ours", "obp 0.5.x (published)"], rows)
        + f"\n\nIPW {verdict}: {m['ipw']:.8f} prints as {ours:.{PRINTED_DIGITS}f} at obp's "
        f"precision; relative error against the on-policy truth {rel:.3f} (obp: 0.084).\n"
    )


def _train_table(runs: dict[tuple[str, str], list[dict]], weighted_rows: str) -> str:
    header = [
        "model",
        "loss weights",
        "test AUC",
        "IPW test AUC",
        "test logloss",
        "IPW test logloss",
        f"IPW val AUC ({weighted_rows})",
        "mean p̂ test",
    ]
    rows = []
    for (preset, variant), records in runs.items():
        rows.append(
            [
                f"`{preset}`",
                "1 / propensity" if VARIANTS[variant] else "none",
                fmt(values(records, "test_auc")),
                fmt(values(records, "ipw_test_auc")),
                fmt(values(records, "test_logloss")),
                fmt(values(records, "ipw_test_logloss")),
                fmt(values(records, "ipw_val_auc")),
                fmt(values(records, "test_mean_pred"), 5),
            ]
        )
    return table(header, rows)


def _log_facts(ctx: Context, policy: str) -> dict[str, float] | None:
    """Rows, clicks and propensity range of one campaign-"all" log file (None if absent)."""
    path = _logs(ctx, policy)
    if not path.exists():
        return None
    logged = _read_logs(path)
    p_N = logged["propensity_score"].astype(np.float64)
    return {
        "rows": float(p_N.size),
        "clicks": float(logged["click"].sum()),
        "p_min": float(p_N.min()),
        "p_max": float(p_N.max()),
        "w_max": float((1.0 / p_N).max()),
        "w_mean": float((1.0 / p_N).mean()),
    }


def _first(runs: dict[tuple[str, str], list[dict]], metric: str) -> str:
    """A data fact every run of a data set stores alike (clicks per split), or ``?``."""
    for records in runs.values():
        found = values(records, metric)
        if found:
            return f"{found[0]:,.0f}"
    return "?"


def _shipped_text(runs: dict[tuple[str, str], list[dict]], uniform: dict | None) -> str:
    weight = f"{1.0 / uniform['p_max']:.0f}" if uniform else "constant"
    return (
        f"**Shipped spec** (`{SHIPPED}`: `random/all`, uniform logging, temporal 80/10/10): every "
        f"weight is {weight}, so the IPW metrics equal the plain ones (a check of the weighted "
        "metrics) and weighting only scales the loss, which changes training only through "
        "gradient clipping (norm 10) and Adam's epsilon. The temporal split leaves "
        f"{_first(runs, 'test_clicks')} click(s) in the test split and "
        f"{_first(runs, 'val_clicks')} in validation: these test AUCs rank a handful of "
        "positives and say next to nothing about the models.\n"
    )


def _crossed_text(runs: dict[tuple[str, str], list[dict]], bts: dict | None) -> str:
    spread = (
        f"propensities {bts['p_min']:.1e} .. {bts['p_max']:.2f}, weights 1/p up to "
        f"{bts['w_max']:,.0f}, mean {bts['w_mean']:.0f}"
        if bts
        else "varying propensities"
    )
    return (
        f"\n**Thompson-sampling logs → uniform logs** (`{BTS_TO_RANDOM}`, a spec derived in "
        "`benchmarks/repro/ipw.py`): train and validation are the `bts/all` logs (temporal "
        f"80/20; {spread}; {_first(runs, 'val_clicks')} validation clicks), the test split is "
        f"all of `random/all` ({_first(runs, 'test_clicks')} clicks, uniform logging: its plain "
        "metrics are unbiased for uniform exposure, and its IPW columns equal them). The IPW "
        "val AUC is the estimate of that test AUC from the biased validation logs.\n"
    )


def run(ctx: Context) -> Section:
    ope = _ope(ctx)
    uniform, bts = _log_facts(ctx, "random"), _log_facts(ctx, "bts")
    shipped_data = Path() if ctx.cached_only else prepared(ctx, SHIPPED)
    shipped = _train(ctx, SHIPPED, shipped_data)
    crossed_data = Path() if ctx.cached_only else _prepared_bts_to_random(ctx)
    crossed = _train(ctx, BTS_TO_RANDOM, crossed_data)
    parts = [
        "### Off-policy estimate of obp's quickstart (Q3)\n",
        _ope_text(ope),
        "### Training with the logged propensities\n",
        f"Presets {', '.join(f'`{p}`' for p in PRESETS)}, {EPOCHS} epochs with early stopping on "
        "the (unweighted) validation AUC, trained with the loss weighted by 1 / logged "
        "propensity (`loss.use_sample_weight: true`, the default; `batch['weight']` holds 1/p "
        "from the spec's `weight: {kind: propensity}`) and without (`false`). IPW metrics "
        "(`weighted_auc`, `weighted_logloss` of `hmoe.platform.analysis.offpolicy`, from the "
        "trained model's predictions) count each row 1/p times, i.e. estimate the metric under "
        "uniform exposure. Each log file has only about 40 clicks, so every AUC here is very "
        "noisy: differences of a few hundredths are noise.\n",
        _shipped_text(shipped, uniform),
        _train_table(shipped, "uniform logs"),
        _crossed_text(crossed, bts),
        _train_table(crossed, "bts logs"),
    ]
    return Section(title="IPW on Open Bandit (small)", body="\n".join(parts))
