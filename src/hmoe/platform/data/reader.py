"""Reading a prepared dataset: the manifest, its FeatureSchema, and split shards as Batches.

Shards hold the Batch columns of ``hmoe.schema`` except ``labels``, which is stored as one
``label__<task>`` float column per task and stacked here into ``[B, K]`` in ``schema.tasks``
order. Multi-valued fields and sequence parts are fixed-size lists (``[B, M]`` / ``[B, L]``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hmoe.platform.core import storage
from hmoe.platform.data.spec import SPLITS, label_column
from hmoe.schema import EXPOSURE, LABELS, MANIFEST, WEIGHT, FeatureSchema, seq_column

SIZE_SAMPLE_ROWS = 4096  # rows read to learn a split's bytes per row in memory

__all__ = [
    "batch_columns",
    "collate_fn",
    "feature_schema",
    "iter_batches",
    "load_manifest",
    "read_split_dataset",
    "read_split_table",
    "shard_paths",
    "split_memory_bytes",
    "to_batch",
    "verify_shards",
]


def load_manifest(prepared_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory or ``s3://`` prefix (there is none while a run is
    still writing: on object storage the manifest is the last object written)."""
    path = storage.join(prepared_dir, MANIFEST)
    missing = FileNotFoundError(
        f"{prepared_dir} is not a prepared dataset (no {MANIFEST}); run `hmoe data prepare`"
    )
    if not storage.is_remote(path) and not Path(path).is_file():
        raise missing
    try:
        blob = storage.read_bytes(path)
    except FileNotFoundError:
        raise missing from None
    except OSError as err:  # S3: unreachable, no such bucket, access denied
        raise storage.StorageError(f"cannot read {path}: {' '.join(str(err).split())}") from err
    return json.loads(blob)


def feature_schema(manifest: Mapping[str, Any] | str | Path) -> FeatureSchema:
    """The FeatureSchema of a manifest (or of a prepared directory)."""
    if not isinstance(manifest, Mapping):
        manifest = load_manifest(manifest)
    return FeatureSchema.from_dict(manifest["feature_schema"])


def shard_paths(prepared_dir: str | Path, split: str) -> list[str]:
    """The shard locations of a split (local paths, or URIs under an ``s3://`` prefix)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
    manifest = load_manifest(prepared_dir)
    return [storage.join(prepared_dir, shard["path"]) for shard in manifest["shards"][split]]


def _open_parquet(location: str) -> Any:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(location)
    return pq.ParquetFile(fs.open_input_file(path))


def verify_shards(prepared_dir: str | Path) -> None:
    """Raise ``ValueError`` if a shard's sha256 differs from the manifest's."""
    manifest = load_manifest(prepared_dir)
    for shards in manifest["shards"].values():
        for shard in shards:
            blob = storage.read_bytes(storage.join(prepared_dir, shard["path"]))
            digest = hashlib.sha256(blob).hexdigest()
            if digest != shard["sha256"]:
                raise ValueError(f"{shard['path']}: checksum mismatch (the file was modified)")


def batch_columns(schema: FeatureSchema) -> list[str]:
    """The shard columns a Batch is built from."""
    names = [c.name for c in schema.categorical] + [n.name for n in schema.numeric]
    names += [s.name for s in schema.similarity]
    for q in schema.sequences:
        parts = ["item"] + (["category"] if q.category_field else []) + ["time_delta"]
        parts += (["similarity"] if q.has_similarity else []) + ["length"]
        names += [seq_column(q.name, part) for part in parts]
    return names + [label_column(t) for t in schema.tasks] + [WEIGHT, EXPOSURE]


def _shard_tables(
    prepared_dir: str | Path, split: str, columns: Sequence[str] | None = None
) -> list[pa.Table]:
    """Each shard of a split as a pyarrow Table (``columns``: only these), in shard order."""
    paths = shard_paths(prepared_dir, split)
    if not paths:
        schema = feature_schema(prepared_dir)
        raise ValueError(f"split {split!r} of {prepared_dir} is empty ({schema.tasks})")
    return [_open_parquet(p).read(columns=columns) for p in paths]


def split_memory_bytes(prepared_dir: str | Path, split: str) -> float:
    """Bytes a split's Batch columns take in memory as Arrow: the first rows of its first
    non-empty shard, read, per row, times the split's rows (``math.inf`` when no row can be
    read). The stored Parquet is far smaller (a prepared behaviour sequence compresses about
    20x), so it cannot bound memory."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
    manifest = load_manifest(prepared_dir)
    shards = [s for s in manifest["shards"][split] if int(s["rows"]) > 0]
    if not shards:
        return 0.0
    columns = batch_columns(feature_schema(manifest))
    sample = next(
        _open_parquet(storage.join(prepared_dir, shards[0]["path"])).iter_batches(
            batch_size=SIZE_SAMPLE_ROWS, columns=columns
        ),
        None,
    )
    if sample is None or sample.num_rows == 0:
        return math.inf
    return sample.nbytes / sample.num_rows * sum(int(s["rows"]) for s in shards)


