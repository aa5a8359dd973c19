"""Which worker failures Ray Train retries: not the deterministic ones.

Ray Train V2's ``DefaultFailurePolicy`` retries every ``WorkerGroupError`` until
``FailureConfig(max_failures)`` is spent, whatever the error, so a bad config, a bad dataset or
a NaN early-stopping metric ran ``max_failures + 1`` times before failing. ``FailFastPolicy``
raises at once when a worker's root cause is deterministic (``failures.DETERMINISTIC_ERRORS``)
and leaves every other decision (a killed worker, a lost node, preemption) to the default.

``TorchTrainer.fit`` builds its policy from the ``FailureConfig`` alone and has no parameter
for another, so ``FailFastTorchTrainer`` swaps it in where ``fit`` hands it to the controller.
The policy object travels to the controller actor, which imports this module by name.
"""

from __future__ import annotations

from typing import Any

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import (
    DefaultFailurePolicy,
    FailureDecision,
)
from ray.train.v2.api.exceptions import TrainingFailedError, WorkerGroupError

from hmoe.platform.failures import failure_reason, is_deterministic

__all__ = ["FailFastPolicy", "FailFastTorchTrainer"]

# the keyword under which TorchTrainer.fit passes its failure policy to the controller
POLICY_KEYWORD = "failure_policy"


class FailFastPolicy(DefaultFailurePolicy):
    """``DefaultFailurePolicy``, except that a deterministic worker error is raised at once."""

    def make_decision(self, training_failed_error: TrainingFailedError) -> FailureDecision:
        if isinstance(training_failed_error, WorkerGroupError) and any(
            is_deterministic(err) for err in training_failed_error.worker_failures.values()
        ):
            reason = failure_reason(training_failed_error)
            print(f"[hmoe] not retrying a deterministic error: {reason}", flush=True)
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


class FailFastTorchTrainer(TorchTrainer):
    """A ``TorchTrainer`` whose controller uses ``FailFastPolicy``."""

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
        if POLICY_KEYWORD not in controller_init_kwargs:
            # a Ray upgrade moved the policy: fail loudly rather than silently retry again
            raise RuntimeError(
                f"TorchTrainer no longer passes {POLICY_KEYWORD!r} to its controller; "
                "update hmoe.platform.retries for this Ray version"
            )
        policy = FailFastPolicy(self.run_config.failure_config)
        return super()._initialize_and_run_controller(
            **(controller_init_kwargs | {POLICY_KEYWORD: policy})
        )
