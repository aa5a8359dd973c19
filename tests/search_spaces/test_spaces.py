"""Every search space: 20 seeded Optuna trials -> apply -> validate -> build -> forward."""

from __future__ import annotations

import optuna
import pytest
import torch

from hmoe.config import ConfigError, apply_overrides
from hmoe.models.testing import random_batch, tiny_schema
from hmoe.models.zoo import PRESETS, build
from hmoe.platform.experiment import DataConfig, ExperimentConfig
from hmoe.search_spaces import SPACES

NUM_TRIALS = 20
SCHEMA = tiny_schema()


def _base() -> ExperimentConfig:
    preset = PRESETS["debug"]()
    return ExperimentConfig(
        preset="debug", data=DataConfig(path="/unused"), model=preset.model, loss=preset.loss
    )


def _sample(space, seed: int = 0):
    """Yield ``(params, config or ConfigError)`` for NUM_TRIALS trials of a fresh study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), direction="maximize")
    base = _base()
    for _ in range(NUM_TRIALS):
        trial = study.ask()
        assert space(trial) is None  # Ray's define-by-run contract: None or a dict of constants
        try:
            cfg = apply_overrides(base, trial.params)
        except ConfigError as err:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            yield trial.params, err
            continue
        study.tell(trial, 0.5)
        yield trial.params, cfg


def test_the_registry_has_every_issue_space():
    assert sorted(SPACES) == ["embeddings", "experts", "full", "ranking_loss", "smoke"]


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_samples_apply_build_and_forward(name):
    batch = random_batch(SCHEMA, 4, torch.Generator().manual_seed(0))
    built, infeasible = 0, 0
    for params, cfg in _sample(SPACES[name]):
        assert params and all("/" not in key for key in params)  # dotted, never Ray's "/"
        if isinstance(cfg, ConfigError):
            # the only infeasible sample the spaces can draw: an expert mix with no expert
            assert "no expert at all" in str(cfg), str(cfg)
            assert all(params.get(f"model.experts.counts.{k}", 1) == 0
                       for k in ("gwpfm", "ipnn", "dcnv2", "mlp"))  # fmt: skip
            infeasible += 1
            continue
        for path, value in params.items():
            assert _get(cfg, path) == value, path
        torch.manual_seed(0)
        logits = build(cfg.model, SCHEMA)(batch)
        assert logits.shape == (4, 1) and torch.isfinite(logits).all()
        built += 1
    assert built + infeasible == NUM_TRIALS and built >= NUM_TRIALS // 2


def test_sampling_is_seeded():
    first = [p for p, _ in _sample(SPACES["full"], seed=3)]
    again = [p for p, _ in _sample(SPACES["full"], seed=3)]
    assert first == again


def test_ranking_alpha_is_conditional_on_the_loss_being_on():
    for params, _ in _sample(SPACES["ranking_loss"]):
        assert ("loss.ranking.alpha" in params) == params["loss.ranking.enabled"]


def test_an_all_zero_expert_mix_is_refused_not_clipped():
    zero = {f"model.experts.counts.{k}": 0 for k in ("gwpfm", "ipnn", "dcnv2", "mlp", "fm")}
    with pytest.raises(ConfigError, match="no expert at all"):
        apply_overrides(_base(), zero)


def _get(cfg, path):
    node = cfg
    for key in path.split("."):
        node = node[key] if hasattr(node, "keys") else getattr(node, key)
    return node
