"""The reproduction report's runner: training runs on the platform, seed statistics, tables.

Every run of the report is one *record* (section, dataset, variant, seed, the resolved
overrides, the final validation/test metrics of the best-validation epoch, information abundance
at that epoch, parameter count, wall time, ``model_hash``, ``config``: the resolved model, loss
and training config as dotted keys), held as an MLflow run of the experiment ``hmoe-report``
(``repro.store``: its tags and metrics; the store's committed export lets a fresh checkout
re-render without training). Runs train through ``hmoe.train`` (Ray Train, tracked in MLflow)
in one Ray session for the whole report. A record is reused while its key (section, dataset,
variant, seed, preset, overrides) matches and it is trusted (``staleness``): its
``model_hash`` is that of the preset as it is now, or its stored ``config`` agrees with the
preset's now on every key both have, each key only the preset now has lies in a field the
stored config lacks entirely, at that field's own default (a field added since, whose default
keeps the old behaviour), and it has no key the preset lacks now. Any other record of a preset
is stale: it is retrained, and a render shows it as not run. ``--force`` retrains all
(``--retrain DATASET``: only that dataset's runs, e.g. after a metric changed).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.store import EXPERIMENT, JSON_KEYS_TAG, RunStore, record_tags

Extra = Callable[[Any, Any], Mapping[str, float]]  # (trained model, ExperimentConfig) -> metrics

SEEDS = (1, 2, 3)  # the peers' seeds (../shared/docs/benchmarks.md)
# the seeds of a section whose effects are small next to the seed spread of SEEDS (under twice
# the seed std): two more, so that its "within / beyond 2 seed stds" rests on five per row
FIVE_SEEDS = (*SEEDS, 4, 5)
STORE_FILE = "mlflow.db"  # the working MLflow store, beside the committed export
EXPORT_DIR = "runs"  # the committed export of the store (``repro.store``)
RAY_RUNS_DIR = "ray_runs"  # Ray Train run folders under ``work``, removed once a run is read
CPUS_PER_RUN = 1.0  # one Ray Train worker per run, like the standalone loop's one process
HASHED_PARTS = ("model", "loss", "train")  # the parts of a run's config ``model_hash`` covers
# where a run's folders go, not what it computes: left out of ``model_hash`` and ``config``
UNHASHED_KEYS = ("train.storage_path",)
CHANGES_SHOWN = 3  # differing config keys a stale record's message names
# the fields of a record that say which run it is (``train``'s cache key)
KEY_FIELDS = ("section", "dataset", "variant", "seed", "preset", "overrides", "quick")
_NO_DEFAULT = object()  # a config key that no field default gives


@dataclass(kw_only=True)
class Context:
    """Where the report reads and writes, and how hard it trains."""

    work: Path  # prepared datasets and scratch (not committed)
    out: Path  # docs/results: the store's export runs/ and figures/ (committed)
    data_root: Path
    seeds: tuple[int, ...] = SEEDS
    threads: int = 2
    force: bool = False
    retrain: tuple[str, ...] = ()  # datasets whose runs are retrained even when stored
    cached_only: bool = False  # render from the store; a missing run is left out, not trained
    quick: bool = False  # 1 epoch, for a smoke run of the script itself
    log: Callable[[str], None] = print
    tracking_uri: str | None = None  # the MLflow store (None: ``out/mlflow.db``)
    # keys of the runs a render wanted but the store lacks (shared by every view of a context)
    missing: list[dict[str, Any]] = field(default_factory=list)
    # a view a section made to read another section's runs (``cached()``): its misses are
    # that section's to train, not the reader's
    borrowed: bool = False
    _records: list[dict[str, Any]] = field(default_factory=list)
    _loaded: int = 0  # records read from the store; ``retrain`` skips these, not new ones
    _store: RunStore | None = None

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    @property
    def export(self) -> Path:
        return self.out / EXPORT_DIR

    @property
    def runs(self) -> RunStore:
        if self._store is None:
            uri = self.tracking_uri or f"sqlite:///{(self.out / STORE_FILE).resolve()}"
            self.out.mkdir(parents=True, exist_ok=True)
            self._store = RunStore(uri)
        return self._store

    def load(self) -> None:
        """Import the committed export into the store, then read its trusted records (a stale
        one is logged and left out: it is retrained, or shown as not run)."""
        copied = self.runs.import_folder(self.export)
        if copied:
            self.log(f"imported {copied} runs from {self.export} into {self.runs.uri}")
        self._records.clear()
        stale: list[tuple[dict[str, Any], str]] = []
        for record in self.runs.records():
            why = staleness(record)
            if why is None:
                self._records.append(record)
            else:
                stale.append((record, why))
        # a stale run a later trusted run of the same key replaced is no news
        replaced = {_key_of(record) for record in self._records}
        by_section: dict[str, list[tuple[dict[str, Any], str]]] = {}
        for record, why in stale:
            if _key_of(record) not in replaced:
                by_section.setdefault(str(record.get("section")), []).append((record, why))
        for section, found in sorted(by_section.items()):
            record, why = found[0]
            self.log(
                f"  stale: {len(found)} run(s) of section {section} were trained with another "
                f"config than their preset's now, not used; the first, {record.get('dataset')} "
                f"{record.get('variant')} seed {record.get('seed')}: {why}"
            )
        self._loaded = len(self._records)

    def save(self) -> None:
        """Write the store's export (``runs/<section>.json``)."""
        self.runs.export_folder(self.export)

    def find(self, key: Mapping[str, Any], *, since: int = 0) -> dict[str, Any] | None:
        """The latest record matching ``key`` among those from index ``since`` on."""
        for record in reversed(self._records[since:]):
            if all(record.get(k) == v for k, v in key.items()):
                return record
        return None

    def add(self, record: dict[str, Any], run_id: str | None = None) -> None:
        """Keep ``record``: in the MLflow run ``run_id`` (one ``hmoe.train`` made), or in a new
        run (a record computed without training)."""
        self.runs.add(record, run_id)
        self._records.append(record)

    def cached(self) -> Context:
        """A view of this context that trains nothing (same store, same records)."""
        return dataclasses.replace(self, cached_only=True, force=False, retrain=(), borrowed=True)

    def machines(self) -> dict[str, int]:
        """Stored runs per machine they were trained on."""
        return dict(Counter(record.get("machine", "not recorded") for record in self._records))

    def loops(self) -> dict[str, int]:
        """Stored runs per training loop (``ray-train``: ``hmoe.train``)."""
        return dict(Counter(record.get("loop", "not recorded") for record in self._records))

    def records(self, **key: Any) -> list[dict[str, Any]]:
        """Latest record per (dataset, variant, seed) matching ``key``."""
        latest: dict[tuple, dict[str, Any]] = {}
        for record in self._records:
            if all(record.get(k) == v for k, v in key.items()):
                latest[(record["dataset"], record["variant"], record["seed"])] = record
        return list(latest.values())


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import torch

    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, CPU only"


