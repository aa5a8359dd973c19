"""The scale benchmark's log: its synth spec with the id tables hashed to the asked size."""

from __future__ import annotations

import pytest

from hmoe.platform.data.spec import DatasetSpec
from hmoe.platform.data.synth import spec_dict
from hmoe.platform.data.synth_model import SynthConfig
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench_scale():
    return load_benchmark("bench_scale")


@pytest.mark.parametrize(("text", "value"), [("50M", 50_000_000), ("150k", 150_000), ("7", 7)])
def test_counts_read_as_written(bench_scale, text: str, value: int) -> None:
    assert bench_scale.count(text) == value


def test_the_id_tables_are_hashed_to_the_asked_rows_and_the_spec_stays_valid(bench_scale) -> None:
    synth = spec_dict(SynthConfig())
    spec = bench_scale.hashed_spec(synth, rows=1000, ids=50_000_001)
    vocab = {f["name"]: f.get("vocab") for f in spec["categorical"]}
    sizes = {name: v["hash_size"] for name, v in vocab.items() if v and v["mode"] == "hash"}
    assert sizes == {"user_id": 40_000_001, "item_id": 10_000_000}
    assert sum(sizes.values()) == 50_000_001
    untouched = {f["name"]: f for f in synth["categorical"] if f["name"] not in sizes}
    kept = {f["name"]: f for f in spec["categorical"] if f["name"] not in sizes}
    assert kept == untouched
    assert DatasetSpec.from_dict(spec).name == "synth-1000-rows-50000001-ids"
