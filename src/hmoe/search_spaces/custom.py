"""Users' own search spaces: a function in their own file, or distributions per dotted path.

Two forms besides the shipped names of ``SPACES``:

* ``FILE.py:FUNCTION`` (``hmoe tune --space``): a define-by-run function ``space(trial)`` in
  the user's file, written like the shipped ones (``trial.suggest_*`` over dotted
  ExperimentConfig paths). The file is loaded without entering ``sys.modules``, so Ray Tune
  pickles the function by value and a resumed search needs no importable module.
* a mapping ``{dotted path: Distribution}`` (a job spec's ``search.space``), e.g.
  ``{"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}``.

``check_space`` samples a space before any trial runs and passes the samples through the
caller's ``apply`` (``apply_overrides`` on the base config, as ``--set`` does), so an unknown
path or a value of the wrong type is refused up front with the config's own message naming the path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from hmoe.config import Config, ConfigError, config

__all__ = [
    "Distribution",
    "DistributionSpace",
    "SearchSpace",
    "check_space",
    "resolve_space",
    "sampled_names",
]

SPACE_FILE_SUFFIX = ".py"
# samples drawn to validate a space: an unknown path or a wrong type fails every one of them,
# while a sample that is merely infeasible (all expert counts zero) is rare and fails a trial
CHECK_SAMPLES = 8
CHECK_SEED = 0
NAME_HASH_LENGTH = 8
_UNSET = object()  # a parameter a sample did not draw
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")  # the name goes into folder and run names


@config
class Distribution(Config):
    """One searched parameter: ``uniform``/``loguniform`` floats and ``int`` integers between
    ``low`` and ``high`` (inclusive), or one of ``choices`` (``categorical``)."""

    type: Literal["uniform", "loguniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    choices: tuple[bool | int | float | str | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None:
                raise ConfigError("a categorical distribution takes a non-empty choices only")
            return
        if self.low is None or self.high is None or self.choices is not None:
            raise ConfigError(f"a {self.type} distribution takes low and high only")
        if self.low > self.high:
            raise ConfigError(f"low ({self.low}) must be <= high ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ConfigError(f"a loguniform distribution needs low > 0, got {self.low}")
        if self.type == "int" and not (self.low.is_integer() and self.high.is_integer()):
            raise ConfigError(f"an int distribution needs whole low and high, got {self.low}")

    def suggest(self, trial: Any, path: str) -> None:
        if self.type == "categorical":
            trial.suggest_categorical(path, list(self.choices or ()))
        elif self.type == "int":
            trial.suggest_int(path, int(self.low or 0), int(self.high or 0))
        else:
            trial.suggest_float(path, self.low, self.high, log=self.type == "loguniform")


@dataclasses.dataclass(frozen=True)
class DistributionSpace:
    """A define-by-run function made of ``Distribution``s (a class, so it pickles by name)."""

    params: tuple[tuple[str, Distribution], ...]

    def __call__(self, trial: Any) -> None:
        for path, distribution in self.params:
            distribution.suggest(trial, path)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """A resolved space: ``name`` goes into the search's name (a folder), ``source`` into the
    ``hmoe.space`` tag, ``function`` to Optuna."""

    name: str
    source: str
    function: Callable[[Any], None]


def resolve_space(space: str | Mapping[str, Any]) -> SearchSpace:
    """A shipped space name, ``FILE.py:FUNCTION`` or ``{path: distribution}``; anything else
    raises ``ConfigError`` saying what is accepted."""
    from hmoe.search_spaces import SPACES

    if isinstance(space, Mapping):
        return _from_distributions(space)
    if space in SPACES:
        return SearchSpace(name=space, source=space, function=SPACES[space])
    file, _, function = space.rpartition(":")
    if not file.endswith(SPACE_FILE_SUFFIX) or not function:
        raise ConfigError(
            f"unknown search space {space!r}; valid spaces: {sorted(SPACES)}, or your own "
            "as FILE.py:FUNCTION"
        )
    return _from_file(Path(file).expanduser().resolve(), function)


def _from_file(path: Path, function: str) -> SearchSpace:
    source = f"{path}:{function}"
    if not path.is_file():
        raise ConfigError(f"search space file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"hmoe_user_space_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"search space file {path} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's file: any error is theirs, said in one line
        raise ConfigError(f"search space file {path} failed to load: {err!r}") from None
    # the user names the function, so this lookup by name is the feature itself
    found = vars(module).get(function)
    if not callable(found):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and k[0] != "_")
        raise ConfigError(
            f"search space {source}: {path.name} defines no function {function!r}; "
            f"it defines {defined}"
        )
    name = _UNSAFE.sub("_", f"{path.stem}.{function}")
    return SearchSpace(name=name, source=source, function=found)


def _from_distributions(space: Mapping[str, Any]) -> SearchSpace:
    if not space:
        raise ConfigError("search.space: give at least one dotted path and its distribution")
    params = []
    for path, value in space.items():
        if not isinstance(value, Distribution):
            value = Distribution.from_dict(value, path=f"search.space.{path}")
        params.append((path, value))
    plain = json.dumps({p: d.to_dict() for p, d in params}, sort_keys=True)
    digest = hashlib.sha256(plain.encode()).hexdigest()[:NAME_HASH_LENGTH]
    return SearchSpace(
        name=f"space-{digest}",
        source=f"search.space {plain}",
        function=DistributionSpace(tuple(params)),
    )


def check_space(space: SearchSpace, apply: Callable[[Mapping[str, Any]], Any]) -> None:
    """Sample ``space`` and ``apply`` the samples (``apply_overrides`` on the base config) before
    any trial; raise ``ConfigError`` naming the space and the config's complaint when no sample
    makes a valid config (an unknown path, a wrong type), when some choice of a categorical
    parameter never does, or when the function itself fails."""
    import optuna

    with _quiet(optuna):
        error = _first_error(space, apply, optuna)
    if error is not None:
        raise ConfigError(f"search space {space.source}: {error}")


def sampled_names(function: Callable[[Any], None], seed: int) -> list[str]:
    """The parameter names one sample of ``function`` draws (an in-memory Optuna trial)."""
    import optuna

    with _quiet(optuna):
        trial = _study(optuna, seed).ask()
        function(trial)
    return sorted(trial.params)


@contextlib.contextmanager
def _quiet(optuna: Any) -> Iterator[None]:
    """No "study created" line for a check; the search's own study logs as before."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _study(optuna: Any, seed: int) -> Any:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


