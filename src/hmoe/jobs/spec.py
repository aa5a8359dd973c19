"""Job specs: a search (or one training run) to run on a Ray cluster, as strict YAML.

A job spec names the data, the model preset, the search, the resources and the tracking
server; ``hmoe submit`` reads it, refuses it before anything is submitted when a key is unknown,
a value has the wrong type, a resource request is impossible or the dataset is missing (the
message names the key path, e.g. ``JobSpec.resources.workers``), and sends it to the cluster,
where ``hmoe.jobs.entry`` runs it through ``hmoe.tune`` / ``hmoe.train``. Example::

    name: ml100k-full
    preset: hmoe
    dataset: {spec: ml-100k, raw_root: /data, out: /data/prepared/ml-100k}
    search: {space: full, num_samples: 32}
    resources: {workers: 2, cpus_per_worker: 2, concurrent_trials: 2}
    tracking: {uri: "http://127.0.0.1:5000", experiment: ml100k-full}

Paths are read on the cluster (shared storage on a multi-node cluster); ``validate`` also checks
them on the submitting machine unless told not to (a remote cluster's paths need not exist
locally). ``s3://`` data and storage are checked by reaching the bucket, with the ``AWS_*``
variables of ``runtime.env_vars`` over the submitter's environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from hmoe.config import Config, ConfigError, FrozenMap, apply_overrides, config
from hmoe.platform.core import storage
from hmoe.schema import MANIFEST
from hmoe.search_spaces.custom import Distribution

__all__ = [
    "EXAMPLES",
    "DatasetRef",
    "JobSpec",
    "ResourcesSpec",
    "RuntimeSpec",
    "SearchSpec",
    "SyntheticData",
    "TrackingSpec",
    "example_path",
    "expand",
    "load_job",
    "shipped_dataset_spec",
    "validate",
]

ROOT = "JobSpec"  # the key path prefix of every message, as in from_dict
MAX_GPUS_PER_WORKER = 8  # one node's worth; more is a typo, not a request
MAX_WORKERS = 1024
EXAMPLES = ("smoke", "ml100k_full", "criteo_tiny_experts", "synthetic_scale")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# absolute, home- or environment-anchored paths, or object storage
_ANCHORS = ("/", "~", "$", f"{storage.S3_SCHEME}{storage.SCHEME_MARK}")
AWS_PREFIX = "AWS_"  # the variables of runtime.env_vars that reach object storage
# set through resources/storage/tracking, never as overrides
_RESERVED_OVERRIDES = (
    "train.num_workers",
    "train.cpus_per_worker",
    "train.gpus_per_worker",
    "train.storage_path",
    "tracking.uri",
    "tracking.experiment",
    "tracking.registered_model",
)
DEFAULT_STORAGE = "~/hmoe-runs"
OVERRIDES_PREFIX = "overrides."


@config
class SyntheticData(Config):
    """Synthetic impressions generated on the cluster (``hmoe data synth``), then prepared."""

    rows: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ConfigError(f"dataset.synthetic.rows must be >= 1, got {self.rows}")


@config
class DatasetRef(Config):
    """Exactly one of: ``prepared`` (a prepared directory), ``spec`` (a shipped dataset spec name
    such as ``ml-100k``, or a spec YAML path) or ``synthetic``.

    ``raw_root``: where the spec's raw files are (``${HMOE_DATA_ROOT}`` in shipped specs).
    ``out``: where a ``spec``/``synthetic`` dataset is prepared; a complete prepared directory
    found there is reused.
    """

    prepared: str | None = None
    spec: str | None = None
    synthetic: SyntheticData | None = None
    raw_root: str | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("prepared", "spec", "synthetic") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"dataset: give exactly one of prepared, spec or synthetic (got {given or 'none'})"
            )
        if self.prepared is not None and (self.out is not None or self.raw_root is not None):
            raise ConfigError("dataset: out and raw_root apply to spec/synthetic, not prepared")
        if self.prepared is None and not self.out:
            raise ConfigError(f"dataset.out: where to prepare the {given[0]} dataset is missing")
        if self.synthetic is not None and self.raw_root is not None:
            raise ConfigError("dataset.raw_root: synthetic data has no raw files to point at")
        spec_file = self.spec if self.spec is not None and Path(self.spec).suffix else None
        for key, value in (
            ("prepared", self.prepared),
            ("spec", spec_file),
            ("raw_root", self.raw_root),
            ("out", self.out),
        ):
            if value is not None and not value.startswith(_ANCHORS):
                raise ConfigError(
                    f"dataset.{key}: {value!r} is relative; the job runs elsewhere, so give an "
                    "absolute path (or one starting with ~, ${VAR} or s3://)"
                )


@config
class SearchSpec(Config):
    """A Ray Tune + Optuna search: its space and its budget.

    ``space``: a name of ``hmoe.search_spaces.SPACES``, or your own as a mapping of dotted
    ExperimentConfig paths to distributions::

        space:
          train.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
          model.combine.method: {type: categorical, choices: [mean, gate]}
          model.experts.counts.mlp: {type: int, low: 1, high: 3}
    """

    space: str | Mapping[str, Distribution]
    num_samples: int
    scheduler: Literal["asha", "fifo"] = "asha"

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"search.num_samples must be >= 1, got {self.num_samples}")


@config
class ResourcesSpec(Config):
    """Per trial ``workers`` Ray Train workers with ``cpus_per_worker``/``gpus_per_worker``;
    ``concurrent_trials`` at once; ``driver_cpus`` reserved for the job's driver process."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    concurrent_trials: int = 1
    driver_cpus: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"resources.workers must be in 1..{MAX_WORKERS}, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"resources.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        gpus = self.gpus_per_worker
        if not 0 <= gpus <= MAX_GPUS_PER_WORKER:
            raise ConfigError(
                f"resources.gpus_per_worker must be in 0..{MAX_GPUS_PER_WORKER}, got {gpus}"
            )
        if gpus > 1 and gpus != int(gpus):
            raise ConfigError(
                f"resources.gpus_per_worker: Ray shares a GPU only below 1; {gpus} is neither a "
                "fraction of one GPU nor a whole number of GPUs"
            )
        if self.concurrent_trials < 1:
            raise ConfigError(
                f"resources.concurrent_trials must be >= 1, got {self.concurrent_trials}"
            )
        if self.driver_cpus < 0:
            raise ConfigError(f"resources.driver_cpus must be >= 0, got {self.driver_cpus}")


