"""Test data for the analysis tools: a planted behaviour-target correlation, small zoo models
trained on it with a plain torch loop, and a prepared dir + tracked run built without Ray.

The click of a sample whose target has category ``c_t`` gets the logit
``PLANTED_STRENGTH * PLANTED_DECAY ** (p - 1)`` from each behaviour of category ``c_t`` at
relative position ``p <= PLANTED_POSITIONS`` and ``PLANTED_RELATED`` times that from the
categories of its group (``c % GROUPS``). Items carry no category information, so only the
category table can learn the effect; ``like`` depends on the user and item ids only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hmoe.models.combine import CombineConfig
from hmoe.models.common import MLPConfig
from hmoe.models.experts import ExpertsConfig, FlatConfig
from hmoe.models.features import FeatureEncoderConfig
from hmoe.models.losses import LossConfig, TrainWrapper
from hmoe.models.ranker import EmbeddingSetsConfig, ModelConfig
from hmoe.models.sequence import SequenceEncoderConfig
from hmoe.models.zoo import build
from hmoe.schema import LABELS, CategoricalFeature, FeatureSchema, SequenceFeature, seq_column

CATEGORIES = 10  # real ids 2 .. CATEGORIES + 1
TARGET = 2  # the planted target category (encoded id)
TARGET_SHARE = 0.5  # of the samples' targets, and of the behaviours (besides the uniform draw)
HISTORY_SHARE = 0.25
GROUPS = 3
ITEMS = 50
USERS = 40
SEQ_LEN = 10
PLANTED_POSITIONS = 8
PLANTED_STRENGTH = 3.0
PLANTED_DECAY = 0.6
PLANTED_RELATED = 0.35
BASE_LOGIT = -1.0
SECONDS_PER_STEP = 3600.0
TASKS = ("click", "like")


def schema() -> FeatureSchema:
    return FeatureSchema(
        categorical=(
            CategoricalFeature(name="user", vocab_size=USERS + 2, group="user"),
            CategoricalFeature(name="item", vocab_size=ITEMS + 2, group="item"),
            CategoricalFeature(name="category", vocab_size=CATEGORIES + 2, group="item"),
        ),
        sequences=(
            SequenceFeature(
                name="hist", max_len=SEQ_LEN, item_field="item", category_field="category"
            ),
        ),
        tasks=TASKS,
        user_field="user",
        item_field="item",
    )


def planted_matrix() -> np.ndarray:
    """``[V, V, P]``: logit of a behaviour of category ``c`` at position ``p`` (index ``p - 1``)
    for a target of category ``t`` (``[t, c, p - 1]``)."""
    vocab = CATEGORIES + 2
    out = np.zeros((vocab, vocab, PLANTED_POSITIONS))
    decay = PLANTED_STRENGTH * PLANTED_DECAY ** np.arange(PLANTED_POSITIONS)
    for t in range(2, vocab):
        for c in range(2, vocab):
            weight = 1.0 if c == t else PLANTED_RELATED if c % GROUPS == t % GROUPS else 0.0
            out[t, c] = weight * decay
    return out


def generate(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Columns named as the Batch contract (labels as ``label__<task>``)."""
    rng = np.random.default_rng(seed)
    uniform = rng.integers(2, CATEGORIES + 2, size=(rows, SEQ_LEN))
    cats = np.where(rng.random((rows, SEQ_LEN)) < HISTORY_SHARE, TARGET, uniform)
    lengths = rng.integers(1, SEQ_LEN + 1, size=rows)
    pad = np.arange(SEQ_LEN)[None, :] >= lengths[:, None]
    cats[pad] = 0
    items = np.where(pad, 0, rng.integers(2, ITEMS + 2, size=(rows, SEQ_LEN)))
    target_cat = np.where(
        rng.random(rows) < TARGET_SHARE, TARGET, rng.integers(2, CATEGORIES + 2, size=rows)
    )
    positions = np.clip(lengths[:, None] - np.arange(SEQ_LEN)[None, :], 0, None)
    in_plant = (positions >= 1) & (positions <= PLANTED_POSITIONS)
    effect = planted_matrix()[
        target_cat[:, None], cats, np.clip(positions - 1, 0, PLANTED_POSITIONS - 1)
    ]
    click_logit = BASE_LOGIT + (effect * in_plant).sum(axis=1)
    users = rng.integers(2, USERS + 2, size=rows)
    target_items = rng.integers(2, ITEMS + 2, size=rows)
    like_logit = np.where((users + target_items) % 3 == 0, 1.5, -1.5)
    deltas = (positions * SECONDS_PER_STEP).astype(np.float32)
    return {
        "user": users,
        "item": target_items,
        "category": target_cat,
        seq_column("hist", "item"): items,
        seq_column("hist", "category"): cats,
        seq_column("hist", "length"): lengths,
        seq_column("hist", "time_delta"): np.where(pad, 0.0, deltas).astype(np.float32),
        "label__click": (rng.random(rows) < 1 / (1 + np.exp(-click_logit))).astype(np.float32),
        "label__like": (rng.random(rows) < 1 / (1 + np.exp(-like_logit))).astype(np.float32),
    }


