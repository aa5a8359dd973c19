"""The config system: strict round trip, named errors, overrides, hashing, immutability."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmoe.config import (
    Config,
    ConfigError,
    FrozenMap,
    apply_overrides,
    config,
    iter_configs,
    parse_override_value,
)
from hmoe.jobs.commands import parse_sets
from hmoe.schema import CategoricalFeature, FeatureSchema, SequenceFeature


@config
class Inner(Config):
    width: int = 8
    rate: float = 0.1
    dims: tuple[int, ...] = (4, 2)
    counts: Mapping[str, int] = FrozenMap({"mlp": 1, "dcn": 0})
    mode: Literal["mean", "gate"] = "gate"
    note: str | None = None

    def __post_init__(self) -> None:
        if sum(self.counts.values()) < 1:
            raise ConfigError("needs at least one expert")


@config
class Outer(Config):
    name: str
    inner: Inner = Inner()
    maybe: Inner | None = None
    flag: bool = False


def test_round_trip_and_hash_are_stable():
    cfg = Outer(name="x", maybe=Inner(width=3))
    again = Outer.from_dict(cfg.to_dict())
    assert again == cfg and hash(again) == hash(cfg)
    assert again.config_hash() == cfg.config_hash()
    assert Outer(name="y").config_hash() != cfg.config_hash()
    assert cfg.to_dict()["inner"]["dims"] == [4, 2]


def test_misspelt_key_names_the_key_path_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        Outer.from_dict({"name": "x", "inner": {"widht": 3}})
    assert "Outer.inner" in str(err.value) and "'widht'" in str(err.value)
    assert "valid keys" in str(err.value) and "'width'" in str(err.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"name": 3}, "Outer.name: expected a string"),
        ({"name": "x", "flag": 1}, "Outer.flag: expected a bool"),
        ({"name": "x", "inner": {"width": 2.5}}, "Outer.inner.width: expected an int"),
        ({"name": "x", "inner": {"width": True}}, "Outer.inner.width: expected an int"),
        ({"name": "x", "inner": {"mode": "max"}}, "Outer.inner.mode: 'max' is not one of"),
        ({"name": "x", "inner": {"dims": 4}}, "Outer.inner.dims: expected a list"),
        ({"name": "x", "inner": {"dims": [4, "a"]}}, "Outer.inner.dims[1]: expected an int"),
        ({"name": "x", "inner": {"counts": {"mlp": 0, "dcn": 0}}}, "needs at least one expert"),
        ({}, "missing required key 'name'"),
    ],
)
def test_wrong_types_and_values_are_named(data, fragment):
    with pytest.raises(ConfigError) as err:
        Outer.from_dict(data)
    assert fragment in str(err.value)


def test_constructor_is_as_strict_as_from_dict():
    with pytest.raises(ConfigError, match=r"Inner\.width: expected an int"):
        Inner(width="8")
    with pytest.raises(ConfigError, match="unknown key"):
        Inner(wdth=8)
    built = Inner(dims=[1, 2], counts={"mlp": 2})
    assert built.dims == (1, 2) and isinstance(built.counts, FrozenMap)
    assert Inner(rate=1).rate == 1.0 and isinstance(Inner(rate=1).rate, float)


def test_configs_are_frozen_keyword_only_and_hashable():
    cfg = Inner()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.width = 3
    with pytest.raises(TypeError):
        cfg.counts["mlp"] = 5
    with pytest.raises(TypeError):
        Outer("positional")
    assert len({Inner(), Inner(), Inner(width=2)}) == 2


def test_apply_overrides_sets_nested_paths_and_revalidates():
    cfg = Outer(name="x")
    new = apply_overrides(cfg, {"inner.counts.dcn": 2, "inner.rate": 1, "flag": True})
    assert new.inner.counts == {"mlp": 1, "dcn": 2} and new.inner.rate == 1.0 and new.flag
    assert cfg.inner.counts["dcn"] == 0  # the original is untouched
    assert apply_overrides(cfg, {"maybe": {"width": 5}}).maybe == Inner(width=5)
    with pytest.raises(ConfigError, match="needs at least one expert"):
        apply_overrides(cfg, {"inner.counts.mlp": 0})


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("inner.widht", "'widht' is not a key of inner"),
        ("inner.counts.attention", "'attention' is not a key of inner.counts"),
        ("nope", "'nope' is not a key of <root>"),
        ("maybe.width", "maybe is None"),
        ("inner.width.deeper", "inner.width is 8, not a config"),
    ],
)
def test_apply_overrides_rejects_unknown_paths(path, fragment):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Outer(name="x"), {path: 1})
    assert fragment in str(err.value)


def test_cli_set_values_parse_as_yaml_scalars():
    assert parse_sets(["a.b=3", "c=0.5", "d=true", "e=[64, 32]", "f=null", "g=gate"]) == {
        "a.b": 3,
        "c": 0.5,
        "d": True,
        "e": [64, 32],
        "f": None,
        "g": "gate",
    }
    assert parse_override_value("{dcn: 2}") == {"dcn": 2}
    with pytest.raises(ConfigError, match="PATH=VALUE"):
        parse_sets(["no-equals-sign"])


def test_iter_configs_walks_every_nested_config():
    paths = [p for p, _ in iter_configs(Outer(name="x", maybe=Inner()))]
    assert paths == ["", "inner", "maybe"]


@given(
    width=st.integers(-5, 10**6),
    rate=st.floats(allow_nan=False, allow_infinity=False),
    dims=st.lists(st.integers(0, 512), max_size=5),
    counts=st.dictionaries(st.sampled_from(["mlp", "dcn", "ipnn"]), st.integers(1, 4), min_size=1),
    mode=st.sampled_from(["mean", "gate"]),
    note=st.none() | st.text(max_size=8),
)
def test_round_trip_property(width, rate, dims, counts, mode, note):
    cfg = Outer(
        name="p",
        inner=Inner(width=width, rate=rate, dims=dims, counts=counts, mode=mode, note=note),
    )
    assert Outer.from_dict(cfg.to_dict()) == cfg
    assert Outer.from_dict(cfg.to_dict()).config_hash() == cfg.config_hash()


def test_feature_schema_round_trip_and_validation():
    schema = FeatureSchema(
        categorical=(
            CategoricalFeature(name="user", vocab_size=10),
            CategoricalFeature(name="item", vocab_size=20),
        ),
        sequences=(SequenceFeature(name="hist", max_len=5, item_field="item"),),
        user_field="user",
        item_field="item",
    )
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
    for name, cfg in iter_configs(schema):
        assert type(cfg).from_dict(cfg.to_dict()) == cfg, name
    with pytest.raises(ConfigError, match="'genre' is not a categorical feature"):
        FeatureSchema(
            categorical=schema.categorical,
            sequences=(
                SequenceFeature(name="h", max_len=3, item_field="item", category_field="genre"),
            ),
        )
    with pytest.raises(ConfigError, match="used twice"):
        FeatureSchema(categorical=(schema.categorical[0], schema.categorical[0]))


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), 10**400])
def test_non_finite_floats_are_refused_with_the_key_path(bad):
    with pytest.raises(ConfigError, match=r"Outer\.inner\.rate: expected a finite number"):
        Outer.from_dict({"name": "x", "inner": {"rate": bad}})
    with pytest.raises(ConfigError, match=r"Outer\.inner\.rate: expected a finite number"):
        apply_overrides(Outer(name="x"), {"inner.rate": bad})


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN"])
def test_non_finite_set_values_are_refused(text):
    """``--set train.lr=.inf`` parses as YAML inf; nan also slipped past ``lr <= 0``."""
    from hmoe.platform.data.spec import SplitSpec
    from hmoe.platform.experiment import TrainConfig

    value = parse_override_value(text)
    with pytest.raises(ConfigError, match=r"TrainConfig\.lr: expected a finite number"):
        apply_overrides(TrainConfig(), {"lr": value})
    with pytest.raises(ConfigError, match=r"fractions\[1\]: expected a finite number"):
        SplitSpec.from_dict({"fractions": [0.9, value, 0.1]})


@config
class Kinds(Config):
    counts: Mapping[Literal["a", "b"], int] = FrozenMap({"a": 1})


def test_a_literal_keyed_mapping_takes_exactly_its_declared_keys():
    assert apply_overrides(Kinds(), {"counts.b": 2}).counts == {"a": 1, "b": 2}
    with pytest.raises(ConfigError, match=r"'c' is not a key of counts; valid keys: \['a', 'b'\]"):
        apply_overrides(Kinds(), {"counts.c": 2})
    with pytest.raises(ConfigError, match=r"Kinds\.counts: unknown key\(s\) \['c'\]"):
        Kinds(counts={"c": 1})
    with pytest.raises(ConfigError, match=r"'c' is not a key of inner\.counts"):
        apply_overrides(Outer(name="x"), {"inner.counts.c": 1})  # a str-keyed one stays closed