@config
class TrackingSpec(Config):
    """The MLflow server every process of the job logs to (it must be reachable from the
    cluster's nodes: a server URL, or a ``sqlite:////abs/path`` on shared storage)."""

    uri: str
    experiment: str = "hmoe"
    registered_model: str | None = None

    def __post_init__(self) -> None:
        if not self.uri:
            raise ConfigError("tracking.uri must name an MLflow tracking server")
        if not self.experiment:
            raise ConfigError("tracking.experiment must be a non-empty name")


@config
class RuntimeSpec(Config):
    """How the job's processes get their code and environment.

    ``ship_package``: upload the installed ``hmoe`` package with the job (Ray ``py_modules``) so
    the cluster runs exactly the submitter's code; otherwise the cluster's installed hmoe runs.
    ``pip``: extra requirements installed for the job; ``env_vars``: extra environment.
    ``python``: the interpreter of the entrypoint on the head. ``stop_grace_s``: how long a
    stopped job may spend marking its MLflow runs KILLED before Ray kills it.
    """

    ship_package: bool = False
    pip: tuple[str, ...] = ()
    env_vars: Mapping[str, str] = FrozenMap()
    python: str = "python"
    stop_grace_s: int = 60

    def __post_init__(self) -> None:
        if self.stop_grace_s < 1:
            raise ConfigError(f"runtime.stop_grace_s must be >= 1, got {self.stop_grace_s}")
        if not self.python:
            raise ConfigError("runtime.python must name an interpreter")


