"""MLflow tracking against a sqlite store in tmp_path: params, batched metrics, artifacts,
tags, model logging with the pt2 -> pickle fallback, registry round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from hmoe.platform.tracking.registry import Registration, load_model, log_model, register_model
from hmoe.platform.tracking.runs import (
    CONFIG_ARTIFACT,
    MlflowRun,
    flatten,
    resolve_tracking_uri,
)


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    # one store for the module: creating the sqlite schema is the slow part of each test
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_flatten_gives_dotted_override_paths():
    nested = {"train": {"lr": 0.1, "sizes": [1, 2]}, "model": {"experts": {"counts": {"mlp": 2}}}}
    assert flatten(nested) == {
        "train.lr": 0.1,
        "train.sizes": [1, 2],
        "model.experts.counts.mlp": 2,
    }
    assert flatten({"empty": {}}) == {"empty": {}}


def test_resolve_tracking_uri(tmp_path):
    assert (
        resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    )
    assert resolve_tracking_uri(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("runs", tmp_path) == (tmp_path / "runs").as_uri()


def test_run_logs_config_params_artifact_tags_and_batched_metrics(uri, monkeypatch):
    run = MlflowRun.create(uri, "exp", "debug-abc", {"hmoe.preset": "debug"})
    config = {"preset": "debug", "train": {"lr": 0.01, "dims": [4, 8]}, "note": None}
    run.log_config(config, {"preset": "debug", "train.lr": 0.01, "train.dims": [4, 8]})
    run.log_dataset("tiny", "0123abcd", "/data/tiny", {"rows": {"train": 3}})
    calls = []
    original = run.client.log_batch
    monkeypatch.setattr(
        run.client, "log_batch", lambda *a, **k: calls.append(k) or original(*a, **k)
    )
    run.log_metrics({"val_auc": 0.7, "val_logloss": 0.6, "bad": math.nan}, step=0)
    run.log_metrics({"val_auc": 0.8, "val_logloss": 0.5}, step=1)
    assert len(calls) == 2 and len(calls[0]["metrics"]) == 2  # one request per step, NaN dropped
    run.finish()
    client = MlflowClient(uri)
    data = client.get_run(run.run_id)
    assert data.info.status == "FINISHED" and data.info.run_name == "debug-abc"
    assert data.data.params == {
        "preset": "debug",
        "train.lr": "0.01",
        "train.dims": "[4, 8]",
    }  # the whole config is the artifact
    [dataset] = data.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("tiny", "0123abcd")
    assert json.loads(dataset.dataset.source) == {"uri": "/data/tiny"}
    assert [(t.key, t.value) for t in dataset.tags] == [("mlflow.data.context", "training")]
    assert data.data.tags["hmoe.preset"] == "debug"
    assert [m.value for m in client.get_metric_history(run.run_id, "val_auc")] == [0.7, 0.8]
    saved = json.loads(Path(client.download_artifacts(run.run_id, CONFIG_ARTIFACT)).read_text())
    assert saved == config
    assert run.seconds > 0.0


@pytest.mark.slow
def test_logging_works_under_an_already_active_fluent_run(uri):
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_name="user-parent") as outer:
            run = MlflowRun.create(uri, "exp", "child", {"mlflow.parentRunId": outer.info.run_id})
            run.log_metrics({"val_auc": 0.5}, step=0)
            model = nn.Linear(2, 1)
            example = {"x": torch.randn(4, 2), "labels": torch.zeros(4, 1)}
            _model_uri, fmt = log_model(run, _DictModel(model), example, ["x"], "pickle")
            assert mlflow.active_run().info.run_id == outer.info.run_id  # left as it was
    finally:
        mlflow.set_tracking_uri(None)
    assert fmt == "pickle" and MlflowClient(uri).get_run(run.run_id).data.metrics["val_auc"] == 0.5


class _DictModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch):
        return self.inner(batch["x"])


class _Branchy(_DictModel):
    """Python control flow on tensor data: torch.export cannot trace it (the pt2 fallback)."""

    def forward(self, batch):
        out = self.inner(batch["x"])
        return out if bool((batch["x"] > 0).any()) else -out


@pytest.mark.slow
@pytest.mark.parametrize(("model_cls", "expected"), [(_DictModel, "pt2"), (_Branchy, "pickle")])
def test_model_logging_registry_and_reload(uri, model_cls, expected):
    torch.manual_seed(0)
    model = model_cls(nn.Linear(3, 2))
    example = {"x": torch.randn(8, 3), "labels": torch.zeros(8, 2)}
    run = MlflowRun.create(uri, "exp", "m", {})
    model_uri, fmt = log_model(run, model, example, ["x"], "auto")
    assert fmt == expected and run.tags()["hmoe.model_uri"] == model_uri
    assert run.tags()["hmoe.model_format"] == expected
    mlflow.set_tracking_uri(uri)
    try:
        info = mlflow.models.get_model_info(model_uri)
        if expected == "pickle":  # the example is kept as named arrays
            assert info.saved_input_example_info is not None
        else:  # pt2 traces a tuple of tensors (not stored as a file) and keeps its TensorSpecs
            assert [spec.name for spec in info.signature.inputs.inputs] == ["x"]
    finally:
        mlflow.set_tracking_uri(None)
    name = f"reg-{expected}"
    about = Registration(run_id=run.run_id, dataset_hash="d0", metric="val_auc", value=0.5)
    version = register_model(uri, model_uri, name, about)
    predict = load_model(uri, f"models:/{name}/{version}")
    batch = {"x": torch.randn(5, 3)}  # another batch size than the example: dynamic batch dim
    torch.testing.assert_close(predict(batch), model(batch))


def test_a_logged_model_pins_its_requirements_without_loading_it_again(uri, monkeypatch):
    """MLflow's inference would import and load the model in a subprocess (seconds per run)."""
    from importlib.metadata import version

    inferred = []
    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, **k: inferred.append(a))
    run = MlflowRun.create(uri, "exp", "m", {})
    model_uri, fmt = log_model(run, _DictModel(nn.Linear(2, 1)), {"x": torch.zeros(2, 2)}, ["x"])
    assert fmt == "pt2" and inferred == []
    mlflow.set_tracking_uri(uri)
    try:
        requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri))
    finally:
        mlflow.set_tracking_uri(None)
    lines = requirements.read_text().split()
    torch_version = version("torch").split("+")[0]  # the public version, which an index serves
    assert f"torch=={torch_version}" in lines and f"mlflow=={version('mlflow')}" in lines
    assert {line.split("==")[0] for line in lines} >= {"cloudpickle", "pandas", "pyarrow"}


def test_log_model_rejects_an_unknown_format(uri):
    run = MlflowRun.create(uri, "exp", "m", {})
    with pytest.raises(ValueError, match="onnx"):
        log_model(run, _DictModel(nn.Linear(2, 1)), {"x": torch.zeros(2, 2)}, ["x"], "onnx")


def test_fluent_store_restores_the_environment_exactly(tmp_path, monkeypatch):
    """MLflow's set_tracking_uri also sets MLFLOW_TRACKING_URI; left behind, every later hmoe
    command of this process (and its subprocesses) would track into that store."""
    import os

    from hmoe.platform.tracking.runs import TRACKING_URI_ENV, fluent_store

    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    with fluent_store(f"sqlite:///{tmp_path / 'a.db'}"):
        assert os.environ[TRACKING_URI_ENV].endswith("a.db")
    assert TRACKING_URI_ENV not in os.environ
    monkeypatch.setenv(TRACKING_URI_ENV, "sqlite:///kept.db")
    with fluent_store(f"sqlite:///{tmp_path / 'b.db'}"):
        pass
    assert os.environ[TRACKING_URI_ENV] == "sqlite:///kept.db"
