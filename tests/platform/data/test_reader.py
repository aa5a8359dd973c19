"""Reader: Arrow rows -> Batch tensors per the contract (no Ray), manifest errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch

from hmoe.platform.data import load_manifest, to_batch
from hmoe.schema import (
    EXPOSURE,
    LABELS,
    WEIGHT,
    CategoricalFeature,
    FeatureSchema,
    NumericFeature,
    SequenceFeature,
    seq_column,
)

SCHEMA = FeatureSchema(
    categorical=(
        CategoricalFeature(name="item", vocab_size=10),
        CategoricalFeature(name="tags", vocab_size=5, multi_valued=True, max_len=2),
    ),
    numeric=(NumericFeature(name="price", min_value=0.0, max_value=9.0),),
    sequences=(SequenceFeature(name="hist", max_len=3, item_field="item"),),
    tasks=("click", "buy"),
)


def _table(tags: pa.Array) -> pa.Table:
    seq = pa.FixedSizeListArray.from_arrays(pa.array([2, 3, 0, 4, 0, 0]), 3)
    return pa.table(
        {
            "item": [2, 3],
            "tags": tags,
            "price": pa.array([1.5, 2.5], pa.float32()),
            seq_column("hist", "item"): seq,
            seq_column("hist", "time_delta"): pa.FixedSizeListArray.from_arrays(
                pa.array([5.0, 1.0, 0.0, 2.0, 0.0, 0.0], pa.float32()), 3
            ),
            seq_column("hist", "length"): [2, 1],
            "label__click": pa.array([1.0, 0.0], pa.float32()),
            "label__buy": pa.array([0.0, 1.0], pa.float32()),
            WEIGHT: pa.array([1.0, 2.0], pa.float32()),
            EXPOSURE: pa.array([0.0, 3.0], pa.float32()),
        }
    )


@pytest.mark.parametrize(
    "tags",
    [
        pa.FixedSizeListArray.from_arrays(pa.array([2, 3, 4, 0]), 2),
        pa.array([[2, 3], [4, 0]], pa.list_(pa.int64())),
    ],
)
def test_to_batch_shapes_and_dtypes(tags: pa.Array) -> None:
    batch = to_batch(_table(tags), SCHEMA)
    assert batch["item"].dtype == torch.long and batch["item"].shape == (2,)
    assert batch["tags"].tolist() == [[2, 3], [4, 0]]
    assert batch["price"].dtype == torch.float32
    assert batch[seq_column("hist", "item")].tolist() == [[2, 3, 0], [4, 0, 0]]
    assert batch[seq_column("hist", "time_delta")].dtype == torch.float32
    assert batch[seq_column("hist", "length")].tolist() == [2, 1]
    assert batch[LABELS].tolist() == [[1.0, 0.0], [0.0, 1.0]]  # [B, K] in schema.tasks order
    assert batch[WEIGHT].tolist() == [1.0, 2.0] and batch[EXPOSURE].tolist() == [0.0, 3.0]
    batch["item"][0] = 7  # tensors own writable memory


def test_ragged_lists_are_rejected() -> None:
    with pytest.raises(ValueError, match="lengths"):
        to_batch(_table(pa.array([[2, 3], [4]], pa.list_(pa.int64()))), SCHEMA)


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        load_manifest(tmp_path)
