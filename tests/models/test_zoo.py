"""Every preset builds and trains a step; configs round-trip; no numeric knob of debug is idle."""

from __future__ import annotations

import dataclasses
import doctest
import inspect
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from hmoe.config import Config, ConfigError, apply_overrides, iter_configs
from hmoe.models import multitask, ranker
from hmoe.models.embeddings import EMBEDDING_BACKENDS
from hmoe.models.losses import TrainWrapper
from hmoe.models.multitask import MultiTaskRanker
from hmoe.models.ranker import HeteroMoERanker
from hmoe.models.testing import random_batch, tiny_schema
from hmoe.models.zoo import PRESETS, Preset, build, get_preset
from tests.models.learning import BACKENDS, backward_and_check_every_parameter_learns

EXPECTED_PRESETS = {
    "debug",
    "hmoe",
    "hmoe_stem",
    "hmoe_ame",
    "hmoe_stem_al",
    "dnn",
    "deepfm",
    "dcnv2",
    "din",
    "din_plus",
    "sasrec",
    "shared_bottom",
    "mmoe",
    "ple",
}
TWO_TASKS = ("click", "like")
BATCH = 8
OBSERVE_BATCH = 32


def _step(preset: Preset, tasks: tuple[str, ...]) -> tuple[torch.nn.Module, torch.Tensor]:
    """One training step's forward and backward; every parameter must learn from it."""
    schema = tiny_schema(tasks=tasks)
    torch.manual_seed(0)
    model = build(preset.model, schema)
    batch = random_batch(schema, BATCH, torch.Generator().manual_seed(0))
    loss, outputs = TrainWrapper(model, preset.loss)(batch)
    assert outputs["logits"].shape == (BATCH, len(tasks))
    backward_and_check_every_parameter_learns(model, loss)
    return model, loss


def test_the_preset_dict_is_complete():
    assert set(PRESETS) == EXPECTED_PRESETS
    assert len(PRESETS) == 14


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_and_trains_a_step(name, backend):
    preset = PRESETS[name]()
    assert isinstance(preset, Preset) and preset.description
    assert inspect.getdoc(PRESETS[name]), f"{name} has no docstring saying what it reproduces"
    _, loss = _step(apply_overrides(preset, {"model.embedding.backend": backend}), TWO_TASKS)
    assert torch.isfinite(loss)


def test_every_preset_was_exercised():
    """The parametrised test above runs every preset the zoo promises, no fewer."""
    markers = {m.args[0]: m.args[1] for m in test_preset_builds_and_trains_a_step.pytestmark}
    assert set(markers["name"]) == EXPECTED_PRESETS
    assert [p.values[0] for p in markers["backend"]] == list(EMBEDDING_BACKENDS)


@pytest.mark.parametrize(
    "name", sorted(n for n in PRESETS if PRESETS[n]().model.kind not in ("stem_al",))
)
def test_preset_on_a_single_task(name):
    _step(PRESETS[name](), ("click",))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips(name):
    preset = PRESETS[name]()
    assert Preset.from_dict(preset.to_dict()) == preset
    assert preset.config_hash() == Preset.from_dict(preset.to_dict()).config_hash()
    nested = list(iter_configs(preset))
    assert len(nested) > 10
    for path, cfg in nested:
        assert type(cfg).from_dict(cfg.to_dict()) == cfg, path


def test_build_picks_the_class_by_kind():
    schema = tiny_schema(tasks=TWO_TASKS)
    assert type(build(get_preset("debug").model, schema)) is HeteroMoERanker
    assert type(build(get_preset("mmoe").model, schema)) is MultiTaskRanker
    with pytest.raises(TypeError, match="FeatureSchema"):
        build(get_preset("debug").model, {"tasks": TWO_TASKS})  # type: ignore[arg-type]


@pytest.mark.parametrize("module", [ranker, multitask])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_public_modules_have_args_and_example():
    for cls in (ranker.HeteroMoERanker, multitask.MultiTaskRanker):
        doc = inspect.getdoc(cls) or ""
        assert "Args:" in doc and "Example:" in doc, cls.__name__


