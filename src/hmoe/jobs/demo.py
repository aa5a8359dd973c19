"""``run_demo(config)``: the main job end to end on one machine, with embedded defaults.

Prepare a dataset (ml-100k from ``HMOE_DATA_ROOT``, else fetched, else synthetic logs), search
the ``hmoe`` preset with Ray Tune + Optuna (one MLflow child run per trial, in a sqlite store
inside ``out``), read the leaderboard back from MLflow, register the best model (``hmoe.tune``
does it), write the analysis plots of the best trial and return the command that opens the
MLflow UI on these runs. Nothing needs a server or a cluster: Ray starts locally when none is
connected. ``hmoe demo`` is the CLI over it.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from hmoe.config import Config, ConfigError, config
from hmoe.schema import SPLITS

__all__ = ["DemoConfig", "DemoResult", "LeaderboardRow", "PreparedData", "run_demo"]

DEMO_MARKER = ".hmoe-demo"  # a folder holding it is a previous demo the next one may replace
MLFLOW_DB = "mlflow.db"
DATASET = "ml-100k"
UI_HOST = "127.0.0.1"
UI_PORT = 5000
EARLY_STOPPED = "EARLY_STOPPED"  # a FINISHED child run without test metrics: ASHA stopped it


@config
class DemoConfig(Config):
    """Everything ``run_demo`` does, sized by default to finish in minutes on 2 CPU cores.

    ``synthetic``: use synthetic logs of ``rows`` impressions (``click`` only) instead of
    ml-100k; ``fetch``: download ml-100k when ``HMOE_DATA_ROOT`` lacks it (a failed download
    falls back to synthetic logs). ``space`` is a name in ``hmoe.search_spaces.SPACES``;
    ``trials`` of ``epochs`` each run ``max_concurrent`` at a time, ASHA stopping weak ones
    after their first epoch. ``analyses``: the analysis kinds of the best trial (correlation
    is skipped on a dataset without a categorised behaviour sequence). ``spare_cpus``: logical
    CPUs beyond the trials' own when the demo starts Ray itself: Ray's placement-group cleaner
    fails when several Ray instances share the machine, and the reservation of a trial that ASHA
    stopped then outlives it; without spare CPUs the next trial's ingest would wait forever.
    """

    out: str = "hmoe-runs/demo"
    synthetic: bool = False
    fetch: bool = True
    rows: int = 100_000
    seed: int = 0
    preset: str = "hmoe"
    space: str = "smoke"
    trials: int = 4
    epochs: int = 3
    max_concurrent: int = 1
    scheduler: Literal["asha", "fifo"] = "asha"
    batch_size: int = 512
    cpus_per_worker: float = 1.0
    spare_cpus: float = 2.0
    experiment: str = "hmoe-demo"
    model_format: Literal["auto", "pt2", "pickle"] = "pickle"
    analyses: tuple[str, ...] = ("collapse", "correlation")

    def __post_init__(self) -> None:
        from hmoe.models.zoo import PRESETS
        from hmoe.platform.analysis.reports import ANALYSIS_KINDS
        from hmoe.search_spaces import SPACES

        # checked here so that a typo fails before minutes of data preparation
        if self.preset not in PRESETS:
            raise ConfigError(f"demo.preset: unknown {self.preset!r}; valid: {sorted(PRESETS)}")
        if self.space not in SPACES:
            raise ConfigError(f"demo.space: unknown {self.space!r}; valid: {sorted(SPACES)}")
        for name in ("rows", "trials", "epochs", "max_concurrent", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo.{name} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_worker <= 0 or self.spare_cpus < 0:
            raise ConfigError("demo.cpus_per_worker must be > 0 and demo.spare_cpus >= 0")
        unknown = sorted(set(self.analyses) - set(ANALYSIS_KINDS))
        if unknown:
            raise ConfigError(f"demo.analyses: unknown {unknown}; valid: {list(ANALYSIS_KINDS)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreparedData:
    """The prepared dataset and where it came from (``shared``, ``fetched`` or ``synthetic``)."""

    path: Path
    name: str
    source: Literal["shared", "fetched", "synthetic"]
    note: str
    rows: Mapping[str, int]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeaderboardRow:
    """One trial: its sampled parameters, status, epochs run and AUC per task.

    ``val_auc`` is the best epoch's validation AUC (the weights that were kept), ``test_auc``
    the test AUC of those weights. A trial ASHA stopped has status ``EARLY_STOPPED`` and no
    test AUC: the test split is scored only when a run completes.
    """

    trial_id: str
    run_id: str
    status: str
    params: Mapping[str, Any]
    epochs: int
    val_auc: Mapping[str, float]
    test_auc: Mapping[str, float]

    @property
    def score(self) -> float:
        """Mean validation AUC over tasks (the search metric); NaN for a failed trial."""
        values = list(self.val_auc.values())
        return sum(values) / len(values) if values else math.nan


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoResult:
    """What the demo produced; ``leaderboard`` is sorted best first."""

    data: PreparedData
    tracking_uri: str
    search_name: str
    parent_run_id: str
    tasks: tuple[str, ...]
    leaderboard: tuple[LeaderboardRow, ...]
    best_run_id: str | None
    registered_model: str | None
    model_version: str | None
    plots: Mapping[str, Path]
    ui_command: str


def run_demo(cfg: DemoConfig, progress: Callable[[str], None] | None = None) -> DemoResult:
    """Run the demo described by ``cfg``; ``progress`` gets one line per stage and epoch."""
    import ray

    from hmoe.platform.api import ray_for
    from hmoe.platform.search.tune import TRIAL_DRIVER_CPUS

    say = progress or (lambda line: None)
    out = _fresh_out_dir(Path(cfg.out), say)
    # start Ray before Ray Data would start one sized only to the cores; the stages share it
    spare = 0.0 if ray.is_initialized() else cfg.spare_cpus
    with ray_for(cfg.max_concurrent * (TRIAL_DRIVER_CPUS + cfg.cpus_per_worker) + spare):
        return _run_demo(cfg, out, say)


def _run_demo(cfg: DemoConfig, out: Path, say: Callable[[str], None]) -> DemoResult:
    data = prepare_data(cfg, out, say)
    from hmoe.platform.tracking.runs import tracking_uri

    # MLFLOW_TRACKING_URI, as for every command; else a store of the demo's own, in its folder
    uri = tracking_uri(None, default=f"sqlite:///{out / MLFLOW_DB}")
    say(f"searching {cfg.preset} over space {cfg.space!r}: {cfg.trials} trials x {cfg.epochs} "
        f"epochs, {cfg.max_concurrent} at a time ({cfg.scheduler})")  # fmt: skip
    trials = _TrialLog(say)
    search = _search(cfg, data.path, out, uri, trials, say)
    from hmoe.platform.data.batches import load_schema

    tasks = load_schema(data.path).tasks
    board = leaderboard(uri, cfg.experiment, search.parent_run_id, trials.params, tasks)
    plots: dict[str, Path] = {}
    if search.best_run_id is not None:
        plots = _analyse(cfg, search.best_run_id, data.path, uri, out / "analysis", say)
    return DemoResult(
        data=data,
        tracking_uri=uri,
        search_name=search.search_name,
        parent_run_id=search.parent_run_id,
        tasks=tasks,
        leaderboard=board,
        best_run_id=search.best_run_id,
        registered_model=search.registered_model,
        model_version=search.model_version,
        plots=plots,
        ui_command=ui_command(uri),
    )


def ui_command(uri: str) -> str:
    """The shell command that opens the MLflow UI on the store ``uri``."""
    beside = Path(sys.executable).parent / "mlflow"
    exe = str(beside) if beside.exists() else "mlflow"
    return shlex.join(
        [exe, "ui", "--backend-store-uri", uri, "--host", UI_HOST, "--port", str(UI_PORT)]
    )


def _fresh_out_dir(out: Path, say: Callable[[str], None]) -> Path:
    """``out`` made absolute and empty; only a previous demo's folder is ever removed."""
    out = out.expanduser().absolute()
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).exists():
            raise ConfigError(
                f"{out} is not empty and holds no previous demo; choose another --out"
            )
        say(f"replacing the previous demo in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by hmoe demo; the next demo here replaces it\n")
    return out


