"""The Python API behind ``hmoe tune``: Ray Tune + Optuna over an ExperimentConfig.

Each Tune trial is a *driver function* (Ray Train V2: ``Tuner(TorchTrainer)`` no longer works)
that applies the sampled dotted parameters to the base config and fits a ``TorchTrainer`` whose
``TuneReportCallback`` forwards every epoch's report to Tune, ASHA and Optuna. The search space
is an Optuna define-by-run function (``hmoe.search_spaces.SPACES``, or the user's own:
``hmoe.search_spaces.custom``, checked against the config before any trial); ``OptunaSearch``
gets the metric and mode itself (with a define-by-run space, Tune's own metric and mode do not
reach it and sampling fails) and ASHA runs with ``stop_last_trials=False`` (with the default,
whatever a trial does after its last report, such as logging its model, is killed).

MLflow: one parent run per search, one child run per trial (``mlflow.parentRunId``), found
again by its trial id when a trial or the whole search is resumed. An infeasible sample (e.g.
no expert at all) is a failed trial whose child run carries the reason. The best trial's model
is registered. Names are deterministic: the search ``{preset}-{space}-{config_hash}``, a trial's
Train run ``train-{trial_id}``, so ``resume=True`` continues with ``Tuner.restore``; the parent
run records the search's Tune storage (``hmoe.storage``), by which a resume finds it again.

An interrupted search (Ctrl-C, SIGUSR1, a stopped job) ends its parent run and every trial run
still RUNNING as KILLED with the reason in ``hmoe.failure_reason``; a trial that completes after
its search ended keeps that status instead of reporting FINISHED.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hmoe.config import ConfigError, apply_overrides
from hmoe.platform.api import (
    DATA_CPUS,
    TrainResult,
    metrics_by_task,
    ray_for,
    record_run,
    registration,
    resolved_experiment,
    run_tags,
)
from hmoe.platform.core import storage
from hmoe.platform.core.failures import failure_reason, is_deterministic
from hmoe.platform.core.metrics import metric_mode
from hmoe.platform.experiment import (
    ExperimentConfig,
    TrainConfig,
    trial_run_name,
)
from hmoe.platform.tracking.runs import (
    STATUS_RUNNING,
    TAG_FAILURE,
    TAG_MODEL_URI,
    TAG_PARENT,
    TAG_SEARCH,
    TAG_TRIAL_ID,
    MlflowRun,
    experiment_id,
    open_store,
    owner_tags,
    share_runs_view,
)
from hmoe.platform.training.preflight import check_resources, check_run
from hmoe.platform.training.run_storage import MARKER, mark

if TYPE_CHECKING:
    from hmoe.search_spaces.custom import SearchSpace

__all__ = ["TuneResult", "end_search_runs", "tune"]

# a trial only waits on its TorchTrainer (whose workers hold the CPUs); Tune needs a non-empty
# request, so it asks for a sliver and leaves whole CPUs to Ray Data ingest
TRIAL_DRIVER_CPUS = 0.01
ASHA_REDUCTION_FACTOR = 2
FINAL_REPORT_KEY = "best_epoch"  # only a run's last report has it (train_loop._finish)
TAG_STOPPED_BY = "hmoe.stopped_by"  # the scheduler that ended a trial early
TAG_STOP_REASON = "hmoe.stop_reason"
HEADLINE_METRICS = ("val_auc", "test_auc", "best_epoch")  # columns of the search's MLflow view
SCHEDULERS = ("asha", "fifo")
TAG_ROLE = "hmoe.role"
TAG_STORAGE = "hmoe.storage"  # the search's Ray Tune folder, which a resume restores
ENDED = ("FINISHED", "FAILED")  # MLflow statuses of a trial that Tune will not run again
INTERRUPTED = "the search was interrupted"


class SearchInterrupted(RuntimeError):
    """The search stopped before all its trials finished; resume it with ``resume=True``."""


class InfeasibleTrial(ValueError):
    """The sampled parameters do not make a valid ExperimentConfig (reported as a failure)."""


class FailedBefore(ValueError):
    """A retried trial whose run already failed deterministically (the recorded reason)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuneResult:
    """A finished search: the best trial, its config and metrics, and the MLflow ids."""

    search_name: str
    parent_run_id: str
    best_trial_id: str | None
    best_run_id: str | None
    best_params: dict[str, Any]
    best_config: ExperimentConfig | None
    best_metrics: dict[str, float]
    best_per_task: dict[str, dict[str, float]]
    num_trials: int
    num_errors: int
    errors: dict[str, str]
    model_uri: str | None
    registered_model: str | None
    model_version: str | None
    path: str


