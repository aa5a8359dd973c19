"""The ``torchrec`` embedding backend against the ``torch`` one: same outputs from the same
weights for every preset, one fused step against a plain-torch row-wise Adagrad with the
touched-row L2, training of every preset, and the export back to ``torch`` tables.

The reference optimizer below is written from the row-wise Adagrad definition (one accumulator
per row: the mean of the squared row gradient), not from FBGEMM's code.
"""

from __future__ import annotations

import dataclasses
import doctest
import subprocess
import sys

import pytest
import torch
from torch import nn

from hmoe.config import apply_overrides
from hmoe.models.losses import LossConfig, TrainWrapper, fused_table_parameters
from hmoe.models.testing import random_batch, tiny_schema
from hmoe.models.zoo import PRESETS, build, get_preset, with_embedding_backend
from hmoe.schema import PAD_INDEX, FeatureSchema, seq_column

torchrec = pytest.importorskip(
    "torchrec", reason="TorchRec/FBGEMM not installed (make venv installs the CPU pair)"
)

TWO_TASKS = ("click", "like")
LR, L2, EPS = 0.05, 0.1, 1e-8
FAST = ("debug", "dcnv2")  # every technique of the spec on; a dim that FBGEMM pads


def _schema(model_kind: str) -> FeatureSchema:
    return tiny_schema(("click",) if model_kind == "single" else TWO_TASKS)


def _pair(name: str, overrides: dict | None = None) -> tuple[nn.Module, nn.Module, FeatureSchema]:
    """A ``torch``-backend model and its ``torchrec`` copy (same weights), eval mode."""
    config = apply_overrides(
        get_preset(name).model,
        (overrides or {}) | {"use_compile": False, "embedding.backend": "torch"},
    )
    schema = _schema(config.kind)
    torch.manual_seed(0)
    reference = build(config, schema).eval()
    return reference, with_embedding_backend(reference, "torchrec"), schema


def test_sum_pooling_and_an_all_padding_bag_match() -> None:
    reference, fused, schema = _pair("debug", {"encoder.pooling": "sum"})
    batch = random_batch(schema, 6, torch.Generator().manual_seed(2))
    batch["tags"][3] = PAD_INDEX  # an empty multi-valued field besides row 0's
    with torch.no_grad():
        torch.testing.assert_close(fused(batch), reference(batch), rtol=0, atol=1e-6)


def _touched(batch: dict, schema: FeatureSchema, use_category: bool) -> dict[str, torch.Tensor]:
    """Per id table, the distinct non-padding ids the batch looks up in it."""
    columns = {c.name: [c.name] for c in schema.categorical}
    for q in schema.sequences:
        columns[q.item_field].append(seq_column(q.name, "item"))
        if q.category_field is not None and use_category:
            columns[q.category_field].append(seq_column(q.name, "category"))
    out = {}
    for table, names in columns.items():
        ids = torch.cat([batch[n].reshape(-1) for n in names]).unique()
        out[table] = ids[ids != PAD_INDEX]
    return out


@pytest.mark.parametrize(
    ("name", "optimizer"),
    [("hmoe", "rowwise_adagrad"), ("dcnv2", "rowwise_adagrad"), ("debug", "sgd")],
)
def test_one_step_moves_touched_rows_as_rowwise_adagrad_with_l2(name: str, optimizer: str) -> None:
    """Reference in plain torch: touched rows decay by ``1 - 2 lr l2``; the loss's gradient
    at the decayed weights; then ``G = mean(g^2)``, ``w -= lr g / (sqrt(G) + eps)`` (sgd:
    ``w -= lr g``). dcnv2's dim 10 is stored 12 wide: the accumulator must still average 10."""
    tables = {
        "embedding.backend": "torchrec",
        "embedding.table_optimizer": optimizer,
        "embedding.table_lr": LR,
        "embedding.table_l2": L2,
        "embedding.table_eps": EPS,
    }
    reference, _, schema = _pair(name)
    fused = with_embedding_backend(
        build(apply_overrides(reference.config, tables), schema), "torchrec"
    )
    fused.load_state_dict(with_embedding_backend(reference, "torchrec").state_dict())
    batch = random_batch(schema, 16, torch.Generator().manual_seed(1))
    touched = _touched(batch, schema, reference.config.encoder.sequence.use_category)
    before = [{t: e.id_table(t).detach().clone() for t in touched} for e in fused.encoders]
    with torch.no_grad():
        for encoder in reference.encoders:
            for table, rows in touched.items():
                encoder.id_table(table)[rows] *= 1.0 - 2.0 * LR * L2
    reference.train(), fused.train()
    for model in (reference, fused):
        torch.manual_seed(5)  # the same dropout masks
        model(batch).square().sum().backward()
    for s, (ref_encoder, encoder) in enumerate(
        zip(reference.encoders, fused.encoders, strict=True)
    ):
        for table, rows in touched.items():
            weight, grad = ref_encoder.id_table(table).detach(), ref_encoder.id_table(table).grad
            accumulator = grad[rows].square().mean(dim=1, keepdim=True)
            scale = 1.0 if optimizer == "sgd" else accumulator.sqrt() + EPS
            expected = weight[rows] - LR * grad[rows] / scale
            got = encoder.id_table(table).detach()
            torch.testing.assert_close(got[rows], expected, rtol=1e-5, atol=1e-7)
            untouched = torch.ones(got.shape[0], dtype=torch.bool)
            untouched[rows] = False
            assert torch.equal(got[untouched], before[s][table][untouched])
            assert not torch.equal(got[rows], before[s][table][rows])