def _first_error(
    space: SearchSpace, apply: Callable[[Mapping[str, Any]], Any], optuna: Any
) -> ConfigError | None:
    """The first sample's ``ConfigError`` when none of ``CHECK_SAMPLES`` applies; else, for each
    choice of each categorical parameter (one bad choice among good ones would otherwise pass),
    the first error of samples drawn with that choice fixed; ``None`` when all apply."""
    study = _study(optuna, CHECK_SEED)
    choices: dict[str, tuple[Any, ...]] = {}
    error = _try_samples(space, apply, optuna, study, None, choices)
    if error is not None:
        return error
    for name, options in choices.items():
        for choice in options:
            error = _try_samples(space, apply, optuna, study, (name, choice), choices)
            if error is not None:
                return ConfigError(f"{name}={choice!r}: {error}")
    return None


def _try_samples(
    space: SearchSpace,
    apply: Callable[[Mapping[str, Any]], Any],
    optuna: Any,
    study: Any,
    fixed: tuple[str, Any] | None,
    choices: dict[str, tuple[Any, ...]],
) -> ConfigError | None:
    """``None`` once a sample (with ``fixed`` set, where given) applies; else the first
    ``ConfigError``. Records the categorical parameters the samples draw in ``choices``."""
    first: ConfigError | None = None
    for _ in range(CHECK_SAMPLES):
        if fixed is not None:
            study.enqueue_trial(dict([fixed]))
        trial = study.ask()
        try:
            space.function(trial)
        except Exception as err:  # the user's function: report it as their mistake
            return ConfigError(f"sampling failed: {err!r}")
        if not trial.params:
            return ConfigError("it suggests no parameter")
        for name, distribution in trial.distributions.items():
            if isinstance(distribution, optuna.distributions.CategoricalDistribution):
                choices.setdefault(name, tuple(distribution.choices))
        if fixed is not None and trial.params.get(fixed[0], _UNSET) != fixed[1]:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue  # a conditional parameter this sample did not draw: try another
        try:
            apply(trial.params)
        except ConfigError as err:
            first = first or err
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        return None
    return first
