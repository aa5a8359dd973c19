"""The single-task heterogeneous multi-embedding MoE ranker and ModelConfig validation."""

from __future__ import annotations

import pytest
import torch

from hmoe.config import ConfigError, apply_overrides
from hmoe.models.combine import CombineConfig
from hmoe.models.experts import ExpertsConfig
from hmoe.models.losses import TrainWrapper
from hmoe.models.ranker import (
    EmbeddingSetsConfig,
    HeteroMoERanker,
    ModelConfig,
    assign_sets,
    schema_groups,
)
from hmoe.models.testing import random_batch, tiny_schema
from hmoe.models.zoo import get_preset
from hmoe.schema import LABELS
from tests.models.learning import BACKENDS, backward_and_check_every_parameter_learns

BATCH = 6
# use_compile and use_sparse_gradients are options of the torch backend's tables
TORCH_TABLES = {"embedding.backend": "torch"}


def _batch(schema, seed: int = 0, size: int = BATCH):
    return random_batch(schema, size, torch.Generator().manual_seed(seed))


def _debug_model(schema=None, **overrides) -> HeteroMoERanker:
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("debug").model, overrides) if overrides else None
    return HeteroMoERanker(cfg or get_preset("debug").model, schema or tiny_schema())


def test_output_shape_one_and_two_tasks():
    for tasks in (("click",), ("click", "like")):
        schema = tiny_schema(tasks=tasks)
        logits = _debug_model(schema)(_batch(schema))
        assert logits.shape == (BATCH, len(tasks))
        assert torch.isfinite(logits).all()


def test_one_embedding_set_and_one_expert():
    model = _debug_model(
        **{"embedding.assignment": "shared", "experts.counts": {"mlp": 1}},
    )
    assert model.num_sets == 1 and model.expert_kinds == ("mlp",)
    assert model(_batch(tiny_schema())).shape == (BATCH, 1)
    assert model.gate_weights(_batch(tiny_schema())).shape == (BATCH, 1, 1)


@pytest.mark.parametrize(
    ("assignment", "expert_sets", "expected"),
    [
        ("per_expert", (), (0, 1, 2, 3)),
        ("per_kind", (), (0, 0, 1, 2)),
        ("by_interaction", (), (0, 0, 1, 1)),
        ("shared", (), (0, 0, 0, 0)),
        ("explicit", (1, 0, 1, 0), (1, 0, 1, 0)),
    ],
)
def test_assign_sets(assignment, expert_sets, expected):
    kinds = ("gwpfm", "gwpfm", "dcnv2", "mlp")
    cfg = EmbeddingSetsConfig(assignment=assignment, expert_sets=expert_sets)
    assert assign_sets(kinds, cfg) == expected


def test_explicit_assignment_length_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="expert_sets has 2 entries for 5 experts"):
        _debug_model(**{"embedding.assignment": "explicit", "embedding.expert_sets": [0, 1]})


def test_set_dims_per_set_and_gwpfm_parts():
    schema = tiny_schema()
    groups = len(schema_groups(schema))
    model = _debug_model(**{"embedding.set_dims": [2, 3, 4, 5, 6]})
    dims = [encoder.embedding_dim for encoder in model.encoders]
    # the first set feeds GwPFM: one part per field group
    assert dims == [2 * groups, 3, 4, 5, 6]
    tokens = model.set_tokens(_batch(schema))
    assert [t.shape[2] for t in tokens] == dims
    with pytest.raises(ConfigError, match="set_dims has 2 entries but the model has 5"):
        _debug_model(**{"embedding.set_dims": [2, 3]})


def test_an_expert_only_reads_its_own_set():
    schema = tiny_schema()
    model = _debug_model(schema)
    batch = _batch(schema)
    for e, own in enumerate(model.expert_sets):
        model.zero_grad(set_to_none=True)
        outputs = model.expert_outputs(model.set_tokens(batch))
        outputs[e].square().sum().backward()
        for s, encoder in enumerate(model.encoders):
            touched = any(
                p.grad is not None and bool(p.grad.abs().sum() > 0) for p in encoder.parameters()
            )
            assert touched == (s == own), (e, s)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_parameter_learns_from_a_step(backend):
    schema = tiny_schema(tasks=("click", "like"))
    model = _debug_model(schema, **{"embedding.backend": backend})
    loss, _ = TrainWrapper(model, get_preset("debug").loss)(_batch(schema))
    backward_and_check_every_parameter_learns(model, loss)


def test_forward_equals_a_slow_loop_reference():
    schema = tiny_schema(tasks=("click", "like"))
    model = _debug_model(schema).eval()
    batch = _batch(schema)
    with torch.no_grad():
        logits = model(batch)
        tokens = [encoder(batch) for encoder in model.encoders]
        weights_BE = model.gate_weights(batch)[:, 0]
        expected = torch.zeros_like(logits)
        for b in range(BATCH):
            mixture = 0.0
            for e, expert in enumerate(model.experts):
                own = tokens[model.expert_sets[e]][b : b + 1]
                output = model.combiner.projections[e](expert(own))  # debug projects to 8
                mixture = mixture + weights_BE[b, e] * output[0]
            for k, tower in enumerate(model.towers):
                expected[b, k] = tower(mixture.unsqueeze(0))[0, 0]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