def prepare_data(cfg: DemoConfig, out: Path, say: Callable[[str], None]) -> PreparedData:
    """ml-100k from the data root (or fetched into it), else synthetic logs, prepared."""
    from hmoe.platform.data import FetchError, data_root, fetch, prepare
    from hmoe.platform.data.spec import DATA_ROOT_ENV

    if cfg.synthetic:
        return _synthetic(cfg, out, "synthetic logs, as asked (--synthetic)", say)
    root = data_root().absolute()
    raw = root / DATASET / f"{DATASET}.inter"
    source: Literal["shared", "fetched"] = "shared"
    if not raw.exists():
        if not cfg.fetch:
            note = f"{raw} not found and fetching is off: using synthetic logs instead"
            return _synthetic(cfg, out, note, say)
        say(f"{raw} not found ({DATA_ROOT_ENV}={root}); fetching {DATASET} into {root}")
        try:
            fetch(DATASET, root)
        except (FetchError, OSError) as err:
            note = f"could not fetch {DATASET} ({err}): using synthetic logs instead"
            return _synthetic(cfg, out, note, say)
        source = "fetched"
    note = f"{DATASET} from {root / DATASET} ({source})"
    say(f"preparing {note}")
    manifest = prepare(_shipped_spec(DATASET), out / "data" / DATASET)
    return PreparedData(path=out / "data" / DATASET, name=DATASET, source=source, note=note,
                        rows=_split_rows(manifest))  # fmt: skip