def train(
    ctx: Context,
    *,
    section: str,
    dataset: str,
    variant: str,
    preset: str,
    data: Path,
    overrides: Mapping[str, Any],
    seed: int,
    extra: Extra | None = None,
) -> dict[str, Any] | None:
    """One seeded training run (cached in the store); its record, or None if ``cached_only``
    and it was never run."""
    changes = dict(overrides) | {"train.seed": seed, "tracking.log_model": False}
    if ctx.quick:
        changes["train.epochs"] = 1
    key = {
        "section": section,
        "dataset": dataset,
        "variant": variant,
        "seed": seed,
        "preset": preset,
        "overrides": json.loads(json.dumps(changes, sort_keys=True, default=str)),
        "quick": ctx.quick,
    }
    # a retrained dataset reuses only runs of this process (a resumed retrain, or a run that
    # two sections share), never the stored ones
    since = ctx._loaded if dataset in ctx.retrain else 0
    cached = None if ctx.force else ctx.find(key, since=since)
    if cached is not None:
        return cached
    if ctx.cached_only:
        ctx.missing.append(key | {"trained_by": key["section"] if ctx.borrowed else None})
        return None
    run_id, outcome = train_on_platform(ctx, key, preset, data, changes, extra)
    record = (
        key
        | outcome
        | {
            "date": dt.date.today().isoformat(),
            "machine": machine(),
            "loop": "ray-train",  # hmoe.train; runs migrated from the former store: "standalone"
        }
    )
    ctx.add(record, run_id)
    ctx.save()  # the export follows each run, so an interrupted report loses none
    shown = record["metrics"].get("test_auc", float("nan"))
    ctx.log(f"  {dataset:>8} {variant:<28} seed {seed}  test_auc {shown:.4f}  "
            f"{record['wall_s']:5.0f} s")  # fmt: skip
    return record