def test_get_preset_unknown_name():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; valid: \\['dcnv2'"):
        get_preset("nope")


# --- no unwired knob ----------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_knobs(preset: Preset) -> dict[str, Any]:
    """Every numeric leaf (numbers, tuples of numbers, numeric mapping values) by dotted path."""
    knobs: dict[str, Any] = {}
    for path, cfg in iter_configs(preset):
        for field in dataclasses.fields(cfg):
            value = getattr(cfg, field.name)
            dotted = f"{path}.{field.name}" if path else field.name
            numeric_tuple = isinstance(value, tuple) and value and all(map(_is_number, value))
            if _is_number(value) or numeric_tuple:
                knobs[dotted] = value
            elif isinstance(value, Mapping) and not isinstance(value, Config):
                for key, item in value.items():
                    if _is_number(item):
                        knobs[f"{dotted}.{key}"] = item
    return knobs


def _nudged(value: Any) -> list[Any]:
    """Candidate perturbations of a value, tried in order until one is a valid config."""
    if isinstance(value, tuple):
        return [tuple(_nudged(v)[0] for v in value)]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if 0.0 <= value <= 1.0:
        return [value + 0.1 if value <= 0.5 else value - 0.1]
    return [value * 1.5, value * 0.5]


def _observe(preset: Preset, batch_size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor, int]:
    schema = tiny_schema(tasks=TWO_TASKS)
    torch.manual_seed(0)
    model = build(preset.model, schema)
    batch = random_batch(schema, batch_size, torch.Generator().manual_seed(0))
    torch.manual_seed(1)  # dropout masks
    loss, outputs = TrainWrapper(model, preset.loss)(batch)
    count = sum(p.numel() for p in model.parameters())
    return outputs["logits"].detach(), loss.detach(), count


def test_every_numeric_knob_of_debug_is_wired():
    base = get_preset("debug")
    # the torchrec backend's table optimizer knobs act only in a training step (and only with
    # that backend): test_embedding_backends.py checks them against a reference step
    knobs = {
        k: v for k, v in numeric_knobs(base).items() if not k.startswith("model.embedding.table_")
    }
    assert len(knobs) >= 30, sorted(knobs)  # the walk really reaches the nested configs
    assert not _idle_knobs(base, knobs)


@pytest.mark.parametrize("name", ["din", "sasrec"])
def test_sequence_encoder_knobs_are_wired(name):
    """The DIN and SASRec blocks are null in debug (a TIM model); check them on their presets."""
    base = get_preset(name)
    prefix = "model.encoder.sequence."
    knobs = {k: v for k, v in numeric_knobs(base).items() if k.startswith(prefix)}
    assert len(knobs) >= 2, sorted(knobs)
    assert not _idle_knobs(base, knobs)


def _idle_knobs(base: Preset, knobs: Mapping[str, Any]) -> list[str]:
    """The knobs whose perturbation changes neither the logits, the loss nor the size."""
    logits, loss, count = _observe(base)
    unwired = []
    for path, value in knobs.items():
        for candidate in _nudged(value):
            try:
                changed = apply_overrides(base, {path: candidate})
            except ConfigError:
                continue
            break
        else:
            pytest.fail(f"no valid perturbation of {path}={value!r}")
        new_logits, new_loss, new_count = _observe(changed)
        same = (
            new_count == count and torch.equal(new_logits, logits) and torch.equal(new_loss, loss)
        )
        if same:
            unwired.append(path)
    return unwired


# --- every technique of the spec is reachable by configuration alone ---------------------------

TECHNIQUES: dict[str, dict[str, Any]] = {
    "tim_code_form": {"model.encoder.sequence.tim.form": "code"},
    "tim_relative_position": {"model.encoder.sequence.tim.time_intervals": None},
    "din": {"model.encoder.sequence": {"kind": "din"}},
    "din_plus": {"model.encoder.sequence": {"kind": "din_plus"}},
    "sasrec_target_pooling": {"model.encoder.sequence": {"kind": "sasrec", "sasrec": {}}},
    "mean_pooling": {"model.encoder.sequence": {"kind": "mean"}},
    "no_similarity_side_input": {"model.encoder.sequence.use_similarity": False},
    "mnse_integer": {"model.encoder.numeric.mapping": "integer"},
    "mnse_scaled": {"model.encoder.numeric.mapping": "scaled"},
    # "quantile" needs fitted quantiles on every numeric field; "auto" already picks it for the
    # tiny schema's ctr field, so the debug preset exercises it
    "mnse_common_width": {"model.encoder.numeric.common_width": True},
    "numeric_bucket": {"model.encoder.numeric.kind": "bucket"},
    "sum_pooling": {"model.encoder.pooling": "sum"},
    "combine_mean": {"model.combine.method": "mean"},
    "combine_learnable_sum": {
        "model.combine.method": "sum",
        "model.combine.learnable_sum_weights": True,
    },
    "gate_per_expert_input": {"model.combine.gate_source": "expert_inputs"},
    "combine_projection": {"model.combine.output_dim": 6},
    "dcn_parallel": {"model.experts.dcnv2.structure": "parallel"},
    "dcn_low_rank": {"model.experts.dcnv2.rank": 3},
    "gwpfm_linear": {"model.experts.gwpfm.use_linear": True},
    "ipnn_with_flat": {"model.experts.ipnn.include_flat": True},
    "expert_groups": {"model.embedding.assignment": "per_kind"},
    "interaction_groups": {"model.embedding.assignment": "by_interaction"},
    "single_embedding": {"model.embedding.assignment": "shared"},
    "explicit_sets": {
        "model.embedding.assignment": "explicit",
        "model.embedding.expert_sets": [0, 0, 1, 1, 0],
    },
    "asymmetric_dims": {"model.embedding.set_dims": [2, 3, 4, 5, 6]},
    "stem": {"model.kind": "stem", "model.shared_experts": {"counts": {"mlp": 2}}},
    "ple": {"model.kind": "ple", "model.shared_experts": {"counts": {"mlp": 2}}},
    "ame": {"model.kind": "ame"},
    "mmoe": {"model.kind": "mmoe", "model.embedding.assignment": "shared"},
    "stem_al": {"model.kind": "stem_al", "model.auxiliary_tasks": ["like"]},
    "bce_only": {"loss.ranking.enabled": False, "loss.ipw.enabled": False},
    "ipw_table": {"loss.ipw.estimator": "table", "loss.ipw.propensities": [1.0, 1.25, 2.0]},
    "task_weights": {"loss.task_weights": {"click": 1.0, "like": 0.3}},
    "ranking_on_one_task": {"loss.ranking.tasks": ["click"]},
    "no_sample_weight": {"loss.use_sample_weight": False},
}
#: what a technique needs of the debug preset to show (debug has one expert per kind, so grouping
#: experts by kind only differs from one set per expert once a kind has two experts)
TECHNIQUE_BASES: dict[str, dict[str, Any]] = {"expert_groups": {"model.experts.counts.mlp": 2}}


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_technique_reachable_by_configuration(technique):
    """Setting the technique's keys alone changes what the model computes: its logits, its loss
    or its parameters (a key the model ignored would leave all three as they were)."""
    base = apply_overrides(get_preset("debug"), TECHNIQUE_BASES.get(technique, {}))
    preset = apply_overrides(base, TECHNIQUES[technique])
    assert preset != base
    _, loss = _step(preset, TWO_TASKS)
    assert torch.isfinite(loss)
    # a larger batch than BATCH, so that some multi-valued rows hold several values (pooling)
    logits, loss, count = _observe(base, OBSERVE_BATCH)
    new_logits, new_loss, new_count = _observe(preset, OBSERVE_BATCH)
    assert torch.isfinite(new_logits).all()
    unchanged = (
        new_count == count and torch.equal(new_logits, logits) and torch.equal(new_loss, loss)
    )
    assert not unchanged, f"{technique}: {TECHNIQUES[technique]} changed nothing the model computes"


def test_hmoe_expert_groups_survive_a_search_over_counts():
    """hmoe groups experts by kind, so varying the counts (the experts space) stays buildable."""
    preset = apply_overrides(
        get_preset("hmoe"), {"model.experts.counts.gwpfm": 0, "model.experts.counts.dcnv2": 2}
    )
    model, _ = _step(preset, ("click",))
    assert model.expert_kinds == ("ipnn", "dcnv2", "dcnv2", "mlp")
    assert model.expert_sets == (0, 1, 1, 1)


def test_hmoe_uses_the_tim_form_chosen_on_validation():
    # docs/results.md, "chosen on validation": the paper form had the better validation AUC on
    # ml-100k Q1, and the code form's extra tokens overfit sparse histories on small logs
    assert get_preset("hmoe").model.encoder.sequence.tim.form == "paper"