@pytest.mark.parametrize(
    "name",
    [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(PRESETS)],
)
def test_every_preset_matches_torch_trains_and_exports_to_torch_tables(name: str) -> None:
    """From the same weights: equal logits, per-set tables (what the analysis reads) and
    sequence attention (the tiny schema has padded multi-valued ids, a sequence with item and
    category, AME sets of unequal dim; dcnv2's dim 10 exercises the 4-aligned stored width).
    Then three steps with the dense Adam beside the fused tables: the loss stays finite, the
    tables move (FBGEMM) and so do the dense weights (Adam); the ``torch`` copy predicts the
    same logits."""
    reference, fused, schema = _pair(name)
    assert fused_table_parameters(fused) and not fused_table_parameters(reference)
    batch = random_batch(schema, 6, torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fused(batch), reference(batch), rtol=0, atol=1e-6)
        for ours, theirs in zip(
            fused.embedding_tables(), reference.embedding_tables(), strict=True
        ):
            assert ours.keys() == theirs.keys()
            for key in ours:
                torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
        for ours, theirs in zip(
            fused.attention_weights(batch), reference.attention_weights(batch), strict=True
        ):
            for key in ours:
                torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6)

    wrapper = TrainWrapper(fused, LossConfig(), tasks=schema.tasks)
    groups = wrapper.param_groups(weight_decay=0.0)
    fused_ids = {id(p) for p in fused_table_parameters(fused)}
    assert not fused_ids & {id(p) for g in groups for p in g["params"]}
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    table_before = fused.encoders[0].id_table(schema.categorical[0].name).detach().clone()
    dense = next(p for g in groups for p in g["params"])
    dense_before = dense.detach().clone()
    fused.train()
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        loss, _ = wrapper(random_batch(schema, 16, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert not torch.equal(fused.encoders[0].id_table(schema.categorical[0].name), table_before)
    assert not torch.equal(dense.detach(), dense_before)
    exported = with_embedding_backend(fused, "torch")
    assert not fused_table_parameters(exported)
    assert exported.config.embedding == dataclasses.replace(fused.config.embedding, backend="torch")
    fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(batch), fused(batch), rtol=0, atol=1e-6)


def test_table_knobs_are_read_only_with_torchrec_and_missing_torchrec_is_one_clear_error():
    from hmoe.config import ConfigError
    from hmoe.models import torchrec_tables

    result = doctest.testmod(torchrec_tables)
    assert result.attempted > 0 and result.failed == 0
    with pytest.raises(ConfigError, match="must be < 1"):
        apply_overrides(
            get_preset("debug").model,
            {"embedding.backend": "torchrec", "embedding.table_lr": 1.0, "embedding.table_l2": 0.5},
        )

    with pytest.raises(ConfigError, match=r"read only with embedding\.backend='torchrec'"):
        apply_overrides(
            get_preset("debug").model, {"embedding.backend": "torch", "embedding.table_lr": 0.1}
        )
    with pytest.raises(ConfigError, match=r"use_compile=true needs model\.embedding\.backend"):
        apply_overrides(
            get_preset("debug").model, {"embedding.backend": "torchrec", "use_compile": True}
        )
    # a process where TorchRec cannot be imported: the torch backend builds, torchrec names
    # both ways out
    code = (
        "import sys; sys.modules['torchrec'] = None\n"
        "from hmoe.config import ConfigError, apply_overrides\n"
        "from hmoe.models.testing import tiny_schema\n"
        "from hmoe.models.zoo import build, get_preset\n"
        "config = apply_overrides(get_preset('debug').model, {'embedding.backend': 'torch'})\n"
        "build(config, tiny_schema())\n"
        "try:\n"
        "    build(apply_overrides(config, {'embedding.backend': 'torchrec'}), tiny_schema())\n"
        "except ConfigError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "pip install --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0" in out.stdout
    assert "model.embedding.backend=torch" in out.stdout


def test_gradient_conflict_monitor_reads_a_torchrec_model_without_updating_its_tables():
    """The per-epoch monitor differentiates each task's loss: with fused tables that must not
    run FBGEMM's backward (it would update the rows)."""
    from hmoe.platform.analysis.access import shared_parameters
    from hmoe.platform.analysis.entanglement import gradient_conflict_metrics

    _, fused, schema = _pair("mmoe")
    # no zero-filled gradient of every table either: they are not among the shared parameters
    fused_ids = {id(p) for p in fused_table_parameters(fused)}
    assert not fused_ids & {id(p) for p in shared_parameters(fused)}
    before = [t.clone() for t in fused.embedding_tables()[0].values()]
    wrapper = TrainWrapper(fused, LossConfig(), tasks=schema.tasks).train()
    metrics = gradient_conflict_metrics(wrapper, random_batch(schema, 16, torch.Generator()))
    assert metrics and all(-1.0 <= v <= 1.0 for v in metrics.values())
    for old, new in zip(before, fused.embedding_tables()[0].values(), strict=True):
        assert torch.equal(old, new)
