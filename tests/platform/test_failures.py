"""The root cause behind Ray's wrappers, the retry decision, and what the CLI prints for them."""

from __future__ import annotations

import pytest

from hmoe.jobs.cli import EXIT_FAILURE, EXIT_USER_ERROR, main
from hmoe.platform.core.failures import (
    DegenerateRunError,
    failure_reason,
    is_deterministic,
    root_cause,
)
from tests.platform.prepared import write_prepared

ray_exceptions = pytest.importorskip("ray.exceptions")


def _wrapped(errors):
    """A worker group's failure as ``TrainerTorch.fit`` raises it."""
    from ray.train.v2.api.exceptions import WorkerGroupError

    return WorkerGroupError("a long multi-line traceback\n" * 20, errors)


def _killed_worker():
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    return WorkerHealthCheckFailedError("worker died", ray_exceptions.RayActorError())


def test_root_cause_peels_every_ray_wrapper():
    from ray.train.v2.api.exceptions import ControllerError

    bad = ValueError("train.lr is bad")
    task = ray_exceptions.RayTaskError("fn", "Traceback ...\nValueError: train.lr is bad", bad)
    dual = task.as_instanceof_cause()  # a RayTaskError(ValueError), as Ray raises it
    collateral = RuntimeError("Connection closed by peer")
    group = _wrapped({0: collateral, 1: dual})
    assert root_cause(group) is bad  # the deterministic one, not rank 0's collateral error
    assert root_cause(ControllerError(group)) is bad
    assert failure_reason(group) == "ValueError: train.lr is bad"
    assert root_cause(_wrapped({1: collateral, 0: _killed_worker()})).__class__.__name__ == (
        "RayActorError"
    )
    plain = KeyError("x")
    assert root_cause(plain) is plain and failure_reason(plain) == "KeyError: 'x'"


def test_only_deterministic_worker_errors_skip_the_retries():
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision

    from hmoe.platform.training.retries import FailFastPolicy

    policy = FailFastPolicy(FailureConfig(max_failures=2))
    killed = _wrapped({1: _killed_worker()})
    assert not is_deterministic(killed)
    assert policy.make_decision(killed) == FailureDecision.RETRY
    assert policy.make_decision(_wrapped({0: DegenerateRunError("NaN")})) == FailureDecision.RAISE
    assert policy.make_decision(_wrapped({0: FileNotFoundError("shard")})) == FailureDecision.RAISE
    assert policy.make_decision(killed) == FailureDecision.RETRY  # the budget is still there
    assert policy.make_decision(killed) == FailureDecision.RAISE  # the third kill: 2 retries spent


@pytest.mark.parametrize(
    ("error", "code", "cause"),
    [
        (DegenerateRunError("val_auc is NaN"), EXIT_USER_ERROR, "val_auc is NaN"),
        (RuntimeError("CUDA error"), EXIT_FAILURE, "RuntimeError: CUDA error"),
    ],
)
def test_the_cli_prints_the_root_cause_in_one_line(
    tmp_path, monkeypatch, capsys, error, code, cause
):
    import hmoe.platform.api

    def fail(*args, **kwargs):
        raise _wrapped({0: error})

    monkeypatch.setattr(hmoe.platform.api, "train", fail)
    data = write_prepared(tmp_path / "tiny")
    assert main(["train", "--preset", "debug", "--data", str(data)]) == code
    assert capsys.readouterr().err.strip() == f"hmoe train: error: {cause}"


def test_an_internal_error_outside_ray_keeps_its_traceback(tmp_path, monkeypatch):
    import hmoe.platform.api

    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(hmoe.platform.api, "train", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "--preset", "debug", "--data", str(write_prepared(tmp_path / "tiny"))])
