"""Raw logs to encoded Parquet shards (Ray Data), the dataset spec, and the prepared-data reader."""

from __future__ import annotations

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
    "data_root",
    "label_column",
    "load_spec",
    "resolve_path",
    "spec_from_dict",
]
