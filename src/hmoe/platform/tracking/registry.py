"""Logging a trained model into its MLflow run, registering it, and loading it back.

MLflow 3's default ``pt2`` format (``torch.export``) takes positional tensors, while an hmoe
model reads a ``Batch`` dict; ``PositionalModel`` adapts one to the other with a fixed input
order that is stored in the model's metadata. Every preset of ``hmoe.models.zoo`` exports
(tests/models/test_export.py); a forward that cannot be exported (dynamic routing, Python
control flow on data) falls back to ``pickle`` under ``auto``.
``load_model`` hides the difference: it returns a callable ``Batch -> logits [B, K]``.
A model trained with the ``torchrec`` embedding backend is logged with its tables gathered into
the ``torch`` backend (``zoo.with_embedding_backend``), so it loads and predicts where TorchRec
is not installed, with the same outputs.

A model logged with its prepared dataset also gets a ``python_function`` flavor that scores a
pandas DataFrame of raw feature values (``hmoe.platform.tracking.serving``), so ``mlflow.pyfunc``
and ``mlflow models serve`` work on it. ``register_model`` tags the new version (dataset, metric,
source run, search) and moves the ``champion`` alias to it only when it beats the current
champion's validation metric on the same dataset.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hmoe.models.losses import fused_table_modules
from hmoe.models.zoo import with_embedding_backend
from hmoe.platform.core.metrics import metric_mode
from hmoe.platform.data.batches import Batch
from hmoe.platform.tracking.runs import (
    TAG_DATASET_HASH,
    TAG_MODEL_FORMAT,
    TAG_MODEL_URI,
    TAG_SEARCH,
    MlflowRun,
    fluent_store,
    open_store,
)

__all__ = [
    "CHAMPION_ALIAS",
    "MODEL_NAME",
    "PositionalModel",
    "Registration",
    "champion_beaten",
    "load_model",
    "log_model",
    "register_model",
    "servable",
]

MODEL_NAME = "model"
INPUTS_METADATA = "hmoe_inputs"
FORMATS = ("pt2", "pickle")
CHAMPION_ALIAS = "champion"  # the registry alias of the best version on its dataset
TAG_VERSION_RUN = "hmoe.run_id"  # model version tags (with hmoe.dataset_hash, hmoe.search)
TAG_VERSION_METRIC = "hmoe.metric"  # the validation metric the version was chosen by
TAG_VERSION_VALUE = "hmoe.metric_value"  # ... and its value (the run's best epoch)
#: the distributions a logged model loads with: torch runs the network (either format),
#: cloudpickle reads the pickle format, pandas and pyarrow the raw-feature flavor's frame and
#: vocabularies. Written out, not inferred: MLflow infers them by loading the model again in a
#: subprocess, about as long as the export itself, for every run and trial.
MODEL_REQUIREMENTS = ("torch", "mlflow", "cloudpickle", "numpy", "pandas", "pyarrow")
_LOG = logging.getLogger(__name__)


class PositionalModel(nn.Module):
    """``forward(x0, x1, ...)`` -> ``model(dict(zip(names, xs)))``, for ``torch.export``.

    ``torch.export`` binds inputs by the forward's signature, so each instance advertises one
    positional parameter per input (``x0 .. x{n-1}``) instead of ``*tensors``.

    Args:
        model: an hmoe model (``forward(batch) -> logits [B, K]``).
        names: the Batch keys, in the positional order of the exported graph.

    Example:
        >>> wrapped = PositionalModel(model, ["item", "user"])  # doctest: +SKIP
        >>> logits_BK = wrapped(item_B, user_B)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors, strict=True)))


