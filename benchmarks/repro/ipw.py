"""IPW on the Open Bandit small data (protocol Q3 of the reproduction report).

1. Off-policy evaluation, reproduced without obp's code: the value of obp's evaluation policy
   (Bernoulli Thompson sampling with the ZOZOTOWN production prior, campaign "all", slate of 3,
   ``random_state`` 12345, 100,000 Monte Carlo rounds) estimated by IPW, DM and DR from the
   uniform-random ``random/all`` logs, against obp's published 0.004553 / 0.003545 / 0.004727
   and the on-policy truth (mean click of the ``bts/all`` logs, 0.0042). The estimators, the
   policy's action distribution (``hmoe.platform.analysis.offpolicy``) and the DM/DR reward
   model (below) are ours; only the prior, a table of 80 Beta parameters, is read
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

from repro.common import (
    Context,
    Section,
    first_task_logits,
    fmt,
    mean_std,
    seeds_of,
    table,
    values,
)
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
# obp 0.5.4 quickstart on this exact small data (the data's SOURCE.md; shared benchmarks.md Q3)
PEER = {"IPW": 0.004553, "DM": 0.003545, "DR": 0.004727}
PEER_TRUTH = 0.0042
USERS = [f"user_feature_{i}" for i in range(4)]
ITEM_CATEGORIES = [f"item_feature_{i}" for i in (1, 2, 3)]
# the quickstart's reward model: LogisticRegression() (C = 1), 3-fold cross-fitting
REWARD_MODEL_C = 1.0
N_FOLDS = 3
NEWTON_STEPS = 100
NEWTON_TOL = 1e-12  # max |Newton step|: the optimum to float precision, not a solver's tol

PRESETS = ("dnn", "deepfm", "hmoe")
EPOCHS = 10  # 16 steps of 512 rows per epoch: the presets' 4 epochs barely move the model
SHIPPED = "open_bandit_small"
BTS_TO_RANDOM = "open_bandit_bts_to_random"
VARIANTS = {"ipw": True, "plain": False}  # variant -> loss.use_sample_weight


def _logs(ctx: Context, policy: str) -> Path:
    return ctx.data_root / "open_bandit_small" / policy / CAMPAIGN / f"{CAMPAIGN}.csv"


def _read_csv(path: Path, columns: list[str], strings: list[str]) -> dict[str, np.ndarray]:
    import pyarrow as pa
    from pyarrow import csv

    options = csv.ConvertOptions(
        include_columns=columns, column_types={name: pa.string() for name in strings}
    )
    t = csv.read_csv(path, convert_options=options)
    return {name: t.column(name).to_numpy(zero_copy_only=False) for name in columns}


def _read_logs(path: Path) -> dict[str, np.ndarray]:
    return _read_csv(path, ["item_id", "position", "click", "propensity_score", *USERS], USERS)


def _dense_codes(values: np.ndarray) -> np.ndarray:
    """0-based codes of the sorted distinct values (sklearn's LabelEncoder, pandas' dummies)."""
    return np.unique(values, return_inverse=True)[1]


def _action_context(ctx: Context) -> np.ndarray:
    """``[A, 4]``: the label-encoded hashed item categories and the numeric item_feature_0."""
    path = _logs(ctx, "random").with_name("item_context.csv")
    item = _read_csv(path, ["item_id", *ITEM_CATEGORIES, "item_feature_0"], ITEM_CATEGORIES)
    if not np.array_equal(item["item_id"], np.arange(item["item_id"].size)):
        raise ValueError(f"{path}: item_id is not 0..A-1 in row order")
    codes = [_dense_codes(item[name]).astype(np.float64) for name in ITEM_CATEGORIES]
    return np.column_stack([*codes, item["item_feature_0"].astype(np.float64)])


def _user_context(logged: Mapping[str, np.ndarray]) -> np.ndarray:
    """``[N, F]``: one-hot user features without each feature's first (sorted) category."""
    blocks = []
    for name in USERS:
        codes_N = _dense_codes(logged[name])
        blocks.append(np.eye(codes_N.max() + 1)[codes_N][:, 1:])
    return np.hstack(blocks)


