"""A small hand-made impression log with planted malformed rows, and its dataset spec.

The log has users, items (with a side table of category and embedding), a multi-valued tag
field, a closed-vocabulary device field, a numeric row id (``rid``, to find rows in shards),
two labels, weights, user embeddings, and timestamps with many ties. ``PLANTED`` lists the
malformed rows (by rid) and the reason each must be quarantined for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

EMB_DIM = 3
SEQ_LEN = 4
N_USERS = 12
N_ITEMS = 15
# rid -> (column, bad value, reason)
PLANTED = {
    1000: ("user", None, "missing_value"),
    1001: ("price", "abc", "bad_number"),
    1002: ("price", "inf", "bad_number"),
    1003: ("ts", "yesterday", "bad_timestamp"),
    1004: ("ts", "99999999999", "bad_timestamp"),
    1005: ("click", "2", "bad_label"),
    1006: ("uemb", "0.1 0.2", "bad_embedding_length"),
    1007: ("device", "tv", "unknown_category"),
    1008: ("w", "-1", "bad_weight"),
    1009: ("buy", None, "missing_value"),
}


def make_log(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(log, items)`` with ``n`` valid rows (string columns, as they are written)."""
    rng = np.random.default_rng(seed)
    log = pd.DataFrame(
        {
            "rid": np.arange(n),
            "ts": 1_000_000 + rng.integers(0, n // 3 + 1, n),  # ~3 rows per second: many ties
            "user": [f"u{u}" for u in rng.integers(0, N_USERS, n)],
            "item": [f"i{i}" for i in rng.integers(0, N_ITEMS, n)],
            "tags": ["|".join(rng.choice(list("abcdef"), rng.integers(1, 4))) for _ in range(n)],
            "device": rng.choice(["mobile", "desktop"], n),
            "price": np.round(rng.uniform(1, 100, n), 2),
            "click": rng.integers(0, 2, n),
            "buy": rng.integers(0, 2, n),
            "w": np.round(rng.uniform(0.5, 2.0, n), 3),
        }
    )
    user_emb = rng.normal(size=(N_USERS, EMB_DIM)).round(4)
    log["uemb"] = [" ".join(map(str, user_emb[int(u[1:])])) for u in log["user"]]
    items = pd.DataFrame(
        {
            "item": [f"i{i}" for i in range(N_ITEMS)],
            "cat": [f"c{i % 4}" for i in range(N_ITEMS)],
            "iemb": [" ".join(map(str, v)) for v in rng.normal(size=(N_ITEMS, EMB_DIM)).round(4)],
        }
    )
    return log.astype(str), items


def plant(log: pd.DataFrame) -> pd.DataFrame:
    """Append one malformed row per ``PLANTED`` entry (copies of row 0 with one bad value)."""
    rows = []
    for rid, (column, value, _) in PLANTED.items():
        row = log.iloc[0].copy()
        row["rid"] = str(rid)
        row[column] = value
        rows.append(row)
    return pd.concat([log, pd.DataFrame(rows)], ignore_index=True)


def spec_dict(**overrides: object) -> dict:
    spec = {
        "name": "toy",
        "log": {"paths": ["log.csv"], "format": "csv"},
        "side_tables": [{"table": {"paths": ["items.csv"]}, "key": "item", "join_on": "item"}],
        "timestamp": {"column": "ts", "unit": "s", "max_seconds": 1e10},
        "user_field": "user",
        "item_field": "item",
        "categorical": [
            {"name": "user", "group": "user"},
            {"name": "item", "group": "item"},
            {"name": "cat", "group": "item"},
            {"name": "tags", "multi_valued": True, "separator": "|", "max_len": 3},
            {"name": "device", "vocab": {"mode": "closed", "values": ["mobile", "desktop"]}},
        ],
        "numeric": [{"name": "rid"}, {"name": "price"}],
        "embeddings": [
            {"name": "user_emb", "column": "uemb", "dim": EMB_DIM},
            {"name": "item_emb", "column": "iemb", "dim": EMB_DIM},
        ],
        "similarity": [{"name": "user_item_sim", "left": "user_emb", "right": "item_emb"}],
        "labels": [{"task": "click"}, {"task": "buy"}],
        "weight": {"column": "w"},
        "sequences": [
            {
                "name": "hist",
                "max_len": SEQ_LEN,
                "item_field": "item",
                "category_field": "cat",
                "only_positive_of": "click",
                "similarity_embedding": "item_emb",
                "group": "user",
            }
        ],
        "count_exposures": True,
        "split": {"kind": "temporal", "fractions": [0.6, 0.2, 0.2]},
    }
    spec.update(overrides)
    return spec


def write_dataset(folder: Path, log: pd.DataFrame, items: pd.DataFrame, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    log.to_csv(folder / "log.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