def find_run(uri: str, experiment: str, tags: Mapping[str, str]) -> MlflowRun | None:
    """The run carrying all ``tags`` (used to re-attach a resumed search or trial)."""
    client = open_store(uri)
    exp_id = experiment_id(client, experiment, uri)
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp_id], filter_string=query, max_results=1)
    return MlflowRun(uri, runs[0].info.run_id) if runs else None


def trial_driver(params: dict[str, Any], settings: dict[str, Any]) -> None:
    """One Tune trial: sampled params -> ExperimentConfig -> TorchTrainer.fit()."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from hmoe.platform.analysis.monitor import epoch_end_hook
    from hmoe.platform.training.trainer import make_trainer

    base = ExperimentConfig.from_dict(settings["base"])
    trial_id = ray.tune.get_context().get_trial_id()
    uri, experiment = base.tracking.uri, base.tracking.experiment
    run = find_run(uri, experiment, {TAG_TRIAL_ID: trial_id, TAG_PARENT: settings["parent"]})
    fresh = run is None
    try:
        cfg = apply_overrides(base, params)
    except ConfigError as err:
        cfg, reason = base, f"infeasible sample {params}: {err}"
    else:
        reason = None
    if run is None:
        tags = (
            run_tags(cfg, settings["space"])
            | settings["tags"]
            | {
                TAG_PARENT: settings["parent"],
                TAG_TRIAL_ID: trial_id,
                TAG_SEARCH: settings["search"],
            }
        )
        # owned by the search's driver: a killed driver leaves its trials' runs to end_orphans
        name = trial_run_name(base, params, trial_id)
        run = MlflowRun.create(uri, experiment, name, tags, owner=settings["owner"])
    elif run.client.get_run(run.run_id).info.status == "FAILED":
        # Tune retries every trial error (train.max_failures); a deterministic one fails again
        reason = run.client.get_run(run.run_id).data.tags.get(TAG_FAILURE, "failed before")
        raise FailedBefore(reason)
    else:
        run.claim(settings["owner"])  # a restarted or resumed trial
    if reason is not None:
        run.set_tags({TAG_FAILURE: reason[:500]})
        run.finish("FAILED")
        raise InfeasibleTrial(reason)
    if fresh:
        record_run(run, cfg, params)
    trainer = make_trainer(
        cfg,
        run.run_id,
        name=f"train-{trial_id}",
        storage_path=settings["storage"],
        callbacks=[TuneReportCallback()],
        epoch_end=epoch_end_hook(cfg.train.monitor),
    )
    try:
        trainer.fit()
    except Exception as err:  # Tune's callback closes the run as FAILED; this says why
        run.set_tags({TAG_FAILURE: failure_reason(err)})
        if is_deterministic(err):
            run.finish("FAILED")  # a retry of the trial (node lost) re-raises at once
        raise
    # a search stopped meanwhile has ended this run (KILLED) and will rerun the trial on resume
    if _status(run) == STATUS_RUNNING and _status(MlflowRun(uri, settings["parent"])) == (
        STATUS_RUNNING
    ):
        run.finish("FINISHED")


def _status(run: MlflowRun) -> str:
    return str(run.client.get_run(run.run_id).info.status)


def end_search_runs(uri: str, parent_run_id: str, status: str, reason: str) -> list[str]:
    """End the search ``parent_run_id`` (unless FINISHED) and its trial runs still RUNNING as
    ``status``, each tagged with ``reason``; the ids of the runs it ended.

    Trial runs already KILLED (by this interruption: a trial that runs again is RUNNING) get
    ``reason`` too, so a stopped job's own reason replaces the one Tune's interruption gave.
    """
    client = open_store(uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'"
        + "".join(f" and attributes.status != '{done}'" for done in ENDED),
    )
    ended = []
    for run in children:
        client.set_tag(run.info.run_id, TAG_FAILURE, f"{reason} before this trial finished")
        if run.info.status == STATUS_RUNNING:
            client.set_terminated(run.info.run_id, status)
            ended.append(run.info.run_id)
    if client.get_run(parent_run_id).info.status != "FINISHED":
        client.set_tag(parent_run_id, TAG_FAILURE, reason)
        client.set_terminated(parent_run_id, status)
        ended.append(parent_run_id)
    return ended


def _status_callback(
    uri: str, experiment: str, parent: str, scheduler: str, train: TrainConfig
) -> Any:
    """A Tune callback closing a trial's child run when Tune ends it (ASHA stop, error).

    A trial that completes without its run's final report (``best_epoch``) was stopped by the
    scheduler: its run is tagged ``hmoe.stopped_by`` = the scheduler and ``hmoe.stop_reason``.
    """
    from ray import tune

    class MlflowTrialStatus(tune.Callback):
        def _close(self, trial: Any, status: str, tags: Mapping[str, str]) -> None:
            run = find_run(uri, experiment, {TAG_TRIAL_ID: trial.trial_id, TAG_PARENT: parent})
            if run is not None and run.client.get_run(run.run_id).info.status == "RUNNING":
                run.set_tags(tags)
                run.finish(status)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any):
            last = trial.last_result or {}
            tags = {}
            if FINAL_REPORT_KEY not in last:
                metric = train.early_stopping_metric
                value = float(last.get(metric, math.nan))
                tags = {
                    TAG_STOPPED_BY: scheduler,
                    TAG_STOP_REASON: f"{scheduler.upper()} stopped the trial after epoch "
                    f"{int(last.get('epoch', 0))} of {train.epochs}: its {metric} "
                    f"({value:.4f}) was not in the top 1/{ASHA_REDUCTION_FACTOR} at that rung",
                }
            self._close(trial, "FINISHED", tags)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any):
            self._close(trial, "FAILED", {})

    return MlflowTrialStatus()


def _searcher_and_scheduler(
    cfg: ExperimentConfig, space: Callable[..., Any], scheduler: str
) -> tuple[Any, Any]:
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    metric = cfg.train.early_stopping_metric
    mode = metric_mode(metric)
    with warnings.catch_warnings():  # group=True is "experimental" in optuna 5; it is needed
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # for conditionals
        sampler = optuna.samplers.TPESampler(seed=cfg.train.seed, multivariate=True, group=True)
    searcher = OptunaSearch(space=space, metric=metric, mode=mode, sampler=sampler)
    if scheduler == "fifo":
        return searcher, FIFOScheduler()
    asha = ASHAScheduler(
        time_attr="training_iteration",
        max_t=cfg.train.epochs,
        grace_period=1,
        reduction_factor=ASHA_REDUCTION_FACTOR,
        stop_last_trials=False,
    )
    return searcher, asha


def _parent_run(
    cfg: ExperimentConfig, space: str, search: str, path: str, resume: bool, tags: dict
) -> MlflowRun:
    """The search's parent run: the one of its Tune storage ``path`` when resuming, else new
    (two searches of one config, e.g. two jobs, store their state apart and are two runs)."""
    uri, experiment = cfg.tracking.uri, cfg.tracking.experiment
    identity = {TAG_SEARCH: search, TAG_ROLE: "search", TAG_STORAGE: str(path)}
    found = find_run(uri, experiment, identity) if resume else None
    if found is not None:
        found.claim()
        found.set_tags(tags)
        return found
    run = MlflowRun.create(uri, experiment, search, run_tags(cfg, space) | tags | identity)
    record_run(run, cfg, {})
    return run


def tune(
    preset: str,
    space: str | Mapping[str, Any],
    data: str | Path,
    num_samples: int,
    overrides: Mapping[str, Any] | None = None,
    *,
    max_concurrent: int = 1,
    scheduler: str = "asha",
    resume: bool = False,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    registered_model: str | None = None,
    callbacks: Sequence[Any] = (),
    tags: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    run_started: Callable[[str], None] | None = None,
) -> TuneResult:
    """Search ``space`` around ``preset`` with Ray Tune + Optuna (TPE) and ASHA.

    Args:
        preset, data, overrides, workers, gpus_per_worker, tracking_uri, experiment,
            registered_model: the base ExperimentConfig, as for ``hmoe.train``.
        space: a name in ``hmoe.search_spaces.SPACES``, ``FILE.py:FUNCTION`` (a define-by-run
            function of your own) or ``{dotted path: distribution}`` (``Distribution``); it is
            sampled and checked against the config before any trial.
        num_samples: trials in the whole search.
        max_concurrent: trials at once (each runs ``train.num_workers`` workers).
        scheduler: ``asha`` (early-stops weak trials at epoch rungs) or ``fifo``.
        resume: continue the interrupted search of the same name (``Tuner.restore``).
        callbacks: extra ``ray.tune.Callback`` objects (monitoring, tests).
        tags: extra MLflow tags of the parent run and every trial run (a job's id).
        progress: called with one line per stage.
        run_started: called with the MLflow parent run id as soon as it exists, so that a
            caller can end the search's runs if this call fails before it returns.
    """
    from hmoe.search_spaces.custom import check_space, resolve_space

    _check_arguments(scheduler, num_samples, max_concurrent)
    searched = resolve_space(space)
    cfg = resolved_experiment(preset, data, overrides, workers=workers,
                              gpus_per_worker=gpus_per_worker, tracking_uri=tracking_uri,
                              experiment=experiment, registered_model=registered_model)  # fmt: skip
    check_space(searched, lambda params: apply_overrides(cfg, params))
    search = f"{cfg.preset}-{searched.name}-{cfg.config_hash()}"
    path = storage.join(cfg.train.storage_path, search)
    # the storage marker alone (written just before Tune starts) is no search yet
    started = storage.exists(path) and any(n != MARKER for n in storage.list_names(path))
    if started and not resume:
        raise ConfigError(
            f"a search named {search} already exists at {path}; pass resume=True (--resume) "
            "to continue it, or remove the folder to start over"
        )
    if resume and not storage.exists(storage.join(path, "tuner.pkl")):
        # checked before any Ray or MLflow work, so a failed resume leaves no empty parent run;
        # the name is the config's hash, so a changed config (or an hmoe version that added a
        # config field) names a different search
        raise ConfigError(f"nothing to resume: no search state at {path}")
    check_run(cfg)
    check_resources(cfg.train, DATA_CPUS, extra_cpus=TRIAL_DRIVER_CPUS)
    say = progress or (lambda line: None)
    started = run_started or (lambda run_id: None)
    per_trial = TRIAL_DRIVER_CPUS + cfg.train.num_workers * cfg.train.cpus_per_worker
    with ray_for(max_concurrent * per_trial):
        check_resources(cfg.train, DATA_CPUS, extra_cpus=TRIAL_DRIVER_CPUS)  # a joined cluster
        return _search(cfg, searched, search, path, num_samples, max_concurrent, scheduler,
                       resume, callbacks, dict(tags or {}), say, started)  # fmt: skip


def _search(
    cfg: ExperimentConfig,
    searched: SearchSpace,
    search: str,
    path: str,
    num_samples: int,
    max_concurrent: int,
    scheduler: str,
    resume: bool,
    callbacks: Sequence[Any],
    extra: dict[str, str],
    say: Callable[[str], None],
    run_started: Callable[[str], None],
) -> TuneResult:
    from hmoe.search_spaces.custom import sampled_names

    parent = _parent_run(cfg, searched.source, search, path, resume, extra)
    mark(path, parent.run_id, cfg.tracking.uri)  # hmoe runs prune may delete it once it is over
    say(f"MLflow parent run {parent.run_id} ({search}) in {cfg.tracking.uri}")
    run_started(parent.run_id)
    settings = {
        "base": cfg.to_dict(),
        "parent": parent.run_id,
        "space": searched.source,
        "search": search,
        "storage": storage.join(path, "trials"),
        "owner": owner_tags(),
        "tags": extra,
    }
    view = runs_view(cfg, parent, search, sampled_names(searched.function, cfg.train.seed))
    say(f"MLflow view of its trials ({cfg.train.early_stopping_metric}, searched params): {view}")
    tuner = _tuner(cfg, searched.function, settings, num_samples, max_concurrent, scheduler,
                   resume, path, callbacks)  # fmt: skip
    grid = _fit(tuner, parent, num_samples, search, path)
    return _summarise(cfg, grid, parent, search, path)


def runs_view(cfg: ExperimentConfig, parent: MlflowRun, search: str, params: Sequence[str]) -> str:
    """The MLflow UI view of a search (an experiment tag, see ``share_runs_view``): its trials
    expanded under the parent, best first, with the headline metrics, the searched params and
    the scheduler's early stops as columns; returns its URL."""
    metric = cfg.train.early_stopping_metric
    metrics = list(dict.fromkeys([metric, *HEADLINE_METRICS]))
    run = parent.client.get_run(parent.run_id)
    return share_runs_view(
        cfg.tracking.uri,
        run.info.experiment_id,
        search,
        # no attribute columns (Dataset, Models): the UI renders only the columns that fit its
        # width, and a dataset's name and digest would push the params out of sight
        columns={"params": list(params), "metrics": metrics, "tags": [TAG_STOPPED_BY]},
        order_by=("metrics", metric),
        ascending=metric_mode(metric) == "min",
        expanded=[parent.run_id],
    )


def _check_arguments(scheduler: str, num_samples: int, max_concurrent: int) -> None:
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}; valid: {list(SCHEDULERS)}")
    if num_samples < 1 or max_concurrent < 1:
        raise ConfigError("num_samples and max_concurrent must be >= 1")


