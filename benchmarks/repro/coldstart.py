"""Section: where Q1's test AUC comes from, users seen in training against new ones.

Q1's split is global and temporal, so most test rows belong to users who first rate after the
train cut: their ``user_id`` is the out-of-vocabulary id and the model knows them only by
demographics and the items of their history (the protocol gives no ratings of past items). The
section splits each model's test AUC by that, and scores an item-only reference that needs no
training: each item's positive rate in the train split, smoothed towards the global rate with a
strength chosen on the validation split. Where the models tie with that reference, nothing in
the features has taught them more than which items are liked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from repro import ctr
from repro.common import Context, Section, first_task_logits, fmt, mean_std, seeds_of, table, values

SECTION = "coldstart"
MODELS = ("dnn", "din", "din_plus", "hmoe")
SMOOTHING = (1.0, 5.0, 20.0, 100.0)  # pseudo-rows of the global rate added to each item's count
REFERENCE_FILE = "coldstart_reference.json"  # the reference, for a render without data
RATING_POSITIVE = 4  # Q1's label: rating >= 4
GROUPS = {"new": "users new at test time", "returning": "users seen in training"}


def _new_user_mask(split: Mapping[str, Any], schema: Any) -> np.ndarray:
    from hmoe.schema import OOV_INDEX

    return split[schema.user_field].numpy() == OOV_INDEX


def _group_aucs(labels_N: np.ndarray, scores_N: np.ndarray, new_N: np.ndarray) -> dict[str, float]:
    from hmoe.platform.metrics import auc

    return {
        "test_auc": auc(labels_N, scores_N),
        "test_auc_new": auc(labels_N[new_N], scores_N[new_N]),
        "test_auc_returning": auc(labels_N[~new_N], scores_N[~new_N]),
    }


def split_aucs(model: Any, cfg: Any) -> Mapping[str, float]:
    """``extra`` hook: the test AUC over new and over returning users."""
    from hmoe.platform.batches import load_schema, read_split
    from hmoe.schema import LABELS

    schema = load_schema(cfg.data.path)
    test = read_split(cfg.data.path, "test", schema=schema)
    logits_N = first_task_logits(model, test, cfg.data.eval_batch_size)
    labels_N = test[LABELS][:, 0].double().numpy()
    scores = _group_aucs(labels_N, logits_N, _new_user_mask(test, schema))
    return {k: v for k, v in scores.items() if k != "test_auc"}


def item_reference(ctx: Context) -> dict[str, Any]:
    """The smoothed per-item positive rate of the train split, scored on the test split."""
    from hmoe.platform.batches import load_schema, read_split
    from hmoe.platform.metrics import auc
    from hmoe.schema import LABELS

    data = ctr.prepared(ctx, ctr.ML)
    schema = load_schema(data)
    splits = {name: read_split(data, name, schema=schema) for name in ("train", "val", "test")}
    item = schema.item_field
    size = schema.categorical_by_name(item).vocab_size
    labels = {name: s[LABELS][:, 0].double().numpy() for name, s in splits.items()}
    items = {name: s[item].numpy() for name, s in splits.items()}
    rows_I = np.bincount(items["train"], minlength=size)
    positives_I = np.bincount(items["train"], weights=labels["train"], minlength=size)
    prior = float(labels["train"].mean())

    def rate_I(strength: float) -> np.ndarray:
        return (positives_I + strength * prior) / (rows_I + strength)

    by_val = {s: auc(labels["val"], rate_I(s)[items["val"]]) for s in SMOOTHING}
    strength = max(by_val, key=by_val.__getitem__)
    new_N = _new_user_mask(splits["test"], schema)
    scores = _group_aucs(labels["test"], rate_I(strength)[items["test"]], new_N)
    past = past_labels_reference(ctx, strength, train_rows=len(labels["train"]))
    if abs(past["item_only_auc"] - scores["test_auc"]) > 1e-9:  # raw log split == prepared one
        raise RuntimeError(f"raw-log split disagrees with the prepared one: {past}")
    return scores | {
        "past_labels": {k: v for k, v in past.items() if k != "item_only_auc"},
        "strength": strength,
        "rows": len(new_N),
        "new_rows": int(new_N.sum()),
        "positive_rate_new": float(labels["test"][new_N].mean()),
        "positive_rate_returning": float(labels["test"][~new_N].mean()),
    }


def past_labels_reference(ctx: Context, strength: float, train_rows: int) -> dict[str, float]:
    """The item-only reference plus what Q1 withholds: each row's user's earlier labels.

    From the raw log, in the protocol's order: the smoothed positive rate of the user's rows
    with a strictly earlier timestamp (any split, as the history), added in log-odds to the
    item's rate. No fitting; it only measures how much the ratings of past items would say.
    """
    import pyarrow.csv as pacsv

    from hmoe.platform.metrics import auc

    table = pacsv.read_csv(
        ctx.data_root / "ml-100k" / "ml-100k.inter",
        parse_options=pacsv.ParseOptions(delimiter="\t"),
    )
    raw = {name.split(":")[0]: table.column(name).to_numpy() for name in table.column_names}
    order_N = np.lexsort((raw["item_id"], raw["user_id"], raw["timestamp"]))
    user_N, item_N, time_N = (raw[k][order_N] for k in ("user_id", "item_id", "timestamp"))
    label_N = (raw["rating"][order_N] >= RATING_POSITIVE).astype(np.float64)
    test_start = len(label_N) - (len(label_N) - train_rows) // 2
    prior = float(label_N[:train_rows].mean())

    def smoothed(positives: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return (positives + strength * prior) / (rows + strength)

    items, item_index_N = np.unique(item_N, return_inverse=True)
    item_rate_N = smoothed(
        np.bincount(item_index_N[:train_rows], label_N[:train_rows], len(items)),
        np.bincount(item_index_N[:train_rows], minlength=len(items)),
    )[item_index_N]
    # earlier labels of the row's user: running sums over (user, time), taken at the first
    # row of each (user, timestamp) block so that same-timestamp rows are not counted
    by_user = np.lexsort((time_N, user_N))
    u, t, y = user_N[by_user], time_N[by_user], label_N[by_user]
    position = np.arange(len(y))
    user_start = np.r_[True, u[1:] != u[:-1]]
    block_start = user_start | np.r_[True, t[1:] != t[:-1]]
    first_of_user = np.maximum.accumulate(np.where(user_start, position, 0))
    first_of_block = np.maximum.accumulate(np.where(block_start, position, 0))
    labels_before = np.cumsum(y) - y
    past_pos = labels_before[first_of_block] - labels_before[first_of_user]
    past_rows = (first_of_block - first_of_user).astype(np.float64)
    user_rate_N = np.empty_like(label_N)
    user_rate_N[by_user] = smoothed(past_pos, past_rows)

    def logit(p: np.ndarray) -> np.ndarray:
        return np.log(p / (1.0 - p))

    test = slice(test_start, None)
    new_N = ~np.isin(user_N[test], user_N[:train_rows])
    scores = _group_aucs(label_N[test], logit(item_rate_N[test]) + logit(user_rate_N[test]), new_N)
    return scores | {"item_only_auc": auc(label_N[test], item_rate_N[test])}


def _runs(ctx: Context, preset: str) -> list[dict[str, Any]]:
    return seeds_of(
        ctx,
        section=SECTION,
        dataset=ctr.ML,
        variant=preset,
        preset=preset,
        data=ctr.prepared(ctx, ctr.ML),
        overrides=ctr.PROTOCOL[ctr.ML],
        extra=split_aucs,
    )


def _findings(ref: Mapping[str, Any], runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    means = {
        name: {g: mean_std(values(rs, f"test_auc_{g}"))[0] for g in GROUPS}
        for name, rs in runs.items()
        if rs
    }
    if not means:
        return "No model runs are stored for this section."
    best_new = max(means, key=lambda n: means[n]["new"])
    best_ret = max(means, key=lambda n: means[n]["returning"])
    share = ref["new_rows"] / ref["rows"]
    gap_new = means[best_new]["new"] - ref["test_auc_new"]
    spread_new = max(m["new"] for m in means.values()) - min(m["new"] for m in means.values())
    return "\n".join(
        [
            f"- {share:.0%} of the test rows ({ref['new_rows']:,} of {ref['rows']:,}) belong to "
            f"users new at test time (positive rate {ref['positive_rate_new']:.3f}, against "
            f"{ref['positive_rate_returning']:.3f} for returning users).",
            f"- On new users the models' means lie within {spread_new:.4f} of each other, and "
            f"the best (`{best_new}`, {means[best_new]['new']:.4f}) is {gap_new:+.4f} from the "
            f"item-only reference ({ref['test_auc_new']:.4f}), which knows nothing of the user.",
            f"- The models differ on returning users: `{best_ret}` "
            f"{means[best_ret]['returning']:.4f}, "
            + ", ".join(f"`{n}` {m['returning']:.4f}" for n, m in means.items() if n != best_ret)
            + ".",
            "- What the features leave out: adding each user's earlier labels (strictly "
            "earlier timestamps, any split: what the history has, plus its ratings) to the "
            f"item-only reference lifts new users from {ref['test_auc_new']:.4f} to "
            f"{ref['past_labels']['test_auc_new']:.4f} and all rows to "
            f"{ref['past_labels']['test_auc']:.4f}, with no training.",
            "- So a gain of +0.01 over the peers on all rows would have to come almost wholly "
            "from the returning users' share, or from a signal about new users that the Q1 "
            "features do not carry (the ratings of past items are not among them).",
        ]
    )


def run(ctx: Context) -> Section:
    ref = item_reference(ctx) if not ctx.cached_only else _stored_reference(ctx)
    runs = {name: _runs(ctx, name) for name in MODELS}
    header = ["model", "test AUC, all rows", "new users", "returning users", "seeds"]
    rows = [
        [
            f"`{name}`",
            fmt(values(rs, "test_auc")),
            fmt(values(rs, "test_auc_new")),
            fmt(values(rs, "test_auc_returning")),
            str(len(rs)),
        ]
        for name, rs in runs.items()
    ]
    if ref is not None:
        rows.append(
            [
                f"item-only reference (smoothing {ref['strength']:g})",
                f"{ref['test_auc']:.4f}",
                f"{ref['test_auc_new']:.4f}",
                f"{ref['test_auc_returning']:.4f}",
                "-",
            ]
        )
        past = ref["past_labels"]
        rows.append(
            [
                "item-only reference + the user's earlier labels (not a Q1 feature)",
                f"{past['test_auc']:.4f}",
                f"{past['test_auc_new']:.4f}",
                f"{past['test_auc_returning']:.4f}",
                "-",
            ]
        )
    intro = (
        "Q1 test AUC split by whether the row's user was seen in training (a new user's "
        "`user_id` is the out-of-vocabulary id). The models are trained again here, with the "
        "Q1 table's protocol and seeds, to score the split; their all-row AUCs match that "
        "table. The item-only reference is each item's train-split positive rate, smoothed "
        "towards the global rate (strength chosen on the validation split); it needs no "
        "training. Test GAUC groups rows by `user_id`, so it puts every new user into one "
        "group: read it as mostly the new users' AUC."
    )
    findings = _findings(ref, runs) if ref is not None else ""
    if ref is not None and not ctx.cached_only:
        ctx.out.mkdir(parents=True, exist_ok=True)
        (ctx.out / REFERENCE_FILE).write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")
    return Section(
        title="Q1: new users against returning ones",
        body=f"{intro}\n\n{table(header, rows)}\n\n{findings}\n",
    )


def _stored_reference(ctx: Context) -> dict[str, Any] | None:
    path = ctx.out / REFERENCE_FILE
    return json.loads(path.read_text()) if path.exists() else None
