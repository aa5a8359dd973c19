"""Why a run failed: the root cause behind Ray's wrappers, and which failures a retry cannot fix.

A worker's exception reaches the driver wrapped several times: Ray Train V2 raises a
``WorkerGroupError`` (each rank's exception in ``worker_failures``) or a ``ControllerError``
(``controller_failure``), a remote task's error is a ``RayTaskError`` (``cause``), a dead worker
a ``WorkerHealthCheckFailedError`` (``health_check_failure``), and Ray Data chains a user
function's error as ``__cause__``. ``root_cause`` peels them off; ``failure_reason`` is the
``Type: message`` line that the CLI prints and MLflow's failure tag holds.

A deterministic error (``DETERMINISTIC_ERRORS``: a config or data check, a NaN early-stopping
metric) fails again on every retry, so ``hmoe.platform.training.retries`` ends the run at once
instead of spending ``train.max_failures`` restarts on it; a killed or lost worker is still retried.

No Ray import here: the CLI uses this module before (or without) Ray starting.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "DETERMINISTIC_ERRORS",
    "DegenerateMetricWarning",
    "DegenerateRunError",
    "failure_reason",
    "is_deterministic",
    "is_user_error",
    "root_cause",
]

# errors that the same code on the same config and data raises again on every attempt
DETERMINISTIC_ERRORS = (ValueError, TypeError, LookupError, FileNotFoundError)
# errors the user fixes (a config, a path, a dataset): exit code 2, one line, no traceback
USER_ERRORS = (ValueError, FileNotFoundError)
MAX_REASON_CHARS = 5000  # MLflow tag values hold at most 8000 characters


class DegenerateRunError(ValueError):
    """Training cannot give a meaningful result (e.g. its early-stopping metric is NaN)."""


class DegenerateMetricWarning(RuntimeWarning):
    """A metric is NaN (a split too small, or with one class, for an AUC)."""


def _inner(err: BaseException) -> BaseException | None:
    """The exception ``err`` wraps, or ``None`` when it wraps none."""
    failures = getattr(err, "worker_failures", None)
    if isinstance(failures, Mapping) and failures:
        return _primary(failures)
    for name in ("controller_failure", "health_check_failure", "cause", "_base_exc"):
        inner = getattr(err, name, None)
        if isinstance(inner, BaseException):
            return inner
    # Ray Data raises a UserCodeException ``from`` the user function's error
    if type(err).__module__.startswith("ray.") and err.__cause__ is not None:
        return err.__cause__
    return None


def _primary(failures: Mapping[int, BaseException]) -> BaseException:
    """The failure of a worker group to report: a deterministic one (the other ranks' errors
    are usually collateral, e.g. a collective broken by the failed rank), else the lowest
    rank's."""
    ranked = [failures[rank] for rank in sorted(failures)]
    for err in ranked:
        if isinstance(root_cause(err), DETERMINISTIC_ERRORS):
            return err
    return ranked[0]


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception behind Ray's wrappers (``err`` itself when it wraps none)."""
    seen = {id(err)}
    while (inner := _inner(err)) is not None and id(inner) not in seen:
        seen.add(id(inner))
        err = inner
    return err


def failure_reason(err: BaseException) -> str:
    """``Type: message`` of the root cause, for MLflow's failure tag and the CLI."""
    root = root_cause(err)
    message = str(root).strip()
    reason = f"{type(root).__name__}: {message}" if message else type(root).__name__
    return reason[:MAX_REASON_CHARS]


def is_deterministic(err: BaseException) -> bool:
    """Whether a retry would fail the same way (see ``DETERMINISTIC_ERRORS``)."""
    return isinstance(root_cause(err), DETERMINISTIC_ERRORS)


def is_user_error(err: BaseException) -> bool:
    """Whether the root cause is a user mistake (the CLI's exit code 2)."""
    return isinstance(root_cause(err), USER_ERRORS)