def _fit(tuner: Any, parent: MlflowRun, num_samples: int, search: str, path: str) -> Any:
    """``tuner.fit()``; the parent run is closed as FAILED / KILLED when the search does not
    complete (Tune returns normally on SIGINT/SIGUSR1 after saving its state)."""
    try:
        grid = tuner.fit()
    except BaseException as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        # a stopped job's KeyboardInterrupt says why; Ctrl-C's says nothing
        reason = (str(err).strip() or INTERRUPTED) if interrupted else failure_reason(err)
        end_search_runs(parent.uri, parent.run_id, "KILLED" if interrupted else "FAILED", reason)
        raise
    unfinished = _unfinished_trials(grid, parent, num_samples)
    if unfinished:
        end_search_runs(
            parent.uri,
            parent.run_id,
            "KILLED",
            f"{INTERRUPTED} with {unfinished} of {num_samples} trials unfinished",
        )
        raise SearchInterrupted(
            f"search {search} was interrupted with {unfinished} of {num_samples} trials "
            f"unfinished; its state is saved in {path}: run the same command with --resume "
            "(resume=True) to complete it"
        )
    return grid


def _unfinished_trials(grid: Any, parent: MlflowRun, num_samples: int) -> int:
    """Trials of the search that Tune would run (again) on a resume.

    Tune stops the trials still running when it is interrupted and marks them TERMINATED in
    memory (after saving them as unfinished), so a trial counts as done only when Tune's
    completion callback ended its run (FINISHED: completed or early-stopped; FAILED) or Tune
    recorded its error.
    """
    client = parent.client
    exp_id = client.get_run(parent.run_id).info.experiment_id
    runs = client.search_runs([exp_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent.run_id}'")
    done = {r.data.tags.get(TAG_TRIAL_ID) for r in runs if r.info.status in ENDED}
    # ResultGrid has no public per-trial status; its analysis object holds the Trial objects
    trials = grid._experiment_analysis.trials
    done |= {t.trial_id for t in trials if t.status == "ERROR"}
    return max(num_samples, len(trials)) - len(done - {None})


def _tuner(
    cfg: ExperimentConfig,
    space_fn: Callable[..., Any],
    settings: dict[str, Any],
    num_samples: int,
    max_concurrent: int,
    scheduler: str,
    resume: bool,
    path: str,
    callbacks: Sequence[Any],
) -> Any:
    from ray import tune as ray_tune

    search_name, storage_root = settings["search"], cfg.train.storage_path  # path's parts
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(trial_driver, settings=settings), {"CPU": TRIAL_DRIVER_CPUS}
    )
    if resume:
        if not ray_tune.Tuner.can_restore(path):
            raise ConfigError(f"nothing to resume: no search state at {path}")
        return ray_tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    searcher, sched = _searcher_and_scheduler(cfg, space_fn, scheduler)
    metric = cfg.train.early_stopping_metric
    uri, experiment = cfg.tracking.uri, cfg.tracking.experiment
    status = _status_callback(uri, experiment, settings["parent"], scheduler, cfg.train)
    return ray_tune.Tuner(
        trainable,
        tune_config=ray_tune.TuneConfig(
            metric=metric,
            mode=metric_mode(metric),
            search_alg=searcher,
            scheduler=sched,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
        ),
        run_config=ray_tune.RunConfig(
            name=search_name,
            storage_path=storage_root,
            # a trial lost with its node restarts (its TorchTrainer resumes from the last
            # checkpoint in storage); trial_driver re-raises a deterministic failure at once
            failure_config=ray_tune.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=[status, *callbacks],
        ),
    )