def _synthetic(cfg: DemoConfig, out: Path, note: str, say: Callable[[str], None]) -> PreparedData:
    from hmoe.platform.data import prepare
    from hmoe.platform.data.synth import SynthConfig, synthesize

    say(f"NOTE: {note}")
    say(f"generating {cfg.rows:,} synthetic impressions (task: click)")
    made = synthesize(out / "raw" / "synthetic", cfg.rows, cfg.seed, SynthConfig(tasks=("click",)))
    manifest = prepare(made.spec_path, out / "data" / "synthetic")
    return PreparedData(path=out / "data" / "synthetic", name="synthetic", source="synthetic",
                        note=note, rows=_split_rows(manifest))  # fmt: skip


def _shipped_spec(name: str) -> Path:
    from importlib import resources

    return Path(str(resources.files("hmoe.platform.data") / "specs" / f"{name}.yaml"))


def _split_rows(manifest: Mapping[str, Any]) -> dict[str, int]:
    return {split: int(manifest["rows"][split]) for split in SPLITS}


def _search(
    cfg: DemoConfig, data: Path, out: Path, uri: str, trials: Any, say: Callable[[str], None]
) -> Any:
    from hmoe.platform.search.tune import tune

    overrides = {
        "train.epochs": cfg.epochs,
        "train.batch_size": cfg.batch_size,
        "train.cpus_per_worker": cfg.cpus_per_worker,
        "train.seed": cfg.seed,
        "train.storage_path": str(out / "ray_runs"),
        "tracking.model_format": cfg.model_format,
    }
    return tune(
        cfg.preset,
        cfg.space,
        data,
        cfg.trials,
        overrides,
        max_concurrent=cfg.max_concurrent,
        scheduler=cfg.scheduler,
        tracking_uri=uri,
        experiment=cfg.experiment,
        callbacks=[trials.callback()],
        progress=say,
    )


class _TrialLog:
    """Collects each trial's sampled parameters and prints one line per epoch and trial end.

    Tune callbacks run in the driver process, so the parameters land in ``params`` here.
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.params: dict[str, dict[str, Any]] = {}

    def callback(self) -> Any:
        from ray import tune

        log = self

        class DemoProgress(tune.Callback):
            def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any):
                log.params[trial.trial_id] = dict(trial.config)
                log.say(f"  trial {trial.trial_id} started: {_short(trial.config)}")

            def on_trial_result(
                self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
            ):
                epoch = result.get("training_iteration", 0)
                auc = result.get("val_auc", math.nan)
                log.say(f"  trial {trial.trial_id} epoch {epoch}: val_auc {auc:.4f}")

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any):
                log.say(f"  trial {trial.trial_id} done")

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any):
                log.say(f"  trial {trial.trial_id} FAILED (see the leaderboard)")

        return DemoProgress()


def _short(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in sorted(params.items()))


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def leaderboard(
    uri: str,
    experiment: str,
    parent_run_id: str,
    params: Mapping[str, Mapping[str, Any]],
    tasks: tuple[str, ...],
) -> tuple[LeaderboardRow, ...]:
    """The search's child runs read back from MLflow, best validation AUC first."""
    from mlflow import MlflowClient

    from hmoe.platform.tracking.runs import TAG_PARENT, TAG_TRIAL_ID

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`{TAG_PARENT}` = '{parent_run_id}'")
    rows = []
    for run in runs:
        trial = run.data.tags.get(TAG_TRIAL_ID, "?")
        metrics = run.data.metrics
        # a finished run's headline val_* are its best epoch's; an ASHA-stopped one's its last
        val = {t: float(metrics.get(f"val_auc_{t}", math.nan)) for t in tasks}
        test = {t: float(metrics.get(f"test_auc_{t}", math.nan)) for t in tasks}
        epochs = len({m.step for m in client.get_metric_history(run.info.run_id, "val_auc")})
        status = run.info.status
        if status == "FINISHED" and all(math.isnan(v) for v in test.values()):
            status = EARLY_STOPPED
        rows.append(LeaderboardRow(
            trial_id=trial, run_id=run.info.run_id, status=status,
            params=dict(params.get(trial, {})), epochs=epochs,
            val_auc={t: v for t, v in val.items() if not math.isnan(v)},
            test_auc={t: v for t, v in test.items() if not math.isnan(v)},
        ))  # fmt: skip
    return tuple(sorted(rows, key=lambda r: -r.score if not math.isnan(r.score) else math.inf))


def _analyse(
    cfg: DemoConfig, run_id: str, data: Path, uri: str, out: Path, say: Callable[[str], None]
) -> dict[str, Path]:
    from hmoe.platform.analysis.api import analyze
    from hmoe.platform.data.batches import load_schema

    schema = load_schema(data)
    plots: dict[str, Path] = {}
    for kind in cfg.analyses:
        if kind == "correlation" and not any(q.category_field for q in schema.sequences):
            say("  (no categorised behaviour sequence: correlation analysis skipped)")
            continue
        say(f"analysing the best trial's run {run_id}: {kind}")
        plots |= analyze(run_id, kind=kind, out_dir=out, tracking_uri=uri).plots
    return plots