def to_batch(columns: dict[str, np.ndarray], index: np.ndarray) -> dict[str, torch.Tensor]:
    batch = {
        k: torch.as_tensor(v[index]) for k, v in columns.items() if not k.startswith("label__")
    }
    labels = [torch.as_tensor(columns[f"label__{t}"][index]) for t in TASKS]
    batch[LABELS] = torch.stack(labels, dim=1)
    batch["weight"] = torch.ones(len(index))
    batch["exposure"] = torch.zeros(len(index))
    return batch


def model_config(kind: str, sequence: str = "tim", dim: int = 8) -> ModelConfig:
    """A small zoo model: one set, one FlatDNN expert, the chosen sequence encoder."""
    shared = {"shared_experts": ExpertsConfig(counts={"mlp": 1})} if kind == "stem" else {}
    return ModelConfig(
        kind=kind,
        encoder=FeatureEncoderConfig(
            init_std=0.1, sequence=SequenceEncoderConfig(kind=sequence, use_similarity=False)
        ),
        embedding=EmbeddingSetsConfig(embedding_dim=dim, assignment="shared"),
        experts=ExpertsConfig(counts={"mlp": 1}, mlp=FlatConfig(mlp=MLPConfig(hidden_dims=(32,)))),
        combine=CombineConfig(method="mean" if kind == "single" else "gate"),
        tower=MLPConfig(hidden_dims=()),
        **shared,
    )


def train(
    config: ModelConfig,
    columns: dict[str, np.ndarray],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> torch.nn.Module:
    """A real training run (Adam, BCE on every task) of the zoo model ``config``."""
    torch.manual_seed(seed)
    model = build(config, schema())
    wrapper = TrainWrapper(model, LossConfig(), tasks=TASKS)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rows = len(columns["user"])
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(rows)
        for start in range(0, rows, batch_size):
            loss, _ = wrapper(to_batch(columns, order[start : start + batch_size]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _table(columns: dict[str, np.ndarray]) -> pa.Table:
    out = {}
    for name, values in columns.items():
        if values.ndim == 2:
            flat = pa.array(values.reshape(-1))
            out[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        else:
            out[name] = pa.array(values)
    return pa.table(out)


def write_prepared(root: Path, rows: dict[str, int], seed: int, synth: bool) -> Path:
    """A prepared dir (``prepare``'s layout) under ``root / "prepared"``; with ``synth`` also
    the synth output beside it (``spec.yaml``, the planted matrix in raw category ids) and a
    fitted category vocabulary whose raw values are ``id - 2``."""
    data = root / "prepared"
    shards = {}
    for index, (split, count) in enumerate(rows.items()):
        name = {"val": "valid"}.get(split, split)  # the prepared dir's split names
        folder = data / name
        folder.mkdir(parents=True)
        path = folder / "part-00000.parquet"
        columns = generate(count, seed + index)
        # the per-row columns ``prepare`` always writes, so that ``read_split`` reads the shards
        columns |= {"weight": np.ones(count, np.float32), "exposure": np.zeros(count, np.float32)}
        pq.write_table(_table(columns), path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shards[name] = [{"path": str(path.relative_to(data)), "rows": count, "sha256": digest}]
    manifest = {"name": "planted", "feature_schema": schema().to_dict(), "shards": shards}
    if synth:
        source = root / "synth"
        source.mkdir()
        (source / "spec.yaml").write_text("name: planted\n")
        raw = planted_matrix()[TARGET, 2:, :]  # raw category r = encoded id r + 2
        np.save(source / "planted_correlation.npy", raw)
        meta = {"target_category": TARGET - 2, "shape": ["categories", "positions"]}
        (source / "planted_correlation.json").write_text(json.dumps(meta))
        (data / "vocab").mkdir()
        values = pa.array([str(r) for r in range(CATEGORIES)], pa.string())
        pq.write_table(pa.table({"value": values}), data / "vocab" / "category.parquet")
        manifest["spec_path"] = str(source / "spec.yaml")
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data
