"""The model benchmark's step variants: the ones that need the torch backend's tables
(``torch.compile``, sparse gradients) name that backend, whatever the presets default to; the
others time the preset's own backend. Built only: compiling and timing are the benchmark's job."""

from __future__ import annotations

import pytest

from hmoe.config import apply_overrides
from hmoe.models.testing import tiny_schema
from hmoe.models.zoo import build, get_preset
from tests.conftest import load_benchmark

PRESET = "dcnv2"  # the cheapest preset the benchmark times every variant of


@pytest.fixture(scope="module")
def bench_models():
    return load_benchmark("bench_models")


@pytest.fixture
def torchrec_default(bench_models, monkeypatch):
    """The presets as if their default embedding backend were ``torchrec``; returns the model
    configs the benchmark builds."""
    pytest.importorskip("torchrec", reason="TorchRec/FBGEMM not installed")

    def preset(name: str):
        return apply_overrides(get_preset(name), {"model.embedding.backend": "torchrec"})

    built = []

    def recorded_build(config, schema):
        built.append(config)
        return build(config, schema)

    monkeypatch.setattr(bench_models, "get_preset", preset)
    monkeypatch.setattr(bench_models, "build", recorded_build)
    return built


@pytest.mark.parametrize("variant", ["fused+compile", "fused+sparse"])
def test_variants_that_need_torch_tables_name_the_torch_backend(
    bench_models, torchrec_default, variant
):
    step = bench_models.hmoe_step(PRESET, tiny_schema(), variant)
    assert callable(step)
    (config,) = torchrec_default
    assert config.embedding.backend == "torch"
    how = bench_models.VARIANTS[variant]
    assert (config.use_compile, config.use_sparse_gradients) == (how["compiled"], how["sparse"])


def test_the_other_variants_time_the_presets_own_backend(bench_models, torchrec_default):
    for variant in ("adam", "fused"):
        bench_models.hmoe_step(PRESET, tiny_schema(), variant)
    assert [c.embedding.backend for c in torchrec_default] == ["torchrec", "torchrec"]


def test_every_variant_is_covered(bench_models):
    assert set(bench_models.VARIANTS) == {"adam", "fused", "fused+sparse", "fused+compile"}