@config
class JobSpec(Config):
    """One job: a search when ``search`` is given, else a single training run.

    ``overrides``: dotted ExperimentConfig paths applied to the preset (``train.epochs: 2``);
    resources are set under ``resources``, not through ``train.num_workers`` and the like.
    ``storage``: where Ray Tune/Train keep trial folders and checkpoints, one subfolder per job
    (shared storage, e.g. NFS, on a multi-node cluster).
    """

    name: str
    preset: str
    dataset: DatasetRef
    tracking: TrackingSpec
    search: SearchSpec | None = None
    overrides: Mapping[str, Any] = FrozenMap()
    resources: ResourcesSpec = ResourcesSpec()
    storage: str = DEFAULT_STORAGE
    runtime: RuntimeSpec = RuntimeSpec()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"name: {self.name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                "(it prefixes the Ray submission id)"
            )
        clash = sorted(set(self.overrides) & set(_RESERVED_OVERRIDES))
        if clash:
            raise ConfigError(
                f"overrides: set {clash} under resources, storage or tracking, not as overrides"
            )
        if not self.storage.startswith(_ANCHORS):
            raise ConfigError(
                f"storage: {self.storage!r} is relative; give an absolute path (or ~, ${{VAR}} "
                "or s3://)"
            )
        if self.search is None and self.resources.concurrent_trials != 1:
            raise ConfigError("resources.concurrent_trials: a single training run has one trial")

    @property
    def kind(self) -> str:
        return "train" if self.search is None else "tune"

    def cpus_needed(self) -> float:
        """Logical CPUs the job holds at its peak, counted as ``hmoe.tune``/``hmoe.train`` do:
        per trial its workers and its Tune driver, then Ray Data's share and the job driver."""
        from hmoe.platform.api import DATA_CPUS
        from hmoe.platform.search.tune import TRIAL_DRIVER_CPUS

        res = self.resources
        trial_driver = TRIAL_DRIVER_CPUS if self.search is not None else 0.0
        per_trial = res.workers * res.cpus_per_worker + trial_driver
        return res.concurrent_trials * per_trial + DATA_CPUS + res.driver_cpus

    def gpus_needed(self) -> float:
        res = self.resources
        return res.concurrent_trials * res.workers * res.gpus_per_worker


def example_path(name: str) -> Path:
    """The path of a shipped example job spec (``EXAMPLES``)."""
    if name not in EXAMPLES:
        raise ConfigError(f"unknown example job {name!r}; shipped: {list(EXAMPLES)}")
    return Path(str(resources.files("hmoe.jobs") / "examples" / f"{name}.yaml"))


def shipped_dataset_spec(name: str) -> Path | None:
    """The shipped dataset spec ``name`` (``ml-100k``), or ``None`` when there is none."""
    path = Path(str(resources.files("hmoe.platform.data") / "specs" / f"{name}.yaml"))
    return path if path.is_file() else None


def _read_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"job spec not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def load_job(
    source: JobSpec | Mapping[str, Any] | str | Path,
    overrides: Mapping[str, Any] | None = None,
) -> JobSpec:
    """A JobSpec from a spec, a mapping or a YAML file, with dotted ``overrides`` applied
    (``{"tracking.uri": "http://...", "resources.workers": 2}``), strictly.

    ``overrides.<config path>`` (``{"overrides.train.epochs": 3}``) sets one key of the spec's
    ``overrides`` mapping, whatever the spec already lists there; ``validate`` then checks the
    path and value against the preset's ExperimentConfig.
    """
    origin = ""
    if isinstance(source, JobSpec):
        spec = source
    else:
        data = source
        if isinstance(source, (str, Path)):
            origin = f"{source}: "
            data = _read_yaml(Path(source))
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}a job spec must be a mapping, got {type(data).__name__}")
        try:
            spec = JobSpec.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{origin}{err}") from None
    if overrides:
        try:
            spec = apply_overrides(spec, _nest_config_overrides(spec, overrides))
        except ConfigError as err:
            raise ConfigError(f"{origin}override: {err}") from None
    return spec