def _fit_logistic(x_NF: np.ndarray, y_N: np.ndarray) -> np.ndarray:
    """``[F + 1]`` (intercept last): the exact minimiser of ``sum BCE + |w|^2 / (2 C)`` with a
    free intercept (sklearn's ``LogisticRegression()`` objective), by Newton's method."""
    x_NF1 = np.hstack([x_NF, np.ones((x_NF.shape[0], 1))])
    penalty_F1 = np.full(x_NF1.shape[1], 1.0 / REWARD_MODEL_C)
    penalty_F1[-1] = 0.0
    w_F1 = np.zeros(x_NF1.shape[1])
    for _ in range(NEWTON_STEPS):
        q_N = 1.0 / (1.0 + np.exp(-(x_NF1 @ w_F1)))
        gradient_F1 = x_NF1.T @ (q_N - y_N) + penalty_F1 * w_F1
        hessian = (x_NF1 * (q_N * (1.0 - q_N))[:, None]).T @ x_NF1 + np.diag(penalty_F1)
        step_F1 = np.linalg.solve(hessian, gradient_F1)
        w_F1 -= step_F1
        if np.abs(step_F1).max() < NEWTON_TOL:
            return w_F1
    raise RuntimeError(f"Newton's method did not converge in {NEWTON_STEPS} steps")


