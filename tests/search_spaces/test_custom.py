"""Users' own spaces: ``FILE.py:FUNCTION`` and ``{path: distribution}``, checked before trials."""

from __future__ import annotations

from pathlib import Path

import cloudpickle
import optuna
import pytest

from hmoe.config import ConfigError, apply_overrides
from hmoe.search_spaces.custom import Distribution, check_space, resolve_space
from tests.search_spaces.test_spaces import _base, _get

EXAMPLE = Path(__file__).parents[2] / "src/hmoe/search_spaces/examples/my_space.py"
NUM_TRIALS = 20


def _samples(function, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(NUM_TRIALS):
        trial = study.ask()
        function(trial)
        out.append(trial.params)
    return out


def test_the_shipped_example_file_is_resolved_checked_and_applied():
    space = resolve_space(f"{EXAMPLE}:space")
    assert space.name == "my_space.space" and space.source == f"{EXAMPLE.resolve()}:space"
    base = _base()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    check_space(space, lambda params: apply_overrides(base, params))
    assert optuna.logging.get_verbosity() == optuna.logging.INFO  # the caller's, left as it was
    for params in _samples(space.function):
        assert sorted(params) == ["model.experts.counts.mlp", "train.batch_size", "train.lr"]
        cfg = apply_overrides(base, params)
        assert all(_get(cfg, path) == value for path, value in params.items())
        assert 1e-4 <= cfg.train.lr <= 1e-2 and cfg.train.batch_size in (128, 256, 512)
    # Tune pickles the searcher (and so the function) into the search's state for a resume
    again = cloudpickle.loads(cloudpickle.dumps(space.function))
    assert _samples(again, seed=3) == _samples(space.function, seed=3)


def test_a_distribution_mapping_samples_what_it_declares():
    space = resolve_space(
        {
            "train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "train.weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
            "model.experts.counts.dcnv2": {"type": "int", "low": 0, "high": 2},
            "model.combine.method": {"type": "categorical", "choices": ["mean", "gate"]},
        }
    )
    assert space.name.startswith("space-")
    base = _base()
    check_space(space, lambda params: apply_overrides(base, params))
    samples = _samples(space.function)
    for params in samples:
        cfg = apply_overrides(base, params)
        assert 1e-4 <= cfg.train.lr <= 1e-2 and 0.0 <= cfg.train.weight_decay <= 0.1
        assert cfg.model.experts.counts["dcnv2"] in (0, 1, 2)
        assert isinstance(params["model.experts.counts.dcnv2"], int)
    assert {p["model.combine.method"] for p in samples} == {"mean", "gate"}
    again = cloudpickle.loads(cloudpickle.dumps(space.function))
    assert _samples(again, seed=1) == _samples(space.function, seed=1)


BAD_FILES = {
    "unknown path": (
        "trial.suggest_float('train.lrr', 1e-3, 1e-2)",
        r"my\.py:space: unknown override path 'train\.lrr'",
    ),
    "wrong type": (
        "trial.suggest_float('train.epochs', 1, 3)",
        r"my\.py:space: ExperimentConfig\.train\.epochs: expected an int",
    ),
    "not a trial method": ("trial.suggest_lr('train.lr')", r"my\.py:space: sampling failed"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_space_is_refused_naming_the_path(tmp_path: Path, case: str):
    body, message = BAD_FILES[case]
    (tmp_path / "my.py").write_text(f"def space(trial):\n    {body}\n")
    base = _base()
    with pytest.raises(ConfigError, match=message):
        check_space(resolve_space(f"{tmp_path}/my.py:space"), lambda p: apply_overrides(base, p))


def test_a_missing_file_or_function_is_refused(tmp_path: Path):
    (tmp_path / "my.py").write_text("def space(trial):\n    pass\n")
    with pytest.raises(ConfigError, match=r"my\.py defines no function 'spce'; .*\['space'\]"):
        resolve_space(f"{tmp_path}/my.py:spce")
    with pytest.raises(ConfigError, match=r"nothere\.py does not exist"):
        resolve_space(f"{tmp_path}/nothere.py:space")
    with pytest.raises(ConfigError, match=r"unknown search space 'smok'; .* FILE\.py:FUNCTION"):
        resolve_space("smok")


BAD_DISTRIBUTIONS = {
    "low above high": ({"type": "uniform", "low": 2, "high": 1}, "low .* must be <= high"),
    "log of zero": ({"type": "loguniform", "low": 0, "high": 1}, "needs low > 0"),
    "no choices": ({"type": "categorical"}, "non-empty choices"),
    "unknown type": ({"type": "normal", "low": 0, "high": 1}, r"'normal' is not one of"),
    "fractional int": ({"type": "int", "low": 0.5, "high": 2}, "whole low and high"),
}


@pytest.mark.parametrize("case", list(BAD_DISTRIBUTIONS))
def test_a_bad_distribution_is_refused(case: str):
    value, message = BAD_DISTRIBUTIONS[case]
    with pytest.raises(ConfigError, match=message):
        Distribution.from_dict(value)


def test_cli_refuses_a_bad_space_in_one_line_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    from hmoe.jobs.cli import EXIT_USER_ERROR, main
    from tests.platform.prepared import write_prepared

    data = write_prepared(tmp_path / "tiny")
    body = "def space(trial):\n    trial.suggest_int('train.epoch', 1, 3)\n"
    (tmp_path / "my.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    argv = ["tune", "--preset", "debug", "--space", "my.py:space", "--data", str(data)]
    assert main([*argv, "--num-samples", "1"]) == EXIT_USER_ERROR
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown override path 'train.epoch'" in error, error
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "hmoe_runs").exists()


# a kind the preset leaves out, a kind no model implements, a new key of a free-key mapping, a
# misspelt field: what `--set` takes, a search space takes, and the other way round
PARITY_PATHS = (
    "model.experts.counts.fm",
    "model.experts.counts.cin",
    "loss.task_weights.click",
    "train.lrr",
)


@pytest.mark.parametrize("path", PARITY_PATHS)
def test_set_and_a_search_space_accept_and_refuse_the_same_paths(path: str):
    from hmoe.jobs.commands import parse_sets
    from hmoe.models.zoo import PRESETS
    from hmoe.platform.experiment import DataConfig, ExperimentConfig

    made = PRESETS["dcnv2"]()  # a single-kind mix: every other kind's count is unset
    base = ExperimentConfig(
        preset="dcnv2", data=DataConfig(path="/unused"), model=made.model, loss=made.loss
    )
    value = 1
    try:
        by_set = apply_overrides(base, parse_sets([f"{path}={value}"]))
    except ConfigError as err:
        by_set = err
    space = resolve_space({path: {"type": "categorical", "choices": [value]}})
    try:
        check_space(space, lambda params: apply_overrides(base, params))
    except ConfigError as err:
        assert isinstance(by_set, ConfigError), f"--set takes {path}, the space refuses: {err}"
        assert str(by_set) in str(err) and "\n" not in str(err)
        assert f"unknown override path {path!r}" in str(err)
    else:
        assert not isinstance(by_set, ConfigError), f"the space takes {path}, --set: {by_set}"
        assert _get(by_set, path) == value
    assert isinstance(by_set, ConfigError) == (path != "model.experts.counts.fm")


def test_every_categorical_choice_is_checked_not_only_one_of_them():
    base = _base()
    good = {"type": "categorical", "choices": ["mean", "gate"]}
    check_space(resolve_space({"model.combine.method": good}), lambda p: apply_overrides(base, p))
    # one bad choice among good ones: a sample drawing a good one applies, which passed before
    bad = {"type": "categorical", "choices": ["mean", "gate", "max", "sum"]}
    space = resolve_space({"model.combine.method": bad})
    with pytest.raises(ConfigError, match=r"model\.combine\.method='max': .*'max' is not one of"):
        check_space(space, lambda params: apply_overrides(base, params))


@pytest.mark.parametrize("name", ["smoke", "embeddings", "experts", "ranking_loss", "full"])
def test_the_shipped_spaces_pass_the_check_of_every_choice(name: str):
    base = _base()
    check_space(resolve_space(name), lambda params: apply_overrides(base, params))
