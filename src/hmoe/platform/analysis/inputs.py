"""What the analyses read from a prepared dataset: a few columns streamed from the shards, the
fitted vocabularies, and the planted correlation a ``hmoe data synth`` output ships with.

Only the columns an analysis needs are read, shard by shard, ``read_batch_rows`` rows at a time,
so a large split never has to fit in memory.

Legend for shape suffixes: ``N`` rows, ``L`` sequence, ``C`` categories, ``P`` positions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmoe.platform.data.reader import load_manifest, shard_paths
from hmoe.platform.data.spec import label_column
from hmoe.platform.data.vocab import FIRST_INDEX  # ids 0 and 1 are padding and OOV
from hmoe.schema import METRIC_SPLITS, FeatureSchema

__all__ = [
    "PLANTED_MATRIX",
    "PLANTED_META",
    "PlantedCorrelation",
    "iter_columns",
    "load_planted",
    "raw_values",
    "resolve_label",
]

PLANTED_MATRIX = "planted_correlation.npy"
PLANTED_META = "planted_correlation.json"
VOCAB_DIR = "vocab"


def resolve_label(schema: FeatureSchema, task: str | None) -> str:
    """The label column of ``task`` (default: the schema's first task)."""
    task = task if task is not None else schema.tasks[0]
    if task not in schema.tasks:
        raise ValueError(f"unknown task {task!r}; the dataset has {list(schema.tasks)}")
    return label_column(task)


def _to_numpy(column: Any) -> np.ndarray:
    """A pyarrow column as numpy; a list column (padded to one length) as ``[N, L]``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        width = int(lengths.max()) if len(lengths) else 0
        if len(lengths) and (lengths != width).any():
            raise ValueError("list columns must be padded to one length per column")
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(column), width)
    if pa.types.is_fixed_size_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(column), column.type.list_size)
    return column.to_numpy(zero_copy_only=False)


def iter_columns(
    data_dir: str | Path, splits: Sequence[str], columns: Sequence[str], batch_rows: int
) -> Iterator[dict[str, np.ndarray]]:
    """``{column: array}`` chunks of the given splits' shards (``train``, ``val``, ``test``),
    in the manifest's shard order."""
    import pyarrow.parquet as pq

    for split in splits:
        if split not in METRIC_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {sorted(METRIC_SPLITS)}")
        files = shard_paths(data_dir, METRIC_SPLITS[split])
        if not files:
            raise FileNotFoundError(f"split {split!r} of {data_dir} has no shard")
        for path in files:
            shard = pq.ParquetFile(path)
            missing = sorted(set(columns) - set(shard.schema_arrow.names))
            if missing:
                raise ValueError(f"{path} lacks the columns {missing}")
            for record_batch in shard.iter_batches(batch_size=batch_rows, columns=list(columns)):
                yield {name: _to_numpy(record_batch.column(name)) for name in columns}


def raw_values(data_dir: str | Path, field: str) -> tuple[str, ...] | None:
    """The raw value of every fitted id of ``field`` in index order (id ``FIRST_INDEX + i``),
    or ``None`` when the field's vocabulary stores no values (hash / identity)."""
    import pyarrow.parquet as pq

    path = Path(data_dir) / VOCAB_DIR / f"{field}.parquet"
    if not path.is_file():
        return None
    return tuple(str(v) for v in pq.read_table(path).column("value").to_pylist())


@dataclass(frozen=True)
class PlantedCorrelation:
    """A synthetic dataset's planted effect, re-indexed to encoded category ids.

    ``matrix_VP[e, p - 1]`` is the planted logit of a behaviour of encoded category ``e`` at
    target-relative position ``p`` (1 = newest) for targets of encoded category
    ``target_category``.
    """

    target_category: int
    matrix_VP: np.ndarray

    def grid(self, categories: Sequence[int], num_positions: int) -> np.ndarray:
        """``[C, P]`` for the given encoded categories (positions beyond the plant are 0)."""
        out = np.zeros((len(categories), num_positions))
        width = min(num_positions, self.matrix_VP.shape[1])
        out[:, :width] = self.matrix_VP[list(categories), :width]
        return out


def load_planted(data_dir: str | Path, category_field: str) -> PlantedCorrelation | None:
    """The planted correlation of the synth output the dataset was prepared from, or ``None``
    (not a synth dataset, or the category vocabulary has no stored values to map raw ids)."""
    spec_path = load_manifest(data_dir).get("spec_path")
    if not spec_path:
        return None
    folder = Path(spec_path).parent
    if not (folder / PLANTED_MATRIX).is_file() or not (folder / PLANTED_META).is_file():
        return None
    values = raw_values(data_dir, category_field)
    if values is None:
        return None
    raw_CP = np.load(folder / PLANTED_MATRIX)
    meta = json.loads((folder / PLANTED_META).read_text())
    encoded = {value: FIRST_INDEX + i for i, value in enumerate(values)}
    target = encoded.get(str(meta["target_category"]))
    if target is None:
        return None
    matrix_VP = np.zeros((FIRST_INDEX + len(values), raw_CP.shape[1]))
    for raw in range(raw_CP.shape[0]):
        if str(raw) in encoded:
            matrix_VP[encoded[str(raw)]] = raw_CP[raw]
    return PlantedCorrelation(target_category=target, matrix_VP=matrix_VP)
