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
AUC_AGREEMENT = 1e-9  # the raw and prepared item-only AUCs differ by float rounding at most
REFERENCE_FILE = "coldstart_reference.json"  # the reference, for a render without data
RATING_POSITIVE = 4  # Q1's label: rating >= 4
GROUPS = {"new": "users new at test time", "returning": "users seen in training"}


def _new_user_mask(split: Mapping[str, Any], schema: Any) -> np.ndarray:
    """Rows whose user is out of the vocabulary, fitted on the train split (``min_count`` 1):
    users with no train row."""
    from hmoe.schema import OOV_INDEX

    if schema.user_field is None:
        raise ValueError("the dataset has no user_field: new and returning users are unknown")
    return split[schema.user_field].numpy() == OOV_INDEX


def _smoothed(positives: np.ndarray, rows: np.ndarray, strength: float, prior: float) -> np.ndarray:
    """A positive rate with ``strength`` pseudo-rows at the ``prior`` rate added."""
    return (positives + strength * prior) / (rows + strength)


def _smoothed_rate_I(
    index_N: np.ndarray, labels_N: np.ndarray, size: int, strength: float, prior: float
) -> np.ndarray:
    """The smoothed positive rate of each index ``[I]`` over the rows ``index_N``."""
    positives_I = np.bincount(index_N, weights=labels_N, minlength=size)
    return _smoothed(positives_I, np.bincount(index_N, minlength=size), strength, prior)


def _group_aucs(labels_N: np.ndarray, scores_N: np.ndarray, new_N: np.ndarray) -> dict[str, float]:
    from hmoe.platform.core.metrics import auc

    return {
        "test_auc": auc(labels_N, scores_N),
        "test_auc_new": auc(labels_N[new_N], scores_N[new_N]),
        "test_auc_returning": auc(labels_N[~new_N], scores_N[~new_N]),
    }


def split_aucs(model: Any, cfg: Any) -> Mapping[str, float]:
    """``extra`` hook: the test AUC over new and over returning users."""
    from hmoe.platform.data.batches import load_schema, read_split
    from hmoe.schema import LABELS

    schema = load_schema(cfg.data.path)
    test = read_split(cfg.data.path, "test", schema=schema)
    logits_N = first_task_logits(model, test, cfg.data.eval_batch_size)
    labels_N = test[LABELS][:, 0].double().numpy()
    scores = _group_aucs(labels_N, logits_N, _new_user_mask(test, schema))
    return {k: v for k, v in scores.items() if k != "test_auc"}


def item_reference(ctx: Context) -> dict[str, Any]:
    """The smoothed per-item positive rate of the train split, scored on the test split."""
    from hmoe.platform.core.metrics import auc
    from hmoe.platform.data.batches import load_schema, read_split
    from hmoe.schema import LABELS

    data = ctr.prepared(ctx, ctr.ML)
    schema = load_schema(data)
    splits = {name: read_split(data, name, schema=schema) for name in ("train", "val", "test")}
    item = schema.item_field
    size = schema.categorical_by_name(item).vocab_size
    labels = {name: s[LABELS][:, 0].double().numpy() for name, s in splits.items()}
    items = {name: s[item].numpy() for name, s in splits.items()}
    prior = float(labels["train"].mean())

    def rate_I(strength: float) -> np.ndarray:
        return _smoothed_rate_I(items["train"], labels["train"], size, strength, prior)

    by_val = {s: auc(labels["val"], rate_I(s)[items["val"]]) for s in SMOOTHING}
    strength = max(by_val, key=by_val.__getitem__)
    new_N = _new_user_mask(splits["test"], schema)
    scores = _group_aucs(labels["test"], rate_I(strength)[items["test"]], new_N)
    past = past_labels_reference(
        ctx, strength, train_rows=len(labels["train"]), test_rows=len(labels["test"])
    )
    # the raw log, split again here, must give the prepared split's test rows and new users
    agree = past.pop("new_rows") == int(new_N.sum()) and np.isclose(
        past.pop("item_only_auc"), scores["test_auc"], rtol=0.0, atol=AUC_AGREEMENT
    )
    if not agree:
        raise RuntimeError("the raw log's split disagrees with the prepared ml-100k-q1 split")
    return scores | {
        "past_labels": past,
        "strength": strength,
        "rows": len(new_N),
        "new_rows": int(new_N.sum()),
        "positive_rate_new": float(labels["test"][new_N].mean()),
        "positive_rate_returning": float(labels["test"][~new_N].mean()),
    }


