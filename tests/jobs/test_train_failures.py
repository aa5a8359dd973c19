"""``hmoe train`` on Ray: a deterministic error in a worker fails the run once, with its cause."""

from __future__ import annotations

import pytest
import torch

from hmoe.jobs.cli import EXIT_USER_ERROR, main
from hmoe.platform.tracking.runs import TAG_FAILURE
from tests.platform.prepared import write_prepared

ERROR_PREFIX = "hmoe train: error: "


def _labels_by_user_in_valid(split: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Validation labels that depend on the user alone: both classes overall (AUC is defined,
    so the pre-flight check passes), but no user has both, so GAUC is NaN every epoch."""
    return batch["user"] % 2 == 0 if split == "valid" else batch["item"] % 2 == 0


@pytest.mark.ray
@pytest.mark.slow
def test_a_nan_early_stopping_metric_fails_the_run_once_with_its_reason(
    ray_cluster, tmp_path, monkeypatch, capsys
):
    from mlflow import MlflowClient

    data = write_prepared(tmp_path / "tiny", labels=_labels_by_user_in_valid)
    monkeypatch.chdir(tmp_path)
    sets = {
        "train.early_stopping_metric": "val_gauc",
        "train.epochs": 2,
        "train.batch_size": 128,
        "train.max_failures": 2,  # would run it 3 times if a deterministic error were retried
        "tracking.log_model": "false",
    }
    argv = ["train", "--preset", "debug", "--data", str(data), "--experiment", "nan-metric"]
    argv += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    assert main(argv) == EXIT_USER_ERROR
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hmoe")]
    assert len(errors) == 1 and errors[0].startswith(ERROR_PREFIX)
    reason = errors[0][len(ERROR_PREFIX) :]
    assert reason.startswith("the early-stopping metric val_gauc is NaN after epoch 1 (")
    assert "no user has both" in reason and "WorkerGroupError" not in reason
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nan-metric")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_FAILURE] == f"DegenerateRunError: {reason}"
    # the failed epoch is logged once: no attempt after the first
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
