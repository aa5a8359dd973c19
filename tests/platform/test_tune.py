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
    from hmoe.platform.search.tune import SearchInterrupted

    with pytest.raises(SearchInterrupted, match=r"with 1 of 2 trials unfinished.* --resume"):
        hmoe.tune("debug", "smoke", data, 2, overrides, callbacks=[_InterruptOnce(marker)])
    assert os.path.exists(marker)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    stopped = client.search_runs([client.get_experiment_by_name("hmoe").experiment_id])
    assert stopped and "RUNNING" not in {r.info.status for r in stopped}
    (parent,) = [r for r in stopped if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "KILLED"
    assert "1 of 2 trials unfinished" in parent.data.tags["hmoe.failure_reason"]
    with pytest.raises(ValueError, match="resume"):  # same search again without resume
        hmoe.tune("debug", "smoke", data, 2, overrides)
    result = hmoe.tune("debug", "smoke", data, 2, overrides, resume=True)

    assert result.num_trials == 2 and result.num_errors == 0
    assert result.parent_run_id == parent.info.run_id  # resumed into the same parent run
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["hmoe.space"] == "smoke"
    assert "hmoe.failure_reason" not in parent.data.tags
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2  # one child per trial, even across the interruption
    for child in children:
        assert child.info.status == "FINISHED"
        check_run_contents(
            client, child.info.run_id, epochs=1, searched=("train.lr", "model.combine.method")
        )
        assert "lr=" in child.info.run_name.split(" · ")[0]  # the sampled values lead the name
    best = client.get_run(result.best_run_id)
    assert best.data.metrics["val_auc"] == max(c.data.metrics["val_auc"] for c in children)
    assert result.best_config.train.lr == pytest.approx(result.best_params["train.lr"])
    assert set(result.best_per_task) == {"click"}
    check_registered_model_reproduces_val_auc(
        uri, client, result.registered_model, result.model_version, result.best_run_id, data
    )


def test_an_infeasible_sample_is_a_failed_trial_with_its_reason(tmp_path, monkeypatch):
    """No Ray cluster needed: the trial driver refuses the config before building a trainer."""
    import ray.tune
    from mlflow import MlflowClient

    from hmoe.platform.api import resolve
    from hmoe.platform.experiment import build_experiment
    from hmoe.platform.search.tune import FailedBefore, InfeasibleTrial, trial_driver
    from hmoe.platform.tracking.runs import MlflowRun, owner_tags

    class _Context:
        def get_trial_id(self):
            return "abc123"

    monkeypatch.setattr(ray.tune, "get_context", lambda: _Context())
    data = write_prepared(tmp_path / "tiny")
    cfg = resolve(build_experiment("dcnv2", data), tmp_path)
    parent = MlflowRun.create(cfg.tracking.uri, cfg.tracking.experiment, "search", {})
    settings = {"base": cfg.to_dict(), "parent": parent.run_id, "space": "experts",
                "search": "s", "storage": str(tmp_path / "trials"),
                "owner": owner_tags(), "tags": {"hmoe.job_id": "job-1"}}  # fmt: skip
    zero = {"model.experts.counts.dcnv2": 0, "model.experts.counts.mlp": 0}
    with pytest.raises(InfeasibleTrial, match="no expert at all"):
        trial_driver(zero, settings)
    client = MlflowClient(cfg.tracking.uri)
    [child] = client.search_runs(
        [client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
    )
    assert child.info.status == "FAILED"
    assert "no expert at all" in child.data.tags["hmoe.failure_reason"]
    assert (
        child.data.tags["hmoe.trial_id"] == "abc123" and child.data.tags["hmoe.space"] == "experts"
    )
    assert child.data.tags["hmoe.job_id"] == "job-1"  # the search's extra tags reach its trials
    assert not (tmp_path / "trials").exists()  # no Train run was started
    # Tune retries a failed trial (train.max_failures, for a lost node): the retry of a
    # deterministic failure fails at once with the recorded reason
    with pytest.raises(FailedBefore, match=r"^infeasible sample .*no expert at all"):
        trial_driver(zero, settings)
    assert not (tmp_path / "trials").exists()


def test_resume_without_saved_state_fails_before_any_ray_or_mlflow_work(tmp_path, monkeypatch):
    from hmoe.config import ConfigError
    from hmoe.platform.search.tune import tune

    data = write_prepared(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="nothing to resume"):
        tune("debug", "smoke", data, 2, resume=True)
    assert not (tmp_path / "mlflow.db").exists()  # no parent run was created
