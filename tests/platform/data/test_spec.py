"""Dataset spec: strict loading with key paths, cross-field checks, paths, the shipped specs."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from hmoe.config import ConfigError
from hmoe.platform.data import load_spec, resolve_path, spec_from_dict
from hmoe.platform.data.spec import DATA_ROOT_ENV, DatasetSpec
from tests.platform.data.toy import spec_dict

SPECS_DIR = Path(__file__).resolve().parents[3] / "src" / "hmoe" / "platform" / "data" / "specs"
SHIPPED = (
    "adult",
    "criteo_deeplight_tiny",
    "ml-100k",
    "ml-100k-returning",
    "open_bandit_small",
)


def test_shipped_specs_all_load() -> None:
    found = sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))
    assert tuple(found) == SHIPPED
    for name in SHIPPED:
        spec = load_spec(SPECS_DIR / f"{name}.yaml")
        assert spec.name == name
        assert DatasetSpec.from_dict(spec.to_dict()) == spec  # round trip


def test_ml100k_spec_states_the_q1_protocol() -> None:
    spec = load_spec(SPECS_DIR / "ml-100k.yaml")
    assert spec.split.kind == "temporal" and spec.split.fractions == (0.8, 0.1, 0.1)
    assert spec.split.tie_break == ("user_id", "item_id")
    (hist,) = spec.sequences
    assert (hist.max_len, hist.item_field, hist.category_field) == (50, "item_id", "genre1")
    assert hist.only_positive_of is None  # any rating
    click = spec.labels[0]
    assert click.positive_if is not None and (click.positive_if.op, click.positive_if.value) == (
        ">=",
        4.0,
    )


def test_the_toy_spec_is_valid() -> None:
    spec = spec_from_dict(spec_dict())
    assert spec.needs_user_pass
    assert spec.vocab_of(spec.categorical_by_name("device")).mode == "closed"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"categorical": [{"name": "user", "vocab": {"mode": "hash", "hsh": 3}}]},
            "categorical[0].vocab",
        ),
        ({"split": {"kind": "temporal", "fractions": [0.5, 0.1, 0.1]}}, "sum to 1"),
        ({"split": {"kind": "cutoff"}}, "cutoffs"),
        ({"user_field": "nobody"}, "user_field"),
        ({"labels": []}, "tasks must be non-empty"),
        ({"similarity": [{"name": "s", "left": "user_emb", "right": "nope"}]}, "'nope'"),
        ({"split": {"pinned_files": {"other.csv": "test"}}}, "pinned_files"),
        ({"numeric": [{"name": "price", "required": False}]}, "fill_missing"),
        ({"log": {"paths": ["x.csv"], "header": False}}, "column_names"),
        ({"colour": 1}, "unknown key(s) ['colour']"),
        ({"split": {"kind": "group"}}, "group_by is given iff"),
        ({"split": {"kind": "random", "group_by": "user"}}, "group_by is given iff"),
        ({"split": {"kind": "group_temporal", "group_by": "tags"}}, "'tags' is not a single"),
        ({"split": {"kind": "group", "group_by": "nobody"}}, "'nobody' is not a single"),
        ({"split": {"kind": "group", "group_by": "user", "tie_break": ["rid"]}}, "tie_break"),
    ],
)
def test_invalid_specs_name_the_problem(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        spec_from_dict(spec_dict(**change))


def test_vocab_rules_are_checked() -> None:
    for vocab in (
        {"mode": "hash"},
        {"mode": "closed"},
        {"mode": "fit", "hash_size": 3},
        {"mode": "fit", "min_count": 0},
    ):
        with pytest.raises(ConfigError):
            spec_from_dict(spec_dict(vocab=vocab))


def test_load_spec_names_file_and_key_path(tmp_path: Path) -> None:
    data = spec_dict()
    data["sequences"][0]["max_lenght"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: DatasetSpec.sequences\[0\]: unknown key"):
        load_spec(path)
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "missing.yaml")


def test_paths_resolve_against_the_spec_dir_and_data_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_path("a/b.csv", tmp_path) == tmp_path / "a" / "b.csv"
    assert resolve_path("/abs/b.csv", tmp_path) == Path("/abs/b.csv")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "root"))
    assert resolve_path("${HMOE_DATA_ROOT}/x.csv", "/elsewhere") == tmp_path / "root" / "x.csv"
    monkeypatch.delenv(DATA_ROOT_ENV)
    monkeypatch.chdir(tmp_path)
    assert (
        resolve_path("${HMOE_DATA_ROOT}/x", "/elsewhere")
        == tmp_path / ".." / "shared" / "data" / "x"
    )
    with pytest.raises(ConfigError, match="HMOE_NOT_SET_ANYWHERE"):
        resolve_path("${HMOE_NOT_SET_ANYWHERE}/x", tmp_path)


def test_the_documented_example_spec_is_valid() -> None:
    from hmoe.platform.data import spec as spec_module

    doc = spec_module.__doc__
    example = doc[doc.index("    name: toy") : doc.index("Encoded columns")]
    spec = spec_from_dict(yaml.safe_load(textwrap.dedent(example)))
    assert spec.sequences[0].only_positive_of == "click"