def read_split_table(prepared_dir: str | Path, split: str) -> pa.Table:
    """A whole split as one pyarrow Table, rows in shard order (small data, tests)."""
    return pa.concat_tables(_shard_tables(prepared_dir, split))


def read_split_dataset(prepared_dir: str | Path, split: str, *, in_memory: bool = False) -> Any:
    """A split as a Ray Dataset of the Batch columns (use ``BatchCollate`` to get Batches).

    ``in_memory=False``: a lazy dataset, its shards read by Ray Data tasks as it is consumed.
    ``in_memory=True``: the shards read here with pyarrow into a materialized dataset, one
    block per shard, in shard order; for a split small enough to hold in the object store, as
    fast as memory allows: no read task, whose cold worker process costs seconds per run.

    The dataset runs without Ray Data's progress bars and execution-plan lines: it is read
    inside trials and Train workers, whose output is a search's log (or a job's), where each
    bar redraw became a line of its own and buried the epoch lines.
    """
    import ray.data

    columns = batch_columns(feature_schema(prepared_dir))
    if in_memory:
        dataset = ray.data.from_arrow(_shard_tables(prepared_dir, split, columns))
    else:
        fs, _ = storage.filesystem(prepared_dir)
        paths = [storage.filesystem(p)[1] for p in shard_paths(prepared_dir, split)]
        dataset = ray.data.read_parquet(paths, filesystem=fs).select_columns(columns)
    # the dataset's own DataContext (a copy taken at creation) travels with it to materialize()
    # and to Train's split coordinator, so this leaves the caller's global context untouched
    dataset.context.enable_progress_bars = False
    dataset.context.print_on_execution_start = False
    return dataset


def _column_tensor(column: pa.ChunkedArray | pa.Array, dtype: Any) -> Any:
    import torch

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
        values = np.asarray(array.flatten()).reshape(len(array), width)
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        # variable-length lists must all have one length (padded [B, M] / [B, L] columns)
        lengths = np.unique(np.asarray(array.value_lengths().fill_null(0)))
        if len(lengths) > 1:
            raise ValueError(f"list column has rows of lengths {lengths.tolist()}; need one")
        width = int(lengths[0]) if len(lengths) else 0
        values = np.asarray(array.flatten()).reshape(len(array), width)
    else:
        values = np.asarray(array)
    return torch.from_numpy(np.array(values)).to(dtype)  # a writable copy


def to_batch(table: pa.Table, schema: FeatureSchema) -> dict[str, Any]:
    """A Batch (``dict[str, Tensor]``) from shard rows, per the contract of ``hmoe.schema``."""
    import torch

    batch: dict[str, Any] = {}
    for c in schema.categorical:
        batch[c.name] = _column_tensor(table.column(c.name), torch.long)
    for n in (*schema.numeric, *schema.similarity):
        batch[n.name] = _column_tensor(table.column(n.name), torch.float32)
    for q in schema.sequences:
        for part in ("item", "category", "time_delta", "similarity", "length"):
            name = seq_column(q.name, part)
            if name in table.column_names:
                floats = part in ("time_delta", "similarity")
                batch[name] = _column_tensor(
                    table.column(name), torch.float32 if floats else torch.long
                )
    labels = [_column_tensor(table.column(label_column(t)), torch.float32) for t in schema.tasks]
    batch[LABELS] = torch.stack(labels, dim=1)
    batch[WEIGHT] = _column_tensor(table.column(WEIGHT), torch.float32)
    batch[EXPOSURE] = _column_tensor(table.column(EXPOSURE), torch.float32)
    return batch


def iter_batches(
    prepared_dir: str | Path, split: str, batch_size: int, *, drop_last: bool = False
) -> Iterator[dict[str, Any]]:
    """Batches of a split in shard order, read in this process with pyarrow (no Ray)."""
    schema = feature_schema(prepared_dir)
    columns = batch_columns(schema)
    pending: list[pa.Table] = []
    rows = 0
    for path in shard_paths(prepared_dir, split):
        for record_batch in _open_parquet(path).iter_batches(batch_size, columns=columns):
            pending.append(pa.Table.from_batches([record_batch]))
            rows += record_batch.num_rows
            while rows >= batch_size:
                table = pa.concat_tables(pending)
                yield to_batch(table.slice(0, batch_size), schema)
                pending, rows = [table.slice(batch_size)], rows - batch_size
    if rows and not drop_last:
        yield to_batch(pa.concat_tables(pending), schema)


def collate_fn(schema: FeatureSchema) -> Any:
    """A ``collate_fn`` for Ray's ``Dataset.iter_torch_batches``: Arrow batch -> hmoe Batch.

    Example::

        collate = collate_fn(feature_schema(prepared_dir))
        for batch in read_split_dataset(prepared_dir, "train").iter_torch_batches(
            batch_size=256, collate_fn=collate
        ):
            logits_BK = model(batch)
    """
    from ray.data.collate_fn import ArrowBatchCollateFn

    class _BatchCollate(ArrowBatchCollateFn):
        def __call__(self, batch: pa.Table) -> dict[str, Any]:
            return to_batch(batch, schema)

    return _BatchCollate()
