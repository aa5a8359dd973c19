"""A tiny prepared dataset written straight from the Batch contract (no Ray Data, ~0.1 s).

It has the layout of ``hmoe data prepare``'s output: ``manifest.json`` with ``feature_schema``
and ``vocabularies`` (values ``<feature>-<index>`` in ``vocab/``), and Parquet shards per split
(``train/``, ``valid/``, ``test/``) whose columns carry the Batch names, labels as
``label__<task>`` and list columns for multi-valued fields and sequences. A planted signal (even
items are positive) makes the model learn within one epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hmoe.models.testing import random_batch, tiny_schema
from hmoe.platform.data.batches import Batch
from hmoe.schema import LABELS, FeatureSchema

SPLIT_ROWS = {"train": 512, "valid": 256, "test": 256}
FIRST_INDEX = 2  # vocabulary indices 0 and 1 are padding and OOV
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


def write_prepared(
    root: Path,
    tasks: tuple[str, ...] = ("click",),
    seed: int = 0,
    *,
    rows: Mapping[str, int] = SPLIT_ROWS,
    sequences: bool = True,
    labels: Callable[[str, Batch], torch.Tensor] | None = None,
) -> Path:
    """Write the dataset under ``root`` and return it.

    ``rows``: rows per split (0 gives empty shards); ``sequences=False`` leaves the behaviour
    sequence out of the schema; ``labels(split, batch)`` replaces the planted labels with its
    ``[B]`` 0/1 tensor (the same for every task).
    """
    schema = tiny_schema(tasks)
    if not sequences:
        schema = dataclasses.replace(schema, sequences=())
    generator = torch.Generator().manual_seed(seed)
    written: dict[str, int] = {}
    shards: dict[str, list[dict]] = {}
    for split, count in rows.items():
        # random_batch plants edge cases in rows 0 and 1, so draw at least 2 rows
        batch = random_batch(schema, max(count, 2), generator)
        batch = {k: v[:count] for k, v in batch.items()}
        noise = torch.rand(count, generator=generator) < 0.1
        positive = ((batch["item"] % 2 == 0) ^ noise).float()
        if labels is not None:
            positive = labels(split, batch).float()
        batch[LABELS] = positive.unsqueeze(1).repeat(1, len(tasks))
        folder = root / split
        folder.mkdir(parents=True)
        table = _table(batch, schema)
        bounds = np.linspace(0, count, SHARDS_PER_SPLIT + 1).astype(int)
        for i in range(SHARDS_PER_SPLIT):
            path = folder / f"part-{i:05d}.parquet"
            start, stop = int(bounds[i]), int(bounds[i + 1])
            pq.write_table(table.slice(start, stop - start), path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            rel = str(path.relative_to(root))
            shards.setdefault(split, []).append(
                {"path": rel, "rows": stop - start, "sha256": digest}
            )
        written[split] = count
    vocabularies = {}
    for feature in schema.categorical:
        # fitted values "<feature>-<index>", as prepare's vocab/<feature>.parquet stores them
        keys = [f"{feature.name}-{i}" for i in range(FIRST_INDEX, feature.vocab_size)]
        (root / "vocab").mkdir(exist_ok=True)
        pq.write_table(pa.table({"value": pa.array(keys, pa.string())}),
                       root / "vocab" / f"{feature.name}.parquet")  # fmt: skip
        vocabularies[feature.name] = {
            "mode": "fit", "size": feature.vocab_size, "hash_size": 0, "max_id": -1,
        }  # fmt: skip
    manifest = {
        "name": "tiny",
        "feature_schema": schema.to_dict(),
        "rows": written,
        "shards": shards,
        "vocabularies": vocabularies,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root
