"""A tiny prepared dataset written straight from the Batch contract (no Ray Data, ~0.1 s).

It has the layout of ``hmoe data prepare``'s output: ``manifest.json`` with ``feature_schema``
and Parquet shards per split (``train/``, ``valid/``, ``test/``) whose columns carry the Batch
names, labels as ``label__<task>`` and list columns for multi-valued fields and sequences. A
planted signal (even items are positive) makes the model learn within one epoch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hmoe.models.testing import random_batch, tiny_schema
from hmoe.schema import LABELS, FeatureSchema

SPLIT_ROWS = {"train": 512, "valid": 256, "test": 256}
SHARDS_PER_SPLIT = 2


def _table(batch: dict[str, torch.Tensor], schema: FeatureSchema) -> pa.Table:
    columns = {}
    for name, tensor in batch.items():
        if name == LABELS:
            for k, task in enumerate(schema.tasks):
                columns[f"label__{task}"] = pa.array(tensor[:, k].numpy().astype(np.float32))
        elif tensor.dim() == 2:
            flat = pa.array(tensor.numpy().reshape(-1))
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, tensor.shape[1])
        else:
            columns[name] = pa.array(tensor.numpy())
    return pa.table(columns)


def write_prepared(root: Path, tasks: tuple[str, ...] = ("click",), seed: int = 0) -> Path:
    """Write the dataset under ``root`` and return it."""
    schema = tiny_schema(tasks)
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, int] = {}
    shards: dict[str, list[dict]] = {}
    for split, count in SPLIT_ROWS.items():
        batch = random_batch(schema, count, generator)
        noise = torch.rand(count, generator=generator) < 0.1
        positive = ((batch["item"] % 2 == 0) ^ noise).float()
        batch[LABELS] = positive.unsqueeze(1).repeat(1, len(tasks))
        folder = root / split
        folder.mkdir(parents=True)
        table = _table(batch, schema)
        step = count // SHARDS_PER_SPLIT
        for i in range(SHARDS_PER_SPLIT):
            path = folder / f"part-{i:05d}.parquet"
            pq.write_table(table.slice(i * step, step), path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            rel = str(path.relative_to(root))
            shards.setdefault(split, []).append({"path": rel, "rows": step, "sha256": digest})
        rows[split] = count
    manifest = {
        "name": "tiny",
        "feature_schema": schema.to_dict(),
        "rows": rows,
        "shards": shards,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root