def train_on_platform(
    ctx: Context,
    key: Mapping[str, Any],
    preset: str,
    data: Path,
    changes: Mapping[str, Any],
    extra: Extra | None,
) -> tuple[str | None, dict[str, Any]]:
    """Train through ``hmoe.train`` into the report's MLflow store; (its run id, the record's
    results: metrics, ia, best_epoch, epochs_run, params, wall_s, config_hash, model_hash).

    The best epoch's weights and per-epoch history come from the run's last Ray Train
    checkpoint (which holds both), for ``extra`` and the information abundance of that epoch.
    """
    import torch

    import hmoe
    from hmoe.platform.data.batches import load_schema
    from hmoe.platform.training.train_loop import DIAGNOSTICS_PREFIX
    from hmoe.platform.training.trainer import build_model

    torch.set_num_threads(ctx.threads)
    _ray_once()
    storage = ctx.work / RAY_RUNS_DIR
    identity = {k: v for k, v in record_tags(key).items() if k != JSON_KEYS_TAG}
    started = time.perf_counter()
    result = hmoe.train(
        preset,
        data,
        dict(changes) | {"train.storage_path": str(storage.resolve())},
        tracking_uri=ctx.runs.uri,
        experiment=EXPERIMENT,
        register=False,
        tags=identity,
    )
    wall = time.perf_counter() - started
    cfg = result.config
    folder = storage.resolve() / f"train-{result.run_id}"
    state = _last_checkpoint(folder)
    model, _ = build_model(cfg, load_schema(cfg.data.path))
    model.load_state_dict(state["state"]["best_model"])
    model.eval()
    history = state["state"]["history"]
    best = _best_epoch(history, cfg.train.early_stopping_metric)
    # the final report's test_* and val_* both belong to the best epoch (whose weights are
    # restored); its diagnostics come from that epoch's history entry
    metrics = {k: v for k, v in result.metrics.items() if k.startswith(("test_", "val_"))}
    ia = {
        k.removeprefix(DIAGNOSTICS_PREFIX): v
        for k, v in best.items()
        if k.startswith(f"{DIAGNOSTICS_PREFIX}ia_")
    }
    if extra is not None:
        metrics |= dict(extra(model, cfg))
    shutil.rmtree(folder, ignore_errors=True)
    return result.run_id, {
        "metrics": metrics,
        "ia": ia,
        "best_epoch": int(result.metrics.get("best_epoch", best.get("epoch", 1))),  # 1-based
        "epochs_run": len(history),
        "params": sum(p.numel() for p in model.parameters()),
        "wall_s": round(wall, 1),
        "config_hash": cfg.config_hash(),
        # of the config hmoe.train resolved and ran; a run whose hash is not the one its
        # preset gives at load time is reused only if its config agrees (``staleness``)
        "model_hash": model_hash(cfg),
        "config": run_config(cfg),
    }


def _ray_once() -> None:
    """One Ray session for the whole report: ``hmoe.train`` uses a Ray it finds running and
    leaves it up, instead of starting and stopping one per run (seconds each)."""
    import ray

    from hmoe.platform.api import ensure_ray

    if not ray.is_initialized():
        ensure_ray(CPUS_PER_RUN)