def test_gate_weights_are_a_distribution_over_experts():
    model = _debug_model()
    weights = model.gate_weights(_batch(tiny_schema()))
    assert weights.shape == (BATCH, 1, len(model.experts))
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(BATCH, 1))
    mean_model = _debug_model(**{"combine.method": "mean"})
    weights = mean_model.gate_weights(_batch(tiny_schema()))
    torch.testing.assert_close(weights, torch.full_like(weights, 1.0 / len(model.experts)))


def test_expert_input_gates_match_vector_gates_in_shape():
    model = _debug_model(**{"combine.gate_source": "expert_inputs"})
    assert model(_batch(tiny_schema())).shape == (BATCH, 1)
    assert len(model.gate_inputs(model.set_tokens(_batch(tiny_schema())))) == len(model.experts)


def test_analysis_methods():
    schema = tiny_schema()
    model = _debug_model(schema)
    batch = _batch(schema)
    attention = model.attention_weights(batch)
    assert len(attention) == model.num_sets
    history = attention[0]["history"]
    assert history.shape == (BATCH, schema.sequences[0].max_len)
    assert bool((history[0] == 0).all())  # row 0 has an all-padding history
    tables = model.embedding_tables()
    assert len(tables) == model.num_sets
    assert tables[1]["user"].shape == (12, model.encoders[1].embedding_dim)
    assert "history" in model.temporal_tables()[0]
    assert model.set_names == tuple(f"set{s}" for s in range(model.num_sets))


def test_seeded_builds_are_identical_and_batches_change_the_output():
    schema = tiny_schema()
    first, second = _debug_model(schema).eval(), _debug_model(schema).eval()
    batch = _batch(schema)
    torch.testing.assert_close(first(batch), second(batch))
    assert not torch.allclose(first(batch), first(_batch(schema, seed=1)))


def test_labels_are_not_read_by_the_model():
    schema = tiny_schema()
    model = _debug_model(schema).eval()
    batch = _batch(schema)
    flipped = dict(batch, **{LABELS: 1.0 - batch[LABELS]})
    torch.testing.assert_close(model(batch), model(flipped))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "single", "shared_experts": ExpertsConfig()}, "shared_experts is required"),
        ({"kind": "stem"}, "shared_experts is required"),
        ({"kind": "mmoe", "auxiliary_tasks": ("like",)}, "auxiliary_tasks is read only"),
        (
            {
                "kind": "stem",
                "shared_experts": ExpertsConfig(),
                "embedding": EmbeddingSetsConfig(assignment="explicit", expert_sets=(0, 0)),
            },
            "explicit",
        ),
        (
            {
                "kind": "stem",
                "shared_experts": ExpertsConfig(),
                "combine": CombineConfig(gate_source="expert_inputs"),
            },
            "gate_source='vector'",
        ),
        ({"kind": "ame", "embedding": EmbeddingSetsConfig(assignment="shared")}, "AME needs"),
    ],
)
def test_model_config_validation(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**fields)


def test_embedding_sets_config_validation():
    with pytest.raises(ConfigError, match="expert_sets is read only"):
        EmbeddingSetsConfig(expert_sets=(0, 1))
    with pytest.raises(ConfigError, match=r"every set 0\.\.S-1"):
        EmbeddingSetsConfig(assignment="explicit", expert_sets=(0, 2))
    with pytest.raises(ConfigError, match=">= 1"):
        EmbeddingSetsConfig(embedding_dim=0)


def test_ranker_refuses_a_multitask_kind():
    cfg = ModelConfig(kind="mmoe")
    with pytest.raises(ConfigError, match=r"use zoo\.build"):
        HeteroMoERanker(cfg, tiny_schema())


def test_sparse_gradients_give_the_same_model_with_sparse_id_table_gradients():
    """A ``torch``-backend option (the ``torchrec`` tables update only their touched rows
    anyway, and refuse it: ``test_torchrec_refuses_compile_and_sparse_gradients``)."""
    schema = tiny_schema()
    batch = _batch(schema)
    dense = _debug_model(schema, **TORCH_TABLES).eval()
    sparse = _debug_model(schema, use_sparse_gradients=True, **TORCH_TABLES).eval()
    torch.testing.assert_close(dense(batch), sparse(batch))
    assert dense.sparse_parameters() == []
    tables = sparse.sparse_parameters()
    assert len(tables) == sparse.num_sets * len(schema.categorical)
    assert len(tables) + len(sparse.dense_parameters()) == len(list(sparse.parameters()))
    sparse(batch).sum().backward()
    assert all(p.grad is not None and p.grad.is_sparse for p in tables)
    user_table = sparse.encoders[0].embedding_tables()["user"]
    torch.optim.SparseAdam(tables, lr=0.1).step()
    moved = (sparse.encoders[0].embedding_tables()["user"] != user_table).any(dim=1)
    assert set(moved.nonzero().flatten().tolist()) == set(batch["user"].tolist())


def test_compile_flag_wraps_the_model_lazily():
    from hmoe.models.zoo import build

    cfg = apply_overrides(get_preset("debug").model, {"use_compile": True, **TORCH_TABLES})
    model = build(cfg, tiny_schema())
    assert isinstance(model._orig_mod, HeteroMoERanker)  # compiled on the first call only
    assert model.tasks == ("click",)  # attributes reach the wrapped ranker


@pytest.mark.parametrize("option", ["use_compile", "use_sparse_gradients"])
def test_torchrec_refuses_compile_and_sparse_gradients(option):
    """One error naming the option and the backend setting that allows it."""
    with pytest.raises(ConfigError, match=rf"model\.{option}=true needs model\.embedding\.backend"):
        _debug_model(**{"embedding.backend": "torchrec", option: True})