def _nest_config_overrides(spec: JobSpec, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Fold ``overrides.<path>`` items into the spec's ``overrides`` mapping: its keys are
    dotted config paths themselves, so a dotted spec path cannot reach them one level at a
    time."""
    plain = {k: v for k, v in overrides.items() if not str(k).startswith(OVERRIDES_PREFIX)}
    nested = {
        str(k)[len(OVERRIDES_PREFIX) :]: v
        for k, v in overrides.items()
        if str(k).startswith(OVERRIDES_PREFIX)
    }
    if nested:
        plain["overrides"] = dict(plain.get("overrides", spec.overrides)) | nested
    return plain


def validate(spec: JobSpec, *, check_paths: bool = True) -> None:
    """Check what the schema cannot: the preset, the space, the override paths and (unless
    ``check_paths=False``) that the dataset exists. Raises ``ConfigError`` naming the key."""
    from hmoe.models.zoo import PRESETS
    from hmoe.search_spaces import SPACES

    if spec.preset not in PRESETS:
        raise ConfigError(
            f"{ROOT}.preset: unknown preset {spec.preset!r}; valid: {sorted(PRESETS)}"
        )
    space = spec.search.space if spec.search is not None else None
    if isinstance(space, str) and space not in SPACES:
        raise ConfigError(
            f"{ROOT}.search.space: unknown space {space!r}; valid: {sorted(SPACES)}, or your own "
            "as a mapping {dotted path: {type: ..., ...}}"
        )
    base = _check_overrides(spec)
    if space is not None:
        _check_space(space, base)
    aws = {k: v for k, v in spec.runtime.env_vars.items() if k.startswith(AWS_PREFIX)}
    with storage.environ(aws):
        _check_dataset(spec.dataset, check_paths)
        if check_paths:
            _check_reachable(f"{ROOT}.storage", spec.storage)


def _check_overrides(spec: JobSpec) -> Any:
    """Apply the overrides to the preset's ExperimentConfig, as the job will (data unread)."""
    from hmoe.models.zoo import get_preset
    from hmoe.platform.experiment import DataConfig, ExperimentConfig

    made = get_preset(spec.preset)
    base = ExperimentConfig(
        preset=spec.preset, data=DataConfig(path="unchecked"), model=made.model, loss=made.loss
    )
    try:
        return apply_overrides(base, dict(spec.overrides))
    except ConfigError as err:
        raise ConfigError(f"{ROOT}.overrides: {err}") from None


def _check_space(space: str | Mapping[str, Distribution], base: Any) -> None:
    """Sample the space and apply the samples to the job's base config, as its trials will."""
    from hmoe.search_spaces.custom import check_space, resolve_space

    try:
        check_space(resolve_space(space), lambda params: apply_overrides(base, params))
    except ConfigError as err:
        raise ConfigError(f"{ROOT}.search.space: {err}") from None


def expand(path: str) -> Path:
    """``~`` and ``${VAR}`` expanded, as the job does on the cluster."""
    return Path(os.path.expandvars(path)).expanduser()


def location(path: str) -> str:
    """A URI as given, a local path ``expand``-ed (as text)."""
    return path if storage.is_remote(path) else str(expand(path))


def _check_reachable(where: str, path: str) -> None:
    try:
        storage.check_reachable(path)
    except storage.StorageError as err:
        raise ConfigError(f"{where}: {err}") from None


def _check_dataset(ref: DatasetRef, check_paths: bool) -> None:
    where = f"{ROOT}.dataset"
    if ref.spec is not None and shipped_dataset_spec(ref.spec) is None:
        if not Path(ref.spec).suffix:
            raise ConfigError(f"{where}.spec: {ref.spec!r} is no shipped dataset spec and no file")
        if check_paths and not expand(ref.spec).is_file():
            raise ConfigError(f"{where}.spec: dataset spec file {ref.spec} does not exist")
    if not check_paths:
        return
    for key in ("prepared", "out"):
        value = getattr(ref, key)
        if value is not None:
            _check_reachable(f"{where}.{key}", value)
    prepared = ref.prepared
    if prepared is not None and not storage.exists(storage.join(location(prepared), MANIFEST)):
        raise ConfigError(
            f"{where}.prepared: {ref.prepared} is not a prepared dataset (no {MANIFEST}); "
            "prepare it first (hmoe data prepare) or give dataset.spec"
        )
    if ref.raw_root is not None and not expand(ref.raw_root).is_dir():
        raise ConfigError(f"{where}.raw_root: raw data folder {ref.raw_root} does not exist")
