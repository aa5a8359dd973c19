"""Which worker failures Ray Train retries: not the deterministic ones.

Ray Train V2's ``DefaultFailurePolicy`` retries every ``WorkerGroupError`` until
``FailureConfig(max_failures)`` is spent, whatever the error, so a bad config, a bad dataset or
a NaN early-stopping metric ran ``max_failures + 1`` times before failing. ``FailFastPolicy``
raises at once when a worker's root cause is deterministic (``failures.DETERMINISTIC_ERRORS``)
and leaves every other decision (a killed worker, a lost node, preemption) to the default.

``TorchTrainer.fit`` builds its policy from the ``FailureConfig`` alone and has no parameter
for another, so ``FailFastTorchTrainer`` swaps it in where ``fit`` hands it to the controller.
The policy object travels to the controller actor, which imports this module by name.

Where to run is the same story: a custom resource in ``resources_per_worker`` is a hard
constraint, so workers that asked for a node's resource (``train.node_resource``) would wait
forever for a lost node. ``PreferredNodePolicy`` drops that resource from the request of a
(re)starting worker group while no alive node offers it.
"""

from __future__ import annotations

from typing import Any

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import (
    DefaultFailurePolicy,
    FailureDecision,
)
from ray.train.v2._internal.execution.scaling_policy import (
    FixedScalingPolicy,
    ResizeDecision,
    ScalingDecision,
)
from ray.train.v2.api.exceptions import TrainingFailedError, WorkerGroupError

from hmoe.platform.core.failures import failure_reason, is_deterministic
from hmoe.platform.core.ray_start import RAY_BUILTIN_RESOURCES

__all__ = ["FailFastPolicy", "FailFastTorchTrainer", "PreferredNodePolicy"]

# the keywords under which TorchTrainer.fit passes its policies to the controller
POLICY_KEYWORD = "failure_policy"
SCALING_KEYWORD = "scaling_policy"


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


class PreferredNodePolicy(FixedScalingPolicy):
    """``FixedScalingPolicy``, except that the custom resources of ``resources_per_worker`` are
    preferences: one is left out of a (re)starting worker group's request while no alive node
    offers it."""

    def make_decision_for_non_running_worker_group(self) -> ScalingDecision:
        import ray

        decision = super().make_decision_for_non_running_worker_group()
        if not isinstance(decision, ResizeDecision):
            return decision
        offered = ray.cluster_resources()  # alive nodes only
        lost = sorted(set(custom_resources(decision.resources_per_worker)) - set(offered))
        if not lost:
            return decision
        print(f"[hmoe] no alive node offers {lost}: the workers start without them", flush=True)
        resources = {k: v for k, v in decision.resources_per_worker.items() if k not in lost}
        return ResizeDecision(num_workers=decision.num_workers, resources_per_worker=resources)


def custom_resources(resources: dict[str, float]) -> list[str]:
    return [name for name in resources if name not in RAY_BUILTIN_RESOURCES]


class FailFastTorchTrainer(TorchTrainer):
    """A ``TorchTrainer`` whose controller uses ``FailFastPolicy``, and ``PreferredNodePolicy``
    when its workers ask for a custom resource (``train.node_resource``)."""

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
        if POLICY_KEYWORD not in controller_init_kwargs:
            # a Ray upgrade moved the policy: fail loudly rather than silently retry again
            raise RuntimeError(
                f"TorchTrainer no longer passes {POLICY_KEYWORD!r} to its controller; "
                "update hmoe.platform.training.retries for this Ray version"
            )
        policies: dict[str, Any] = {POLICY_KEYWORD: FailFastPolicy(self.run_config.failure_config)}
        if custom_resources(self.scaling_config._resources_per_worker_not_none):
            if SCALING_KEYWORD not in controller_init_kwargs:
                raise RuntimeError(
                    f"TorchTrainer no longer passes {SCALING_KEYWORD!r} to its controller; "
                    "update hmoe.platform.training.retries for this Ray version"
                )
            policies[SCALING_KEYWORD] = PreferredNodePolicy(self.scaling_config)
        return super()._initialize_and_run_controller(**(controller_init_kwargs | policies))