def _exportable(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A ``PositionalModel`` subclass whose forward signature lists every input by name."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [
        inspect.Parameter(f"x{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for i in range(len(names))
    ]

    def forward(self: PositionalModel, *tensors: torch.Tensor) -> torch.Tensor:
        return PositionalModel.forward(self, *tensors)

    forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    cls = type("ExportablePositionalModel", (PositionalModel,), {"forward": forward})
    return cls(model, names)


@contextlib.contextmanager
def _active_run(run: MlflowRun) -> Iterator[None]:
    """Attach the fluent API (which ``log_model`` needs) to ``run`` and detach afterwards."""
    import mlflow

    # nested: the caller may already have a fluent run open in this process
    with (
        fluent_store(run.uri),
        mlflow.start_run(run_id=run.run_id, nested=mlflow.active_run() is not None),
    ):
        yield


class _PytorchWithPyfunc:
    """A flavor module for ``Model.log``: MLflow's pytorch flavor, then the raw-feature
    ``python_function`` flavor of ``hmoe.platform.tracking.serving`` (when the dataset allows
    it)."""

    def __init__(self, data_dir: str | None, names: Sequence[str], arrays: Sequence[Any]) -> None:
        self.data_dir = data_dir
        self.names = list(names)
        self.arrays = list(arrays)

    def save_model(self, path: str, mlflow_model: Any, **kwargs: Any) -> None:
        import mlflow.pytorch
        from mlflow.models.model import MLMODEL_FILE_NAME
        from mlflow.models.utils import _save_example

        from hmoe.platform.tracking import serving

        mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        spec = None
        if self.data_dir is not None:
            spec = serving.encoding_spec(self.data_dir, self.names, self.arrays)
        if spec is None:
            return
        serving.add_pyfunc_flavor(mlflow_model, path, self.data_dir, spec)
        # the flavor's input is raw feature columns: the tensor signature and example of the
        # pytorch flavor would make MLflow reject (and fail to validate) such a frame
        for name in ("input_example.json", "serving_input_example.json"):
            Path(path, name).unlink(missing_ok=True)
        mlflow_model.signature = None
        mlflow_model.saved_input_example_info = None
        batch = dict(zip(self.names, self.arrays, strict=True))
        _save_example(mlflow_model, serving.raw_example(path, spec, batch), path)
        mlflow_model.save(str(Path(path, MLMODEL_FILE_NAME)))


def servable(model: nn.Module) -> nn.Module:
    """A copy of ``model``, the module ``log_model`` exports: on CPU, in eval mode, ``torchrec``
    tables copied into ``torch`` ones (``torch.export`` cannot trace FBGEMM's fused
    collection, and the copy loads where TorchRec is not installed).

    ``model`` itself is left as it was: same device, training mode and parameters, so the
    caller may go on training it."""
    # torch.compile's wrapper: export and pickle the module it compiles, not the wrapper
    model = getattr(model, "_orig_mod", model)
    if fused_table_modules(model):
        return with_embedding_backend(model, "torch")  # a model built anew, on CPU
    return _cpu_copy(model).eval()


def _cpu_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are copied straight to CPU (a
    ``deepcopy`` then ``.to("cpu")`` would first hold a second copy on the model's device)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo)


def log_model(
    run: MlflowRun,
    model: nn.Module,
    example: Batch,
    input_names: Sequence[str],
    model_format: str = "auto",
    data_dir: str | None = None,
) -> tuple[str, str]:
    """Log ``servable(model)`` (a copy on CPU, eval mode; ``torchrec`` tables as ``torch``
    ones) with an input example; returns (model URI, format).

    ``model_format``: ``pt2``, ``pickle``, or ``auto`` (``pt2``, falling back to ``pickle``
    when the forward cannot be exported). The URI and the format are also set as run tags.
    ``data_dir``: the prepared dataset, whose vocabularies the ``python_function`` flavor
    encodes raw values with (``None``: no such flavor).
    """
    from mlflow.models import Model

    if model_format not in (*FORMATS, "auto"):
        raise ValueError(f"model_format must be one of {[*FORMATS, 'auto']}, got {model_format!r}")
    model = servable(model)
    names = [n for n in input_names if n in example]
    arrays = tuple(example[n].detach().cpu().numpy() for n in names)
    plain = PositionalModel(model, names)  # importable class: what pickle stores
    tried = ["pt2", "pickle"] if model_format == "auto" else [model_format]
    last_error: Exception | None = None
    for fmt in tried:
        try:
            with _active_run(run):
                info = Model.log(
                    artifact_path=None,
                    flavor=_PytorchWithPyfunc(data_dir, names, arrays),
                    pytorch_model=_exportable(model, names) if fmt == "pt2" else plain,
                    name=MODEL_NAME,
                    # pt2 traces positional tensors; pickle keeps the example as named arrays
                    input_example=arrays if fmt == "pt2" else dict(zip(names, arrays, strict=True)),
                    signature=_signature(names, arrays) if fmt == "pt2" else None,
                    serialization_format=fmt,
                    metadata={INPUTS_METADATA: names},
                    pip_requirements=pip_requirements(),
                )
        except Exception as err:  # torch.export raises many types for unexportable code
            _LOG.warning("logging the model as %s failed (%s); trying the next format", fmt, err)
            last_error = err
            continue
        run.set_tags({TAG_MODEL_URI: info.model_uri, TAG_MODEL_FORMAT: fmt})
        return info.model_uri, fmt
    raise RuntimeError(f"could not log the model in any of {tried}") from last_error


def pip_requirements() -> list[str]:
    """``MODEL_REQUIREMENTS`` pinned to this process's versions, without local labels
    (``torch==2.13.0``, not ``2.13.0+cpu``: a package index serves the public version)."""
    from importlib.metadata import version

    from packaging.version import Version

    return [f"{name}=={Version(version(name)).public}" for name in MODEL_REQUIREMENTS]


def _signature(names: Sequence[str], arrays: Sequence[Any]) -> Any:
    """A TensorSpec signature (what ``pt2`` requires), dynamic in the batch dimension only."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    specs = [
        TensorSpec(a.dtype, (-1, *a.shape[1:]), name=n) for n, a in zip(names, arrays, strict=True)
    ]
    return ModelSignature(inputs=Schema(specs))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Registration:
    """What a registered version is: its run, the dataset and the validation metric it was
    chosen by (the version's tags), and the search or job that made it."""

    run_id: str
    dataset_hash: str
    metric: str
    value: float
    search: str | None = None


def register_model(uri: str, model_uri: str, name: str, about: Registration) -> str:
    """Register ``model_uri`` under ``name``, tag and describe the version from ``about``, and
    give it the ``champion`` alias when ``champion_beaten``; returns the version."""
    import mlflow

    with fluent_store(uri):
        version = str(mlflow.register_model(model_uri, name).version)
    client = open_store(uri)
    tags = {
        TAG_VERSION_RUN: about.run_id,
        TAG_DATASET_HASH: about.dataset_hash,
        TAG_VERSION_METRIC: about.metric,
        TAG_VERSION_VALUE: repr(about.value),
    } | ({TAG_SEARCH: about.search} if about.search else {})
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(
        name,
        version,
        description=f"{about.metric} {about.value:.4f} on dataset {about.dataset_hash} "
        f"(run {about.run_id}{', search ' + about.search if about.search else ''})",
    )
    if champion_beaten(client, name, about):
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return version


def champion_beaten(client: Any, name: str, about: Registration) -> bool:
    """Whether a model described by ``about`` should become ``name``'s champion: there is none
    yet, or the champion was chosen by the same metric on the same dataset and ``about`` is
    strictly better (a champion of another dataset or metric cannot be compared: it stays)."""
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:  # no alias yet
        return True
    tags = champion.tags
    if (
        tags.get(TAG_DATASET_HASH) != about.dataset_hash
        or tags.get(TAG_VERSION_METRIC) != about.metric
    ):
        return False
    current = float(tags.get(TAG_VERSION_VALUE, "nan"))
    if math.isnan(current):
        return not math.isnan(about.value)
    if metric_mode(about.metric) == "max":
        return about.value > current
    return about.value < current


def load_model(uri: str, model_uri: str) -> Callable[[Batch], torch.Tensor]:
    """Load a logged or registered model (``models:/name/1``) as ``Batch -> logits [B, K]``."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import get_model_info

    with fluent_store(uri):
        names: list[str] = list(get_model_info(model_uri).metadata[INPUTS_METADATA])
        loaded: Any = mlflow.pytorch.load_model(model_uri)

    @torch.no_grad()
    def predict(batch: Batch) -> torch.Tensor:
        return loaded(*(batch[n] for n in names))

    return predict
