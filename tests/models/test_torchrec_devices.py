"""The ``torchrec`` backend's device handling, checked on CPU: the fused optimizer each
``table_optimizer`` maps to (in FBGEMM's terms), and placing tables on another device by
rebuilding their collection with the same weights.

The CUDA kernels themselves run only on a GPU (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import pytest
import torch

from hmoe.models.embeddings import TABLE_OPTIMIZERS, FusedTableSettings
from hmoe.models.testing import random_batch, tiny_schema

torchrec = pytest.importorskip(
    "torchrec", reason="TorchRec/FBGEMM not installed (make venv installs the CPU pair)"
)

DIM = 6  # FBGEMM stores 8 columns: two alignment columns


def test_every_table_optimizer_maps_to_its_fbgemm_kernel_with_its_lr() -> None:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.modules.fused_embedding_modules import convert_optimizer_type_and_kwargs

    from hmoe.models.torchrec_tables import _optimizer

    expected = {
        "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        "sgd": EmbOptimType.EXACT_SGD,
        "adagrad": EmbOptimType.EXACT_ADAGRAD,
        "adam": EmbOptimType.ADAM,
    }
    assert set(expected) == set(TABLE_OPTIMIZERS)
    for name, kind in expected.items():
        settings = FusedTableSettings(optimizer=name, lr=0.02, eps=1e-6)
        converted = convert_optimizer_type_and_kwargs(*_optimizer(settings, 2.0))
        assert converted is not None, name
        emb_type, kwargs = converted
        assert emb_type == kind
        # only row-wise Adagrad averages over the stored width, so only it is rescaled
        scale = 2.0**-0.5 if name == "rowwise_adagrad" else 1.0
        assert kwargs["learning_rate"] == pytest.approx(0.02 * scale)
        if name != "sgd":
            assert kwargs["eps"] == pytest.approx(1e-6 * scale)


def test_a_cuda_only_optimizer_names_the_device_when_built_on_cpu() -> None:
    from hmoe.config import ConfigError
    from hmoe.models.embeddings import CPU_TABLE_OPTIMIZERS
    from hmoe.models.torchrec_tables import TorchRecIdTables

    for name in TABLE_OPTIMIZERS:
        settings = FusedTableSettings(optimizer=name)
        if name in CPU_TABLE_OPTIMIZERS:
            TorchRecIdTables(tiny_schema(), DIM, "mean", 0.01, settings)
            continue
        with pytest.raises(ConfigError, match=f"table_optimizer='{name}' on cpu"):
            TorchRecIdTables(tiny_schema(), DIM, "mean", 0.01, settings)


def test_placing_tables_rebuilds_the_kernel_with_the_same_weights(monkeypatch) -> None:
    from hmoe.models import torchrec_tables
    from hmoe.models.torchrec_tables import TorchRecIdTables, place_fused_tables

    schema = tiny_schema()
    torch.manual_seed(0)
    tables = TorchRecIdTables(schema, DIM, "mean", 0.01, FusedTableSettings(l2=0.1))
    holder = torch.nn.Sequential(tables)
    batch = random_batch(schema, 5, torch.Generator().manual_seed(1))
    before = tables.collection
    place_fused_tables(holder, torch.device("cpu"))  # already there: untouched
    assert tables.collection is before
    with torch.no_grad():
        expected = tables.eval()(batch)
    weights = {c.name: tables.table(c.name).clone() for c in schema.categorical}

    # another device: a new collection built there (meta: no data, but a real rebuild)
    place_fused_tables(holder, torch.device("meta"))
    assert tables.collection is not before and tables.device.type == "meta"
    assert type(tables.collection) is type(before)

    # the same rebuild on CPU (as if it were another device): same weights, alignment columns
    # zero, same outputs, a fresh optimizer of the same kind
    monkeypatch.setattr(torchrec_tables, "_same_device", lambda a, b: False)
    tables.collection = before
    tables.place(torch.device("cpu"))
    assert tables.collection is not before
    for name, weight in weights.items():
        torch.testing.assert_close(tables.table(name), weight, rtol=0, atol=0)
        stored = tables.collection.embedding_bags[name].weight
        assert stored.shape[1] == 8 and not stored[:, DIM:].any()
    with torch.no_grad():
        torch.testing.assert_close(tables.eval()(batch), expected, rtol=0, atol=0)
    state = tables.fused_optimizer().state_dict()["state"]
    assert state and all(
        not v.any() for per_table in state.values() for v in per_table.values() if v.numel()
    )
