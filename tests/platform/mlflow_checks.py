"""Shared MLflow assertions of the train and tune tests (a local sqlite store in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hmoe.platform.core.metrics import auc
from hmoe.platform.data.batches import load_schema, read_split
from hmoe.platform.experiment import HEADLINE_PARAMS
from hmoe.platform.tracking.registry import load_model
from hmoe.platform.tracking.runs import CONFIG_ARTIFACT

TAGS = ("hmoe.preset", "hmoe.config_hash", "hmoe.dataset_hash", "hmoe.git_commit")


def check_run_contents(client, run_id: str, epochs: int, searched: tuple[str, ...] = ()) -> None:
    """Params (headline + ``searched``), per-epoch metrics, tags, the dataset input and the
    config artifact of one training run."""
    run = client.get_run(run_id)
    assert run.data.params["preset"] == "debug"
    assert set(run.data.params) == set(HEADLINE_PARAMS) | set(searched)
    for tag in TAGS:
        assert run.data.tags.get(tag), tag
    if run.data.tags["mlflow.source.name"] == "hmoe train":
        assert run.info.run_name == f"debug-{run.data.tags['hmoe.config_hash']}"
    else:  # a trial: its sampled values first, then preset and trial id
        assert run.info.run_name.endswith(f" · debug · {run.data.tags['hmoe.trial_id']}")
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.digest == run.data.tags["hmoe.dataset_hash"]
    for key in ("val_auc", "val_auc_click", "val_logloss_click", "val_gauc_click", "test_auc"):
        assert key in run.data.metrics, key
    assert run.data.metrics["best_epoch"] >= 1
    # the analysis monitor (train.monitor, on by default), handed to the loop as its hook
    assert any(k.startswith("diagnostics/ia_") for k in run.data.metrics), sorted(run.data.metrics)
    history = client.get_metric_history(run_id, "val_auc")
    assert sorted({m.step for m in history}) == list(range(1, epochs + 1))
    folder = client.download_artifacts(run_id, CONFIG_ARTIFACT)
    config = json.loads(Path(folder).read_text())
    assert (
        config["preset"] == "debug" and float(run.data.params["train.lr"]) == config["train"]["lr"]
    )


def check_registered_model_reproduces_val_auc(
    uri: str, client, name: str, version: str, run_id: str, data_dir: Path
) -> None:
    """The registered model, loaded back, gives the logged best validation AUC."""
    mv = client.get_model_version(name, version)
    assert mv.run_id == run_id
    predict = load_model(uri, f"models:/{name}/{version}")
    schema = load_schema(data_dir)
    val = read_split(data_dir, "val", schema)
    logits = predict(val)
    logged = client.get_run(run_id).data.metrics["val_auc"]  # the best epoch's
    assert auc(val["labels"][:, 0].numpy(), logits[:, 0].numpy()) == pytest.approx(logged, abs=1e-6)
