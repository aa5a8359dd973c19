"""The logged model as generic MLflow tools use it: ``mlflow.pyfunc`` on raw feature values,
``mlflow models serve`` answering a request, and the registry's ``champion`` alias."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.platform.prepared import FIRST_INDEX, write_prepared

SERVE_START_TIMEOUT_S = 180
UNSEEN = "never-seen-value"


def _raw_frame(batch, schema):
    """The encoded rows as raw values (``<feature>-<index>``), one row's item made unknown."""
    import pandas as pd

    def raw(name, index):
        if index < FIRST_INDEX:  # padding stays missing, OOV becomes a value the model never saw
            return None if index == 0 else UNSEEN
        return f"{name}-{index}"

    columns = {}
    for feature in schema.categorical:
        rows = batch[feature.name].tolist()
        if feature.multi_valued:
            columns[feature.name] = [
                [v for v in (raw(feature.name, i) for i in r) if v] for r in rows
            ]
        else:
            columns[feature.name] = [raw(feature.name, i) for i in rows]
    for numeric in (*schema.numeric, *schema.similarity):
        columns[numeric.name] = batch[numeric.name].double().tolist()
    frame = pd.DataFrame(columns)
    frame.loc[0, "item"] = UNSEEN
    return frame


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_score(model_uri: str, uri: str, frame, tmp_path: Path) -> list:
    """Start ``mlflow models serve`` on a free loopback port, score ``frame``, stop it."""
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    server = subprocess.Popen(
        [*mlflow_cli, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        # the scoring server runs the venv's uvicorn, found on PATH as in an activated venv
        env=os.environ
        | {
            "MLFLOW_TRACKING_URI": uri,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server and its workers stop together
    )
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


@pytest.mark.slow
def test_the_logged_model_scores_raw_values_served_and_registered_as_champion(
    tmp_path, monkeypatch
):
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from hmoe.platform.api import resolve
    from hmoe.platform.data.batches import input_columns, load_schema, read_split
    from hmoe.platform.experiment import build_experiment
    from hmoe.platform.tracking.registry import Registration, log_model, register_model
    from hmoe.platform.tracking.runs import MlflowRun, fluent_store
    from hmoe.platform.training.trainer import build_model

    monkeypatch.chdir(tmp_path)
    data = write_prepared(tmp_path / "tiny", sequences=False)
    cfg = resolve(build_experiment("debug", data), tmp_path)
    uri = cfg.tracking.uri
    schema = load_schema(data)
    model, _ = build_model(cfg, schema)
    model.eval()
    val = {k: v[:16] for k, v in read_split(data, "val", schema).items()}
    run = MlflowRun.create(uri, "serving", "serving", {})
    model_uri, fmt = log_model(run, model, val, input_columns(schema), "auto", cfg.data.path)
    assert fmt == "pt2"

    frame = _raw_frame(val, schema)
    encoded = dict(val) | {"item": val["item"].clone()}
    encoded["item"][0] = 1  # the unknown value -> OOV
    with torch.no_grad():
        expected = torch.sigmoid(model(encoded)).numpy()
    with fluent_store(uri):
        scored = mlflow.pyfunc.load_model(model_uri).predict(frame)
    assert list(scored.columns) == list(schema.tasks)
    np.testing.assert_allclose(scored.to_numpy(), expected, atol=1e-6)

    served = _serve_and_score(model_uri, uri, frame, tmp_path)
    got = np.array([[row[t] for t in schema.tasks] for row in served])
    np.testing.assert_allclose(got, expected, atol=1e-6)

    # the champion alias moves only to a strictly better version on the same dataset
    client = MlflowClient(uri)
    name = "serving-best"

    def register(value: float, dataset: str = "d1", metric: str = "val_auc") -> str:
        about = Registration(run_id=run.run_id, dataset_hash=dataset, metric=metric, value=value)
        return register_model(uri, model_uri, name, about)

    def champion() -> str:
        return str(client.get_model_version_by_alias(name, "champion").version)

    first = register(0.70)
    assert champion() == first
    tags = client.get_model_version(name, first).tags
    assert tags["hmoe.dataset_hash"] == "d1" and tags["hmoe.metric"] == "val_auc"
    assert tags["hmoe.run_id"] == run.run_id
    register(0.65)  # worse
    assert champion() == first
    better = register(0.75)
    assert champion() == better
    register(0.99, dataset="d2")  # another dataset cannot be compared
    register(0.30, metric="val_logloss")  # nor another metric
    assert champion() == better