def _summarise(
    cfg: ExperimentConfig, grid: Any, parent: MlflowRun, search: str, path: str
) -> TuneResult:
    from hmoe.platform.data.batches import load_schema
    from hmoe.platform.tracking.registry import register_model

    metric = cfg.train.early_stopping_metric
    failed = [r for r in grid if r.error is not None]
    errors = {r.path.rsplit("/", 1)[-1]: failure_reason(r.error) for r in failed}
    ok = [r for r in grid if r.error is None and r.metrics and metric in r.metrics]
    best = (
        grid.get_best_result(metric=metric, mode=metric_mode(metric), scope="all") if ok else None
    )
    best_trial = best.metrics.get("trial_id") if best is not None else None
    child = None
    if best_trial is not None:
        tags = {TAG_TRIAL_ID: best_trial, TAG_PARENT: parent.run_id}
        child = find_run(cfg.tracking.uri, cfg.tracking.experiment, tags)
    params = dict(best.config) if best is not None else {}
    best_cfg = apply_overrides(cfg, params) if best is not None else None
    metrics = child.metrics() if child is not None else {}
    model_uri = child.tags().get(TAG_MODEL_URI) if child is not None else None
    version = None
    if model_uri is not None:
        about = registration(cfg, child.run_id, metrics, search)
        version = register_model(cfg.tracking.uri, model_uri, cfg.tracking.registry_name, about)
    searched = sorted({name for r in grid for name in (r.config or {})})
    if searched:  # conditional parameters only some trials sampled join the view
        runs_view(cfg, parent, search, searched)
    summary = {f"best_trial_{k}": v for k, v in metrics.items() if _is_number(v)}
    parent.log_metrics(summary | {"num_trials": len(grid), "num_errors": len(errors)}, step=0)
    if TAG_FAILURE in parent.tags():  # set when an earlier attempt was interrupted
        parent.client.delete_tag(parent.run_id, TAG_FAILURE)
    if best_trial is not None:
        parent.set_tags(
            {"hmoe.best_trial": best_trial, "hmoe.best_run": child.run_id if child else ""}
        )
    parent.finish("FINISHED")
    tasks = load_schema(cfg.data.path).tasks
    return TuneResult(
        search_name=search,
        parent_run_id=parent.run_id,
        best_trial_id=best_trial,
        best_run_id=child.run_id if child is not None else None,
        best_params=params,
        best_config=best_cfg,
        best_metrics=metrics,
        best_per_task=metrics_by_task(metrics, tasks),
        num_trials=len(grid),
        num_errors=len(errors),
        errors=errors,
        model_uri=model_uri,
        registered_model=cfg.tracking.registry_name if version else None,
        model_version=version,
        path=path,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


__all__ += ["InfeasibleTrial", "SearchInterrupted", "TrainResult"]
