"""The reproduction report's runner: cached training runs, seed statistics, markdown tables.

Every training run of the report is one *record* (section, dataset, variant, seed, the resolved
overrides, the final validation/test metrics of the best-validation epoch, information abundance
at that epoch, parameter count, wall time) appended to a JSON-lines store that is committed
beside the report (``docs/results/runs.jsonl``). A record is reused while its overrides are
unchanged, so an interrupted report resumes and the markdown can be re-rendered without
re-training; ``--force`` retrains (``--retrain DATASET``: only that dataset's runs, e.g. after
a metric changed). Records stored since 2026-11-29 also carry ``model_hash`` (the resolved
model, loss and training config): when a preset's contents change, such a record is retrained,
or flagged in the log when only rendering. Runs use the standalone loop (``train_standalone``):
the same loop as ``hmoe train``, without Ray workers or MLflow, which measure nothing here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Extra = Callable[[Any, Any], Mapping[str, float]]  # (trained model, ExperimentConfig) -> metrics

SEEDS = (1, 2, 3)  # the peers' seeds (../shared/docs/benchmarks.md)


@dataclass(kw_only=True)
class Context:
    """Where the report reads and writes, and how hard it trains."""

    work: Path  # prepared datasets and scratch (not committed)
    out: Path  # docs/results: runs.jsonl and figures/ (committed)
    data_root: Path
    seeds: tuple[int, ...] = SEEDS
    threads: int = 2
    force: bool = False
    retrain: tuple[str, ...] = ()  # datasets whose runs are retrained even when stored
    cached_only: bool = False  # render from the store; a missing run is left out, not trained
    quick: bool = False  # 1 epoch, for a smoke run of the script itself
    log: Callable[[str], None] = print
    _records: list[dict[str, Any]] = field(default_factory=list)
    _loaded: int = 0  # records read from the store; ``retrain`` skips these, not new ones

    @property
    def store(self) -> Path:
        return self.out / "runs.jsonl"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    def load(self) -> None:
        if self.store.exists():
            lines = self.store.read_text().splitlines()
            self._records = [json.loads(line) for line in lines if line.strip()]
        self._loaded = len(self._records)

    def find(self, key: Mapping[str, Any], *, since: int = 0) -> dict[str, Any] | None:
        """The latest record matching ``key`` among those from index ``since`` on."""
        for record in reversed(self._records[since:]):
            if all(record.get(k) == v for k, v in key.items()):
                return record
        return None

    def add(self, record: dict[str, Any]) -> None:
        self._records.append(record)
        self.out.mkdir(parents=True, exist_ok=True)
        with self.store.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def cached(self) -> Context:
        """A view of this context that trains nothing (same store, same records)."""
        return dataclasses.replace(self, cached_only=True, force=False, retrain=())

    def machines(self) -> dict[str, int]:
        """Stored runs per machine they were trained on (``"not recorded"``: older runs)."""
        return dict(Counter(record.get("machine", "not recorded") for record in self._records))

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
    import torch

    from hmoe.platform.analysis.monitor import epoch_end_hook
    from hmoe.platform.experiment import build_experiment
    from hmoe.platform.training.train_loop import DIAGNOSTICS_PREFIX
    from hmoe.platform.training.trainer import train_standalone

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
    # a render (cached_only) may lack the prepared data: then there is nothing to check against
    prepared = (data / "manifest.json").exists()
    cfg = build_experiment(preset, data, changes) if prepared or not ctx.cached_only else None
    # a retrained dataset reuses only runs of this process (a resumed retrain, or a run that
    # two sections share), never the stored ones
    since = ctx._loaded if dataset in ctx.retrain else 0
    cached = None if ctx.force else ctx.find(key, since=since)
    if cached is not None and cfg is not None and _stale(cached, cfg):
        if ctx.cached_only:
            ctx.log(f"  stale: {dataset} {variant} seed {seed} was trained with another preset")
            return cached
        ctx.log(f"  {dataset} {variant} seed {seed}: the preset changed since, retraining")
        cached = None
    if cached is not None or ctx.cached_only:
        return cached
    torch.set_num_threads(ctx.threads)
    started = time.perf_counter()
    outcome = train_standalone(cfg, epoch_end=epoch_end_hook(cfg.train.monitor))
    wall = time.perf_counter() - started
    best = _best_epoch(outcome.history, cfg.train.early_stopping_metric)
    # the final report's test_* and val_* both belong to the best epoch (whose weights are
    # restored); its diagnostics come from that epoch's history entry
    metrics = {k: v for k, v in outcome.final.items() if k.startswith(("test_", "val_"))}
    ia = {
        k.removeprefix(DIAGNOSTICS_PREFIX): v
        for k, v in best.items()
        if k.startswith(f"{DIAGNOSTICS_PREFIX}ia_")
    }
    if extra is not None:
        metrics |= dict(extra(outcome.model, cfg))
    record = key | {
        "metrics": metrics,
        "ia": ia,
        "best_epoch": int(best.get("epoch", 1)),  # 1-based
        "epochs_run": len(outcome.history),
        "params": sum(p.numel() for p in outcome.model.parameters()),
        "wall_s": round(wall, 1),
        "config_hash": cfg.config_hash(),
        "model_hash": model_hash(cfg),
        "date": dt.date.today().isoformat(),
        "machine": machine(),
    }
    ctx.add(record)
    shown = metrics.get("test_auc", float("nan"))
    ctx.log(f"  {dataset:>8} {variant:<28} seed {seed}  test_auc {shown:.4f}  {wall:5.0f} s")
    return record


def model_hash(cfg: Any) -> str:
    """Hash of what decides a run's numbers (model, loss, training), not of where its data or
    tracking live: the cache key holds the preset's name only, so this catches a preset whose
    contents changed since a run was stored."""
    from hmoe.config import config_hash

    return "".join(config_hash(part) for part in (cfg.model, cfg.loss, cfg.train))


def _stale(record: Mapping[str, Any], cfg: Any) -> bool:
    stored = record.get("model_hash")  # runs stored before 2026-11-29 have none: trusted
    return stored is not None and stored != model_hash(cfg)


def _best_epoch(history: Sequence[Mapping[str, float]], metric: str) -> Mapping[str, float]:
    scored = [h for h in history if metric in h]
    if not scored:
        return history[-1] if history else {}
    minimise = "logloss" in metric
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
