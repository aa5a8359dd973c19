"""FeatureEncoder (one embedding set) and the testing helpers it is exercised with."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hmoe.config import apply_overrides
from hmoe.models.features import FeatureEncoder, FeatureEncoderConfig
from hmoe.models.testing import criteo_like_schema, ml100k_like_schema, random_batch, tiny_schema
from hmoe.schema import (
    EXPOSURE,
    LABELS,
    WEIGHT,
    CategoricalFeature,
    FeatureSchema,
    SequenceFeature,
    seq_column,
)

D = 8
SEQUENCE_VARIANTS = {
    "tim": {},
    "tim_code": {"sequence": {"kind": "tim", "tim": {"form": "code"}}},
    "tim_interval": {"sequence": {"kind": "tim", "tim": {"time_intervals": {}}}},
    "din": {"sequence": {"kind": "din", "tim": None}},
    "din_plus": {"sequence": {"kind": "din_plus", "tim": None}},
    "sasrec": {"sequence": {"kind": "sasrec", "tim": None, "sasrec": {"num_heads": 2}}},
    "mean": {"sequence": {"kind": "mean", "tim": None}},
}
TINY_FIELDS = (
    ("user", "user"),
    ("item", "item"),
    ("category", "item"),
    ("tags", "item"),
    ("hour", "context"),
    ("age", "user"),
    ("price", "item"),
    ("ctr", "context"),
    ("user_item_sim", "context"),
)


def _config(variant: str = "tim") -> FeatureEncoderConfig:
    return FeatureEncoderConfig.from_dict(SEQUENCE_VARIANTS[variant])


def _encoder(config: FeatureEncoderConfig, schema: FeatureSchema | None = None, dim: int = D):
    torch.manual_seed(0)
    return FeatureEncoder(config, schema or tiny_schema(), embedding_dim=dim)


def _batch(schema: FeatureSchema | None = None, size: int = 6, seed: int = 0):
    return random_batch(schema or tiny_schema(), size, torch.Generator().manual_seed(seed))


def test_field_names_groups_and_count() -> None:
    encoder = _encoder(_config())
    assert encoder.field_names == (*(n for n, _ in TINY_FIELDS), "history")
    assert encoder.field_groups == (*(g for _, g in TINY_FIELDS), "user")
    assert encoder.num_fields == 10
    code = _encoder(_config("tim_code"))
    assert code.field_names[-3:] == ("history", "history.target", "history.product")
    assert _encoder(_config("din_plus")).field_names[-2:] == ("history", "history.product")


@pytest.mark.parametrize("variant", list(SEQUENCE_VARIANTS))
@pytest.mark.parametrize("schema_fn", [tiny_schema, ml100k_like_schema])
def test_forward_shape_finite_and_every_parameter_gradient(variant: str, schema_fn) -> None:
    schema = schema_fn()
    encoder = _encoder(_config(variant), schema)
    tokens = encoder(_batch(schema))
    assert tokens.shape == (6, encoder.num_fields, D)
    assert len(encoder.field_names) == len(encoder.field_groups) == encoder.num_fields
    assert torch.isfinite(tokens).all()
    tokens.pow(2).sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_criteo_like_schema_encodes_39_fields() -> None:
    schema = criteo_like_schema(max_vocab=50)
    tokens = _encoder(_config(), schema)(_batch(schema))
    assert tokens.shape == (6, 39, D) and torch.isfinite(tokens).all()


def test_single_field_schema() -> None:
    schema = FeatureSchema(categorical=(CategoricalFeature(name="x", vocab_size=5),))
    encoder = _encoder(_config(), schema)
    assert encoder(_batch(schema)).shape == (6, 1, D)
    assert encoder.field_groups == ("default",)


def test_schema_without_feature_is_an_error() -> None:
    with pytest.raises(ValueError, match="no feature"):
        FeatureEncoder(_config(), FeatureSchema(), embedding_dim=D)
    with pytest.raises(ValueError, match="embedding_dim"):
        FeatureEncoder(_config(), tiny_schema(), embedding_dim=0)


def test_missing_batch_column_is_named() -> None:
    batch = _batch()
    del batch[seq_column("history", "time_delta")]
    with pytest.raises(ValueError, match="history__time_delta"):
        _encoder(_config())(batch)


@pytest.mark.parametrize("variant", list(SEQUENCE_VARIANTS))
def test_all_padding_batch_is_finite_with_finite_gradients(variant: str) -> None:
    batch = _batch()
    batch[seq_column("history", "length")].zero_()
    for part in ("item", "category", "time_delta", "similarity"):
        batch[seq_column("history", part)].zero_()
    batch["tags"].zero_()
    encoder = _encoder(_config(variant))
    tokens = encoder(batch)
    assert torch.isfinite(tokens).all()
    if variant in ("tim", "din", "din_plus", "mean", "sasrec"):
        assert torch.equal(tokens[:, 9:], torch.zeros_like(tokens[:, 9:]))
    assert torch.equal(tokens[:, 3], torch.zeros(6, D))  # empty multi-valued field
    tokens.sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_sequence_reads_the_sets_own_item_and_category_tables() -> None:
    schema = tiny_schema()
    encoder = _encoder(_config("mean"))
    batch = _batch()
    before = encoder(batch)
    item = encoder.categorical[1]  # "item": the sequence's item_field
    touched = int(batch[seq_column("history", "item")][3, 0])
    with torch.no_grad():
        item.table.weight[touched] += 1.0
    after = encoder(batch)
    assert not torch.allclose(before[3, 9], after[3, 9])  # the history token moved
    tables = [n for n, _ in encoder.named_parameters() if n.startswith("categorical")]
    assert len(tables) == len(schema.categorical)  # no second item table for the sequence
    with_category = _encoder(_config())(batch)
    without = FeatureEncoderConfig.from_dict(
        {"sequence": {"use_category": False, "use_similarity": False}}
    )
    plain = _encoder(without)
    assert len(plain.side_similarity) == 0
    assert not torch.allclose(with_category[:, 9], plain(batch)[:, 9])


def test_two_sets_are_independent_and_may_differ_in_dim() -> None:
    small, large = _encoder(_config(), dim=4), _encoder(_config(), dim=12)
    batch = _batch()
    assert small(batch).shape[-1] == 4 and large(batch).shape[-1] == 12
    small_ids = {id(p) for p in small.parameters()}
    assert not small_ids & {id(p) for p in large.parameters()}


@pytest.mark.parametrize(
    ("similarity", "expected"),
    [("mnse", [-0.0651, -0.3321, -4.7137]), ("bucket", [0.9215, 1.2252, -1.9930])],
)
def test_seeded_reference_values(similarity: str, expected: list[float]) -> None:
    levels = {"mnse": 1024, "bucket": 20}[similarity]
    config = apply_overrides(
        _config(),
        {"init_std": 0.3, "similarity.kind": similarity, "similarity.num_levels": levels},
    )
    tokens = _encoder(config, dim=4)(_batch(size=3, seed=5))
    # seed 0; the bucket table's values are the ones from before MNSE became the default
    torch.testing.assert_close(tokens.sum(dim=(1, 2)), torch.tensor(expected), atol=1e-4, rtol=0)


def test_embedding_tables_and_temporal_tables() -> None:
    encoder = _encoder(_config())
    tables = encoder.embedding_tables()
    assert list(tables) == list(encoder.field_names[:9])
    assert tables["user"].shape == (12, D) and torch.equal(tables["user"][0], torch.zeros(D))
    assert tables["age"].shape == (71, D)  # integer mapping: levels 0..70
    assert tables["price"].shape == (1024, D)  # scaled to num_levels
    assert tables["ctr"].shape == (5, D)  # 4 quantiles -> 5 buckets
    assert tables["user_item_sim"].shape == (1024, D)  # MNSE: the token of every level
    table = {"similarity.kind": "bucket", "similarity.num_levels": 20}
    buckets = _encoder(apply_overrides(_config(), table))
    assert buckets.embedding_tables()["user_item_sim"].shape == (20, D)
    batch = _batch()
    tokens = encoder(batch)
    level = int(encoder.numeric[0].mapping(batch["age"])[2])
    torch.testing.assert_close(tokens[2, 5], tables["age"][level])
    assert encoder.temporal_tables()["history"].shape == (7, D)  # target + positions 1..6
    assert _encoder(_config("din")).temporal_tables() == {}


def test_attention_weights() -> None:
    encoder = _encoder(_config())
    batch = _batch()
    alpha = encoder.attention_weights(batch)["history"]
    lengths = batch[seq_column("history", "length")]
    assert alpha.shape == (6, 6)
    expected_sums = (lengths > 0).float()
    torch.testing.assert_close(alpha.sum(dim=1), expected_sums)


def _numeric_leaves(data: dict, prefix: str = ""):
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _numeric_leaves(value, f"{path}.")
        elif _is_number(value) or (isinstance(value, list) and value and all(map(_is_int, value))):
            yield path, value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _perturbed(path: str, value):
    if path.endswith("num_heads"):
        return value * 2  # must keep dividing D
    if isinstance(value, list):
        return [v + 1 for v in value]
    if isinstance(value, int):
        return value + 1
    return value * 2.0 if value else 0.1


def _signature(config: FeatureEncoderConfig) -> tuple[torch.Tensor, int]:
    encoder = _encoder(config)
    torch.manual_seed(1)  # same dropout masks for both configs
    tokens = encoder(_batch(seed=2)).detach()
    return tokens, sum(p.numel() for p in encoder.parameters())


@pytest.mark.parametrize("variant", ["tim", "tim_interval", "din", "sasrec"])
def test_every_numeric_config_field_is_wired(variant: str) -> None:
    base = _config(variant)
    if variant == "din":
        base = apply_overrides(base, {"sequence.din.attention.dropout": 0.1})
    base_tokens, base_count = _signature(base)
    leaves = dict(_numeric_leaves(base.to_dict()))
    assert "init_std" in leaves and "numeric.num_levels" in leaves
    for path, value in leaves.items():
        tokens, count = _signature(apply_overrides(base, {path: _perturbed(path, value)}))
        changed = count != base_count or not torch.allclose(tokens, base_tokens)
        assert changed, f"{path} has no effect"


def test_config_round_trip() -> None:
    for variant in SEQUENCE_VARIANTS:
        config = _config(variant)
        assert FeatureEncoderConfig.from_dict(config.to_dict()) == config
        assert dataclasses.is_dataclass(config)


# --- testing helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema_fn", [tiny_schema, ml100k_like_schema, lambda: criteo_like_schema(max_vocab=100)]
)
def test_random_batch_follows_the_contract(schema_fn) -> None:
    schema = schema_fn()
    batch = _batch(schema, size=7)
    for c in schema.categorical:
        ids = batch[c.name]
        assert ids.dtype == torch.long
        assert ids.shape == ((7, c.max_len) if c.multi_valued else (7,))
        assert ids.min() >= 0 and ids.max() < c.vocab_size
        if not c.multi_valued:
            assert ids.min() >= 1
    for n in schema.numeric:
        values = batch[n.name]
        assert values.dtype == torch.float32 and values.shape == (7,)
        assert values.min() >= n.min_value and values.max() <= n.max_value
    for s in schema.similarity:
        assert batch[s.name].shape == (7,) and batch[s.name].abs().max() <= 1.0
    for q in schema.sequences:
        _check_sequence(batch, q)
    assert batch[LABELS].shape == (7, schema.num_tasks) and batch[LABELS].dtype == torch.float32
    assert batch[LABELS][0].eq(0).all() and batch[LABELS][1].eq(1).all()
    assert batch[WEIGHT].shape == (7,) and batch[EXPOSURE].shape == (7,)
    if not schema.has_weight:
        assert batch[WEIGHT].eq(1).all()
    if not schema.has_exposure:
        assert batch[EXPOSURE].eq(0).all()


def _check_sequence(batch: dict[str, torch.Tensor], q: SequenceFeature) -> None:
    lengths = batch[seq_column(q.name, "length")]
    items = batch[seq_column(q.name, "item")]
    delta = batch[seq_column(q.name, "time_delta")]
    assert lengths.dtype == torch.long and items.shape == (7, q.max_len)
    assert lengths[0] == 0 and lengths[1] == 1
    real = torch.arange(q.max_len).unsqueeze(0) < lengths.unsqueeze(1)
    assert torch.equal(items != 0, real)
    assert (delta >= 0).all() and (delta[:, :-1] >= delta[:, 1:]).all()  # oldest first
    assert torch.equal(delta[~real], torch.zeros(int((~real).sum())))
    if q.category_field is not None:
        assert torch.equal(batch[seq_column(q.name, "category")] != 0, real)
    if q.has_similarity:
        assert batch[seq_column(q.name, "similarity")].shape == (7, q.max_len)


def test_random_batch_is_deterministic_and_tasks_configurable() -> None:
    schema = tiny_schema(tasks=("click", "like"))
    first, second = _batch(schema, seed=9), _batch(schema, seed=9)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert first[LABELS].shape == (6, 2)
    assert not torch.equal(first["item"], _batch(schema, seed=10)["item"])
    with pytest.raises(ValueError, match="batch_size"):
        random_batch(schema, 0, torch.Generator())