def _last_checkpoint(folder: Path) -> dict[str, Any]:
    import torch

    from hmoe.platform.training.runtime import CHECKPOINT_FILE

    # Ray Train V2 names checkpoint folders by their time, so the last name is the latest
    # (beside them it keeps its own checkpoint_manager_snapshot.json)
    saved = sorted(p.parent for p in folder.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
    return torch.load(saved[-1] / CHECKPOINT_FILE, weights_only=False)


def current_config(preset: str, overrides: Mapping[str, Any]) -> Any:
    """The ExperimentConfig of ``preset`` with ``overrides`` as the code builds it now (no data
    is read: the hashed parts do not depend on it)."""
    from hmoe.config import apply_overrides
    from hmoe.models.zoo import PRESETS
    from hmoe.platform.experiment import DataConfig, ExperimentConfig

    made = PRESETS[preset]()
    base = ExperimentConfig(
        preset=preset, data=DataConfig(path="."), model=made.model, loss=made.loss
    )
    return apply_overrides(base, overrides)


def current_model_hash(preset: str, overrides: Mapping[str, Any]) -> str:
    """``model_hash`` of ``preset`` with ``overrides`` as the code builds it now."""
    return model_hash(current_config(preset, overrides))


def staleness(record: Mapping[str, Any]) -> str | None:
    """Why ``record`` is stale, or None when it is trusted.

    A record of a preset is trusted with the ``model_hash`` its preset and overrides give now;
    otherwise, when it stored its ``config``, if that agrees with the config now: equal on
    every key both have, every key only the config now has in a field the stored one lacks
    entirely, at that field's own default (a field added since, whose default reproduces the
    old behaviour), and no key only the stored one has (a field removed). A record without a
    preset (an estimate, no model) is identified by its key.
    """
    if record.get("preset") is None:
        return None
    try:
        now = current_config(record["preset"], record["overrides"])
    except Exception as error:  # a preset or an override path that no longer exists
        return f"its preset and overrides no longer build a config ({error})"
    if record.get("model_hash") == model_hash(now):
        return None
    stored = record.get("config")
    if stored is None:
        return "its model_hash is not its preset's now (it stored no config to compare)"
    changes = config_changes(stored, now)
    if not changes:
        return None
    shown = "; ".join(changes[:CHANGES_SHOWN])
    more = f" (and {len(changes) - CHANGES_SHOWN} more)" if len(changes) > CHANGES_SHOWN else ""
    return f"{shown}{more}"


def config_changes(stored: Mapping[str, Any], cfg: Any) -> list[str]:
    """The keys on which the flat config ``stored`` (``run_config`` of a past run) and ``cfg``
    disagree, each as ``key: stored -> now``. Keys only ``cfg`` has agree when they lie in a
    config field that ``stored`` lacks entirely (a field added since) and that field is at its
    own default; a new key under a mapping or config that ``stored`` has is a change (a kind
    added to ``model.experts.counts`` adds an expert, whatever the field's default holds)."""
    now = run_config(cfg)
    stored_paths = {prefix for key in stored for prefix in _prefixes(key)}
    changes, new_paths = [], set()
    for key in sorted(set(stored) | set(now)):
        if key not in now:
            changes.append(f"{key}: {stored[key]!r} -> removed")
        elif key not in stored:
            path = next(p for p in _prefixes(key) if p not in stored_paths)
            if path not in new_paths:
                new_paths.add(path)
                changes.extend(_new_path_change(cfg, now, path))
        elif stored[key] != now[key]:
            changes.append(f"{key}: {stored[key]!r} -> {now[key]!r}")
    return changes


def run_config(cfg: Any) -> dict[str, Any]:
    """The parts of ``cfg`` that ``model_hash`` covers as dotted keys (``apply_overrides``'s
    paths), JSON-safe."""
    from hmoe.platform.tracking.runs import flatten

    parts = {part: getattr(cfg, part).to_dict() for part in HASHED_PARTS}
    return {k: v for k, v in flatten(parts).items() if k not in UNHASHED_KEYS}


def _prefixes(key: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``."""
    names = key.split(".")
    return [".".join(names[:depth]) for depth in range(1, len(names) + 1)]


def _new_path_change(cfg: Any, now: Mapping[str, Any], path: str) -> list[str]:
    """The change the keys of ``now`` at and under ``path`` (absent from the stored config)
    make: none when ``path`` is a config field whose own default gives exactly them."""
    from hmoe.config import to_plain
    from hmoe.platform.tracking.runs import flatten

    under = f"{path}."
    subtree = {k: v for k, v in now.items() if k == path or k.startswith(under)}
    shown = subtree.get(path, {k.removeprefix(under): v for k, v in subtree.items()})
    default = _field_default(cfg, path)
    if default is _NO_DEFAULT:
        return [f"{path}: new, {shown!r}, and not a config field with a default"]
    at_default = flatten({path: to_plain(default)})
    if {k: v for k, v in at_default.items() if k not in UNHASHED_KEYS} != subtree:
        return [f"{path}: new, {shown!r} is not its default"]
    return []


def _field_default(cfg: Any, path: str) -> Any:
    """The own default of the config field at the dotted ``path`` of ``cfg``; ``_NO_DEFAULT``
    when ``path`` is not a config's field (a key of a mapping) or the field has no default."""
    from hmoe.config import Config

    *parents, name = path.split(".")
    node = cfg
    for parent in parents:
        if isinstance(node, Config) and parent in _field_names(node):
            node = getattr(node, parent)
        elif isinstance(node, Mapping) and parent in node:
            node = node[parent]
        else:
            return _NO_DEFAULT
    if not isinstance(node, Config) or name not in _field_names(node):
        return _NO_DEFAULT
    field_ = next(f for f in dataclasses.fields(node) if f.name == name)
    if field_.default is not dataclasses.MISSING:
        return field_.default
    if field_.default_factory is not dataclasses.MISSING:
        return field_.default_factory()
    return _NO_DEFAULT


def _field_names(config: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(config)}


def _key_of(record: Mapping[str, Any]) -> str:
    return json.dumps({k: record.get(k) for k in KEY_FIELDS}, sort_keys=True, default=str)


def model_hash(cfg: Any) -> str:
    """Hash of what decides a run's numbers (model, loss, training), not of where its data,
    tracking or Ray Train run folders live: the cache key holds the preset's name only, so
    this catches a preset whose contents changed since a run was stored."""
    from hmoe.config import config_hash
    from hmoe.platform.experiment import DEFAULT_STORAGE

    train = dataclasses.replace(cfg.train, storage_path=DEFAULT_STORAGE)
    return "".join(config_hash(part) for part in (cfg.model, cfg.loss, train))


def _best_epoch(history: Sequence[Mapping[str, float]], metric: str) -> Mapping[str, float]:
    scored = [h for h in history if metric in h]
    if not scored:
        return history[-1] if history else {}
    from hmoe.platform.core.metrics import metric_mode

    minimise = metric_mode(metric) == "min"
    return (min if minimise else max)(scored, key=lambda h: h[metric])


def seeds_of(
    ctx: Context,
    *,
    section: str,
    dataset: str,
    variant: str,
    preset: str,
    data: Path,
    overrides: Mapping[str, Any],
    extra: Extra | None = None,
) -> list[dict[str, Any]]:
    runs = [
        train(
            ctx,
            section=section,
            dataset=dataset,
            variant=variant,
            preset=preset,
            data=data,
            overrides=overrides,
            seed=seed,
            extra=extra,
        )
        for seed in ctx.seeds
    ]
    return [r for r in runs if r is not None]


def incomplete(section: str, seeds: Sequence[int], stored: Mapping[str, int]) -> str:
    """A note naming the rows with fewer stored runs than ``seeds`` (``{row: runs}``), or "".

    A run not done yet is left out of a row's mean, not guessed; the note says so, so that a
    row of fewer seeds is not read as one of the seeds the section states.
    """
    short = [f"{row}: {n}" for row, n in stored.items() if n < len(seeds)]
    if not short:
        return ""
    return (
        f"**Incomplete**: stored runs of the {len(seeds)} seeds per row: {'; '.join(short)}; "
        f"rerun `python benchmarks/reproduce.py --sections {section}` to complete them.\n"
    )


def seed_noise(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Twice the larger seed std of two rows' values, the bar a difference of their means must
    clear to count as an effect; None with fewer than two seeds a side (no spread to judge by)."""
    if min(len(a), len(b)) < 2:
        return None
    return 2 * max(mean_std(a)[1], mean_std(b)[1])


def noise_verdict(a: Sequence[float], b: Sequence[float]) -> str:
    """Whether the means of ``a`` and ``b`` differ by more than ``seed_noise``, in words."""
    noise = seed_noise(a, b)
    if noise is None:
        return "too few seeds to judge"
    gap = mean_std(a)[0] - mean_std(b)[0]
    return "beyond 2 seed stds" if abs(gap) > noise else "within 2 seed stds (noise)"


def first_task_logits(model: Any, data: Mapping[str, Any], batch_size: int) -> Any:
    """Logits ``[N]`` (float64 numpy) of the model's first task over a whole split in memory."""
    import torch

    from hmoe.platform.data.batches import iter_minibatches

    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = [model(batch).float() for batch in iter_minibatches(data, batch_size)]
    model.train(was_training)
    return torch.cat(logits)[:, 0].double().numpy()


def values(records: Sequence[Mapping[str, Any]], metric: str) -> list[float]:
    out = []
    for r in records:
        source = r["ia"] if metric.startswith("ia_") else r["metrics"]
        if metric in source:
            out.append(float(source[metric]))
    return out


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs: Sequence[float], digits: int = 4) -> str:
    """``mean ± std`` (sample std over seeds), or ``n/a``."""
    if not xs:
        return "n/a"
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(kw_only=True)
class Section:
    """One part of the report: a title and its markdown body."""

    title: str
    body: str

    def render(self) -> str:
        return f"## {self.title}\n\n{self.body.strip()}\n"