def past_labels_reference(
    ctx: Context, strength: float, train_rows: int, test_rows: int
) -> dict[str, float]:
    """The item-only reference plus what Q1 withholds: each row's user's earlier labels.

    From the raw log, in the protocol's order: the smoothed positive rate of the user's rows
    with a strictly earlier timestamp (any split, as the history), added in log-odds to the
    item's rate. It reads the labels of earlier test rows, as an online system would have
    them, so it is no competitor under Q1: it measures how much the ratings of past items
    would say. No fitting; the user rate reuses the item rate's smoothing strength.
    """
    import pyarrow.csv as pacsv

    from hmoe.platform.core.metrics import auc

    table = pacsv.read_csv(
        ctx.data_root / "ml-100k" / "ml-100k.inter",
        parse_options=pacsv.ParseOptions(delimiter="\t"),
    )
    raw = {name.split(":")[0]: table.column(name).to_numpy() for name in table.column_names}
    order_N = np.lexsort((raw["item_id"], raw["user_id"], raw["timestamp"]))
    user_N, item_N, time_N = (raw[k][order_N] for k in ("user_id", "item_id", "timestamp"))
    label_N = (raw["rating"][order_N] >= RATING_POSITIVE).astype(np.float64)
    test_start = len(label_N) - test_rows
    prior = float(label_N[:train_rows].mean())

    items, item_index_N = np.unique(item_N, return_inverse=True)
    item_rate_N = _smoothed_rate_I(
        item_index_N[:train_rows], label_N[:train_rows], len(items), strength, prior
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
    user_rate_N[by_user] = _smoothed(past_pos, past_rows, strength, prior)

    def logit(p: np.ndarray) -> np.ndarray:
        return np.log(p / (1.0 - p))

    test = slice(test_start, None)
    new_N = ~np.isin(user_N[test], user_N[:train_rows])
    scores = _group_aucs(label_N[test], logit(item_rate_N[test]) + logit(user_rate_N[test]), new_N)
    return scores | {
        "item_only_auc": auc(label_N[test], item_rate_N[test]),
        "new_rows": int(new_N.sum()),
    }


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
    by_new = sorted(means, key=lambda n: -means[n]["new"])
    by_returning = sorted(means, key=lambda n: -means[n]["returning"])
    share = ref["new_rows"] / ref["rows"]

    def spread(group: str) -> float:
        return max(m[group] for m in means.values()) - min(m[group] for m in means.values())

    def ranked(names: Sequence[str], group: str) -> str:
        return ", ".join(f"`{n}` {means[n][group]:.4f}" for n in names)

    past = ref["past_labels"]
    return "\n".join(
        [
            f"- {share:.0%} of the test rows ({ref['new_rows']:,} of {ref['rows']:,}) belong to "
            f"users new at test time (positive rate {ref['positive_rate_new']:.3f}, against "
            f"{ref['positive_rate_returning']:.3f} for returning users).",
            f"- New users: {ranked(by_new, 'new')} (spread {spread('new'):.4f}); the best is "
            f"{means[by_new[0]]['new'] - ref['test_auc_new']:+.4f} from the item-only "
            f"reference ({ref['test_auc_new']:.4f}), which knows nothing of the user.",
            f"- Returning users: {ranked(by_returning, 'returning')} "
            f"(spread {spread('returning'):.4f}).",
            "- What the features leave out: each user's earlier labels (strictly earlier "
            "timestamps, any split: the history's items with their ratings) added to the "
            f"item-only reference lift new users from {ref['test_auc_new']:.4f} to "
            f"{past['test_auc_new']:.4f} and all rows to {past['test_auc']:.4f}, with no "
            "training. It reads earlier test labels, as an online system would have them; it "
            "measures the missing signal and is not a competitor under Q1.",
            "- So a gain on Q1 has to come almost wholly from the returning users "
            f"({1 - share:.0%} of the rows), or from a signal about new users that the Q1 "
            "features do not carry: Q1 has no target, and models are compared on returning "
            'users in section "Q1b: ml-100k with returning users".',
        ]
    )


def _table_gap(ctx: Context, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> float:
    """Largest difference of a model's mean all-row AUC here from the Q1 table's."""
    gaps = [0.0]
    for name, rs in runs.items():
        here = values(rs, "test_auc")
        there = values(ctr.run_model(ctx.cached(), ctr.ML, name, name, {}), "test_auc")
        if here and there:
            gaps.append(abs(mean_std(here)[0] - mean_std(there)[0]))
    return max(gaps)


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
        past = ref["past_labels"]
        for label, scores in (
            (f"item-only reference (smoothing {ref['strength']:g})", ref),
            ("item-only reference + the user's earlier labels (not a Q1 feature)", past),
        ):
            rows.append(
                [
                    label,
                    *(
                        f"{scores[k]:.4f}"
                        for k in ("test_auc", "test_auc_new", "test_auc_returning")
                    ),
                    "-",
                ]
            )
    intro = (
        "Q1 test AUC split by whether the row's user was seen in training (a new user's "
        "`user_id` is the out-of-vocabulary id). The models are trained again here, with the "
        "Q1 table's protocol and seeds, to score the split; their mean all-row AUCs differ "
        f"from that table's by at most {_table_gap(ctx, runs):.4f}. The item-only reference "
        "is each item's train-split positive rate, smoothed towards the global rate (strength "
        "chosen on the validation split); it needs no training. The Q1 table's test GAUC is "
        "over returning users only: the new users share one out-of-vocabulary id, which "
        "names no single user."
    )
    if ref is None:
        findings = f"The references are not stored ({REFERENCE_FILE}): run `--sections {SECTION}`."
    else:
        findings = _findings(ref, runs)
        if not ctx.cached_only:
            ctx.out.mkdir(parents=True, exist_ok=True)
            (ctx.out / REFERENCE_FILE).write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")
    return Section(
        title="Q1: new users against returning ones",
        body=f"{intro}\n\n{table(header, rows)}\n\n{findings}\n",
    )


def _stored_reference(ctx: Context) -> dict[str, Any] | None:
    path = ctx.out / REFERENCE_FILE
    return json.loads(path.read_text()) if path.exists() else None