def _cross_fitted_rewards(
    users_NF: np.ndarray, items_AG: np.ndarray, action_N, position_N, reward_N
) -> np.ndarray:
    """``[N, A, L]``: q_hat of each row from the reward models of the folds without it.

    obp's quickstart ``RegressionModel``: one logistic regression per slate position on
    [user one-hot, item context of the action], cross-fitted on ``N_FOLDS`` folds of
    ``KFold(shuffle=True, random_state=RANDOM_STATE)`` (one RandomState shuffle of 0..N-1,
    then consecutive folds, the first ``N % N_FOLDS`` one row longer).
    """
    n, num_actions, num_users = users_NF.shape[0], items_AG.shape[0], users_NF.shape[1]
    order_N = np.arange(n)
    np.random.RandomState(RANDOM_STATE).shuffle(order_N)
    sizes = np.full(N_FOLDS, n // N_FOLDS)
    sizes[: n % N_FOLDS] += 1
    q_hat_NAL = np.zeros((n, num_actions, LEN_LIST))
    for held_out in np.split(order_N, np.cumsum(sizes)[:-1]):
        fitted = np.ones(n, dtype=bool)
        fitted[held_out] = False
        for position in range(LEN_LIST):
            rows = fitted & (position_N == position)
            x_NF = np.hstack([users_NF[rows], items_AG[action_N[rows]]])
            w_F1 = _fit_logistic(x_NF, reward_N[rows])
            # logit(x, a) = user part + item part of a + intercept, for every action at once
            logit_NA = (users_NF[held_out] @ w_F1[:num_users])[:, None] + (
                items_AG @ w_F1[num_users:-1]
            )[None, :]
            q_hat_NAL[held_out, :, position] = 1.0 / (1.0 + np.exp(-(logit_NA + w_F1[-1])))
    return q_hat_NAL


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
        dm_estimate,
        dr_estimate,
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
    action_N = logged["item_id"].astype(np.int64)
    q_hat_NAL = _cross_fitted_rewards(
        _user_context(logged), _action_context(ctx), action_N, position_N, reward_N
    )
    rows = np.arange(reward_N.size)
    q_hat_NA = q_hat_NAL[rows, :, position_N]  # each row at its own slate position
    pi_e_NA = pi_e_AL[:, position_N].T
    return {
        "ipw": ipw_estimate(reward_N, pi_e_N, pi_b_N),
        "snipw": snipw_estimate(reward_N, pi_e_N, pi_b_N),
        "dm": dm_estimate(pi_e_NA, q_hat_NA),
        "dr": dr_estimate(reward_N, action_N, pi_b_N, pi_e_NA, q_hat_NA),
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
        "overrides": {
            "campaign": CAMPAIGN,
            "len_list": LEN_LIST,
            "n_sim": N_SIM,
            "estimators": ["ipw", "snipw", "dm", "dr"],
            "reward_model": {"c": REWARD_MODEL_C, "folds": N_FOLDS},
        },
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


def _weighted_metrics(model: Any, cfg: Any) -> dict[str, float]:
    """IPW-weighted AUC / logloss (weight = 1 / logged propensity) of the val and test splits."""
    from hmoe.platform.analysis.offpolicy import weighted_auc, weighted_logloss
    from hmoe.platform.data.batches import load_schema, read_split
    from hmoe.schema import LABELS, WEIGHT

    schema = load_schema(cfg.data.path)
    out: dict[str, float] = {}
    for split, name in (("val", "val"), ("test", "test")):
        data = read_split(cfg.data.path, split, schema)
        logits_N = first_task_logits(model, data, cfg.data.eval_batch_size)
        probs_N = 1.0 / (1.0 + np.exp(-logits_N))
        labels_N = data[LABELS][:, 0].numpy()
        weights_N = data[WEIGHT].numpy()
        # AUC on logits: float32 sigmoids of nearby logits can tie, the logits do not
        out[f"ipw_{name}_auc"] = weighted_auc(labels_N, logits_N, weights_N)
        # the record's val_* are the last epoch's; this is the restored best epoch's model
        out[f"plain_{name}_auc"] = weighted_auc(labels_N, logits_N, np.ones_like(weights_N))
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
    rows, verdicts = [], []
    for name, peer in PEER.items():
        ours = round(m[name.lower()], PRINTED_DIGITS)
        same = ours == peer
        verdicts.append(f"{name} {'matches' if same else 'DIFFERS'}")
        rel = abs(m[name.lower()] - m["on_policy_truth"]) / m["on_policy_truth"]
        rows.append(
            [
                name,
                f"{m[name.lower()]:.8f} → **{ours:.{PRINTED_DIGITS}f}**",
                f"{peer:.{PRINTED_DIGITS}f}",
                "yes" if same else "**no**",
                f"{rel:.3f}",
            ]
        )
    snipw_rel = abs(m["snipw"] - m["on_policy_truth"]) / m["on_policy_truth"]
    rows.append(["SNIPW (self-normalised)", f"{m['snipw']:.6f}", "—", "—", f"{snipw_rel:.3f}"])
    rows.append(
        [
            "on-policy truth (`bts/all` mean click)",
            f"{m['on_policy_truth']:.4f}",
            f"{PEER_TRUTH}",
            "",
            "",
        ]
    )
    return (
        f"Evaluation policy: Bernoulli Thompson sampling, ZOZOTOWN prior (campaign `{CAMPAIGN}`, "
        f"read as data from the obp {OBP_VERSION} sdist), slate of {LEN_LIST}, action distribution "
        f"by {N_SIM:,} Monte Carlo rounds of `numpy.random.RandomState({RANDOM_STATE})` Beta draws "
        f"(`thompson_slate_distribution`); logged data `random/all` ({int(m['rows']):,} rows, "
        f"{int(m['clicks'])} clicks, uniform propensity). `ipw_estimate` = "
        "mean(r · π_e(a|pos) / π_b(a|pos)); `dm_estimate` and `dr_estimate` use the quickstart's "
        "reward model, rebuilt here: one L2 logistic regression (C = 1, free intercept, solved "
        "exactly by Newton's method) per slate position on the user features one-hot (first "
        "category dropped) and the item context (label-encoded categories, item_feature_0), "
        f"{N_FOLDS}-fold cross-fitted with obp's fold shuffle. Estimators and policy are in "
        "`hmoe.platform.analysis.offpolicy`; no obp code is installed, imported or copied.\n\n"
        + table(
            [
                "estimate",
                "ours",
                "obp 0.5.x (published)",
                "same at 6 decimals",
                "relative error vs truth",
            ],
            rows,
        )
        + f"\n\n{', '.join(verdicts)} obp's published value at its printed precision "
        "(obp's relative error of IPW: 0.084).\n"
    )


def _train_table(runs: dict[tuple[str, str], list[dict]], val_rows: str) -> str:
    header = [
        "model",
        "loss weights",
        "test AUC",
        "IPW test AUC",
        "test logloss",
        "IPW test logloss",
        f"val AUC ({val_rows})",
        f"IPW val AUC ({val_rows})",
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
                fmt(values(records, "plain_val_auc")),
                fmt(values(records, "ipw_val_auc")),
                fmt(values(records, "test_mean_pred"), 5),
            ]
        )
    return table(header, rows)


def _weighting_effect(runs: dict[tuple[str, str], list[dict]]) -> str:
    """Weighted minus plain test AUC per preset, against twice the larger seed std."""
    parts, beyond = [], []
    for preset in PRESETS:
        weighted = values(runs.get((preset, "ipw"), []), "test_auc")
        plain = values(runs.get((preset, "plain"), []), "test_auc")
        if len(weighted) < 2 or len(plain) < 2:
            continue
        delta = mean_std(weighted)[0] - mean_std(plain)[0]
        noise = 2.0 * max(mean_std(weighted)[1], mean_std(plain)[1])
        parts.append(f"`{preset}` {delta:+.3f} (2 std {noise:.3f})")
        if abs(delta) > noise:
            beyond.append(preset)
    if not parts:
        return ""
    verdict = (
        f"larger than twice the seed std for {', '.join(beyond)}"
        if beyond
        else "every difference within twice the seed std, i.e. no measurable effect"
    )
    return f"Test AUC with minus without the weights: {'; '.join(parts)}: {verdict}.\n"


def _entropy(clicks: float, rows: float) -> float:
    """Logloss of the constant prediction clicks / rows on those rows."""
    p = clicks / rows
    return float(-(p * np.log(p) + (1.0 - p) * np.log1p(-p)))


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


def _val_vs_test(runs: dict[tuple[str, str], list[dict]]) -> str:
    """Does weighting the biased validation AUC bring it nearer the uniform-log test AUC?"""
    every = [r for records in runs.values() for r in records]
    names = ("plain_val_auc", "ipw_val_auc", "test_auc")
    means = {m: mean_std(values(every, m))[0] for m in names}
    if not all(np.isfinite(v) for v in means.values()):
        return ""
    nearer = abs(means["ipw_val_auc"] - means["test_auc"]) < abs(
        means["plain_val_auc"] - means["test_auc"]
    )
    return (
        f"Over all {len(every)} runs: plain val AUC {means['plain_val_auc']:.3f}, IPW val AUC "
        f"{means['ipw_val_auc']:.3f}, test AUC on the uniform logs {means['test_auc']:.3f}: the "
        f"weighting moves the validation estimate {'nearer to' if nearer else 'away from'} the "
        "uniform-log truth. With a handful of validation clicks a few rows of weight in the "
        "thousands decide the weighted AUC, so it is not a usable estimate at this size.\n"
    )


def _crossed_text(
    runs: dict[tuple[str, str], list[dict]], bts: dict | None, uniform: dict | None
) -> str:
    spread = (
        f"propensities {bts['p_min']:.1e} .. {bts['p_max']:.2f}, weights 1/p up to "
        f"{bts['w_max']:,.0f}, mean {bts['w_mean']:.0f}"
        if bts
        else "varying propensities"
    )
    return (
        f"**Thompson-sampling logs → uniform logs** (`{BTS_TO_RANDOM}`, a spec derived in "
        "`benchmarks/repro/ipw.py`): train and validation are the `bts/all` logs (temporal "
        f"80/20; {spread}; {_first(runs, 'val_clicks')} validation clicks), the test split is "
        f"all of `random/all` ({_first(runs, 'test_clicks')} clicks, uniform logging: its plain "
        "metrics are unbiased for uniform exposure, and its IPW columns equal them). The IPW "
        "val AUC is the estimate of that test AUC from the biased validation logs."
        + (
            " A constant prediction of the test click rate scores test logloss "
            f"{_entropy(uniform['clicks'], uniform['rows']):.4f}."
            if uniform
            else ""
        )
        + "\n"
    )


def run(ctx: Context) -> Section:
    ope = _ope(ctx)
    uniform, bts = _log_facts(ctx, "random"), _log_facts(ctx, "bts")
    shipped_data = prepared(ctx, SHIPPED)
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
        "",
        _weighting_effect(shipped),
        _crossed_text(crossed, bts, uniform),
        _train_table(crossed, "bts logs"),
        "",
        _weighting_effect(crossed),
        _val_vs_test(crossed),
    ]
    return Section(title="IPW on Open Bandit (small)", body="\n".join(parts))
