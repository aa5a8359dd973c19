"""``hmoe.tune`` end to end: nested MLflow runs, the registered best model, interrupt + resume."""

from __future__ import annotations

import os
import signal

import pytest

from tests.platform.prepared import write_prepared


class _InterruptOnce:
    """A Tune callback that interrupts the search (SIGUSR1, which Tune handles like Ctrl+C:
    it saves its state and stops) when the first trial completes. Once per marker file, since
    ``Tuner.restore`` re-creates the callbacks from the saved state."""

    def __new__(cls, marker: str):
        from ray import tune

        class Interrupt(tune.Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                if not os.path.exists(marker):
                    open(marker, "w").close()
                    os.kill(os.getpid(), signal.SIGUSR1)

        return Interrupt()


@pytest.mark.ray
@pytest.mark.slow
def test_tune_interrupted_and_resumed_nests_runs_and_registers_the_best(
    ray_cluster, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    import hmoe
    from tests.platform.mlflow_checks import (
        check_registered_model_reproduces_val_auc,
        check_run_contents,
    )

    data = write_prepared(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    overrides = {
        "train.epochs": 1,
        "train.batch_size": 128,
        "train.cpus_per_worker": 0.5,
        "tracking.model_format": "pickle",  # skip the export attempt: this test is about Tune
    }
    marker = str(tmp_path / "interrupted")
    from hmoe.platform.tune import SearchInterrupted

    with pytest.raises(SearchInterrupted, match="resume"):
        hmoe.tune("debug", "smoke", data, 2, overrides, callbacks=[_InterruptOnce(marker)])
    assert os.path.exists(marker)
    with pytest.raises(ValueError, match="resume"):  # same search again without resume
        hmoe.tune("debug", "smoke", data, 2, overrides)
    result = hmoe.tune("debug", "smoke", data, 2, overrides, resume=True)

    assert result.num_trials == 2 and result.num_errors == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["hmoe.space"] == "smoke"
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2  # one child per trial, even across the interruption
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"train.lr", "model.combine.method"} <= set(child.data.params)
        check_run_contents(client, child.info.run_id, epochs=1)
    best = client.get_run(result.best_run_id)
    assert best.data.metrics["val_auc"] == max(c.data.metrics["val_auc"] for c in children)
    assert result.best_config.train.lr == pytest.approx(result.best_params["train.lr"])
    assert set(result.best_per_task) == {"click"}
    check_registered_model_reproduces_val_auc(
        uri, client, result.registered_model, result.model_version, result.best_run_id, data
    )
