"""Prepared shards -> ``Batch`` tensors for the training loop, on top of the data reader.

``hmoe.platform.data.reader`` owns the prepared-dir format (manifest, shard list, the Arrow ->
Batch conversion with an explicit dtype for every column, as Ray's ``iter_torch_batches``
needs). This module adds what the
loop needs: a whole split materialised in memory (validation and test on rank 0, the standalone
train split), seeded mini-batches over it, and the fixed input order of a logged model. It
imports the reader lazily, so the loop needs neither Ray nor MLflow.

Legend: ``B`` batch, ``K`` tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmoe.schema import LABELS, METRIC_SPLITS, FeatureSchema

__all__ = [
    "Batch",
    "batch_size_of",
    "input_columns",
    "iter_minibatches",
    "load_schema",
    "make_collate",
    "read_split",
    "split_dataset",
    "split_megabytes",
    "split_rows",
]

Batch = dict[str, torch.Tensor]


def load_schema(data_dir: str | Path) -> FeatureSchema:
    from hmoe.platform.data import reader  # pyarrow: only when reading shards

    return reader.feature_schema(data_dir)


def _split(split: str) -> str:
    if split not in METRIC_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {sorted(METRIC_SPLITS)}")
    return METRIC_SPLITS[split]


def read_split(data_dir: str | Path, split: str, schema: FeatureSchema) -> Batch:
    """One whole split (``train``, ``val``, ``test``) in memory as a single Batch."""
    from hmoe.platform.data import reader  # pyarrow: only when reading shards

    return reader.to_batch(reader.read_split_table(data_dir, _split(split)), schema)


def split_rows(data_dir: str | Path, split: str) -> int:
    """Rows of a split, from the manifest's shard list."""
    from hmoe.platform.data import reader  # pyarrow: only when reading shards

    shards = reader.load_manifest(data_dir)["shards"][_split(split)]
    return sum(int(shard["rows"]) for shard in shards)


def split_megabytes(data_dir: str | Path, split: str) -> float:
    """A split's size in memory as Arrow, in MB (``reader.split_memory_bytes``)."""
    from hmoe.platform.data import reader

    return reader.split_memory_bytes(data_dir, _split(split)) / 2**20


def split_dataset(data_dir: str | Path, split: str, *, in_memory: bool = False) -> Any:
    """A split as a Ray Dataset of exactly the Batch columns: lazy (streamed by Train), or
    read into memory here (``reader.read_split_dataset``)."""
    from hmoe.platform.data import reader  # pyarrow: only when reading shards

    return reader.read_split_dataset(data_dir, _split(split), in_memory=in_memory)


def make_collate(schema: FeatureSchema) -> Any:
    """Ray ``iter_torch_batches`` collate_fn: an Arrow batch -> a Batch (dtype per column)."""
    from hmoe.platform.data import reader  # pyarrow: only when reading shards

    return reader.collate_fn(schema)


def input_columns(schema: FeatureSchema) -> list[str]:
    """The Batch keys a model's forward may read, in a fixed order (labels excluded)."""
    from hmoe.platform.data import reader  # pyarrow: only when reading shards

    return sorted(c for c in reader.batch_columns(schema) if not c.startswith("label__"))


def batch_size_of(batch: Batch) -> int:
    return int(batch[LABELS].shape[0])


def iter_minibatches(
    data: Batch, batch_size: int, *, seed: int | None = None, drop_last: bool = False
) -> Iterator[Batch]:
    """Slice an in-memory Batch into mini-batches, shuffled by ``seed`` (None keeps the order)."""
    num_rows = batch_size_of(data)
    order = None
    if seed is not None:
        order = torch.from_numpy(np.random.default_rng(seed).permutation(num_rows))
    stop = num_rows - num_rows % batch_size if drop_last else num_rows
    for start in range(0, stop, batch_size):
        if order is None:
            yield {k: v[start : start + batch_size] for k, v in data.items()}
        else:
            index = order[start : start + batch_size]
            yield {k: v[index] for k, v in data.items()}
