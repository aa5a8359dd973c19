"""Logging a trained model into its MLflow run, registering it, and loading it back.

MLflow 3's default ``pt2`` format (``torch.export``) takes positional tensors, while an hmoe
model reads a ``Batch`` dict; ``PositionalModel`` adapts one to the other with a fixed input
order that is stored in the model's metadata. Every preset of ``hmoe.models.zoo`` exports
(tests/models/test_export.py); a forward that cannot be exported (dynamic routing, Python
control flow on data) falls back to ``pickle`` under ``auto`` (platform notes, pitfall P6).
``load_model`` hides the difference: it returns a callable ``Batch -> logits [B, K]``.
A model trained with the ``torchrec`` embedding backend is logged with its tables gathered into
the ``torch`` backend (``zoo.with_embedding_backend``), so it loads and predicts where TorchRec
is not installed, with the same outputs.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from hmoe.models.losses import fused_table_modules
from hmoe.models.zoo import with_embedding_backend
from hmoe.platform.batches import Batch
from hmoe.platform.tracking import TAG_MODEL_FORMAT, TAG_MODEL_URI, MlflowRun, fluent_store

__all__ = ["MODEL_NAME", "PositionalModel", "load_model", "log_model", "register_model"]

MODEL_NAME = "model"
INPUTS_METADATA = "hmoe_inputs"
FORMATS = ("pt2", "pickle")
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


def log_model(
    run: MlflowRun,
    model: nn.Module,
    example: Batch,
    input_names: Sequence[str],
    model_format: str = "auto",
) -> tuple[str, str]:
    """Log ``model`` (on CPU, eval mode; ``torchrec`` tables as ``torch`` ones) with an input
    example; returns (model URI, format).

    ``model_format``: ``pt2``, ``pickle``, or ``auto`` (``pt2``, falling back to ``pickle``
    when the forward cannot be exported). The URI and the format are also set as run tags.
    """
    import mlflow.pytorch

    if model_format not in (*FORMATS, "auto"):
        raise ValueError(f"model_format must be one of {[*FORMATS, 'auto']}, got {model_format!r}")
    # torch.compile's wrapper: export and pickle the module it compiles, not the wrapper
    model = getattr(model, "_orig_mod", model).to("cpu").eval()
    if fused_table_modules(model):
        model = with_embedding_backend(model, "torch")
    names = [n for n in input_names if n in example]
    arrays = tuple(example[n].detach().cpu().numpy() for n in names)
    plain = PositionalModel(model, names)  # importable class: what pickle stores
    tried = ["pt2", "pickle"] if model_format == "auto" else [model_format]
    last_error: Exception | None = None
    for fmt in tried:
        try:
            with _active_run(run):
                info = mlflow.pytorch.log_model(
                    _exportable(model, names) if fmt == "pt2" else plain,
                    name=MODEL_NAME,
                    # pt2 traces positional tensors; pickle keeps the example as named arrays
                    input_example=arrays if fmt == "pt2" else dict(zip(names, arrays, strict=True)),
                    signature=_signature(names, arrays) if fmt == "pt2" else None,
                    serialization_format=fmt,
                    metadata={INPUTS_METADATA: names},
                )
        except Exception as err:  # torch.export raises many types for unexportable code
            _LOG.warning("logging the model as %s failed (%s); trying the next format", fmt, err)
            last_error = err
            continue
        run.set_tags({TAG_MODEL_URI: info.model_uri, TAG_MODEL_FORMAT: fmt})
        return info.model_uri, fmt
    raise RuntimeError(f"could not log the model in any of {tried}") from last_error


def _signature(names: Sequence[str], arrays: Sequence[Any]) -> Any:
    """A TensorSpec signature (what ``pt2`` requires), dynamic in the batch dimension only."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    specs = [
        TensorSpec(a.dtype, (-1, *a.shape[1:]), name=n) for n, a in zip(names, arrays, strict=True)
    ]
    return ModelSignature(inputs=Schema(specs))


def register_model(uri: str, model_uri: str, name: str) -> str:
    """Register ``model_uri`` under ``name`` in the Model Registry; returns the version."""
    import mlflow

    with fluent_store(uri):
        version = mlflow.register_model(model_uri, name)
    return str(version.version)


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
