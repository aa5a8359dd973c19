"""Raw logs to encoded Parquet shards (Ray Data), the dataset spec, and the prepared-data reader.

``prepare(spec, out_dir)`` writes a prepared directory (``manifest.json`` + Parquet shards per
split); ``load_manifest`` / ``feature_schema`` / ``read_split_dataset`` / ``iter_batches`` read
it back as the Batches of ``hmoe.schema``. Heavy dependencies (Ray) load on first use.
"""

from __future__ import annotations

from hmoe.platform.data.fetch import FetchError, fetch
from hmoe.platform.data.prepare import prepare
from hmoe.platform.data.reader import (
    batch_columns,
    collate_fn,
    feature_schema,
    iter_batches,
    load_manifest,
    read_split_dataset,
    read_split_table,
    shard_paths,
    to_batch,
    verify_shards,
)
from hmoe.platform.data.spec import (
    DatasetSpec,
    data_root,
    label_column,
    load_spec,
    resolve_path,
    spec_from_dict,
)

__all__ = [
    "DatasetSpec",
    "FetchError",
    "batch_columns",
    "collate_fn",
    "data_root",
    "feature_schema",
    "fetch",
    "iter_batches",
    "label_column",
    "load_manifest",
    "load_spec",
    "prepare",
    "read_split_dataset",
    "read_split_table",
    "resolve_path",
    "shard_paths",
    "spec_from_dict",
    "to_batch",
    "verify_shards",
]
