"""The multi-task section's datasets: adult and a synthetic log, each with single-task copies.

A single-task baseline is a separate model per task, so it needs a dataset whose schema has
that one task: the same spec with only that label (same rows, same seeded split, same
features), prepared beside the multi-task one under ``ctx.work/data``. Nothing is prepared in a
``cached_only`` context (the paths are returned as they would be; the records do not need them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from repro.common import Context
from repro.datasets import SPECS_DIR, prepared

ADULT = "adult"
ADULT_TASKS = ("income", "never_married")
SYNTH = "synth_mt"
SYNTH_TASKS = ("click", "like")  # conversion needs a click: too few positives at this size
SYNTH_ROWS = 100_000
SYNTH_SEED = 7
# denser labels than the synth defaults (click 0.035, like 0.02), so a 10k-row test split holds
# about 1,000 clicks and 800 likes and a task's AUC is not dominated by its few positives
SYNTH_CLICK_RATE = 0.10
SYNTH_LIKE_RATE = 0.08


def synth_config() -> Any:
    from hmoe.platform.data.synth import SynthConfig

    return SynthConfig(tasks=SYNTH_TASKS, click_rate=SYNTH_CLICK_RATE, like_rate=SYNTH_LIKE_RATE)


def raw_dir(ctx: Context, name: str, rows: int, seed: int) -> Path:
    return ctx.work / "raw" / f"{name}-{rows}-{seed}"


def synth_raw(ctx: Context, name: str, rows: int, seed: int, config: Any) -> Path:
    """``hmoe data synth`` output of ``rows`` rows (``seed``, ``config``) in ``raw_dir``,
    generated once."""
    from hmoe.platform.data.synth import SPEC_FILE, synthesize

    raw = raw_dir(ctx, name, rows, seed)
    if not (raw / SPEC_FILE).exists():
        import ray

        if not ray.is_initialized():  # synthesize asks the running cluster for its CPUs
            ray.init(include_dashboard=False, configure_logging=False)
        ctx.log(f"synthesizing {rows:,} rows (seed {seed}) -> {raw}")
        synthesize(raw, rows, seed, config, overwrite=True)
    return raw


def _one_task(spec: dict[str, Any], task: str, name: str) -> dict[str, Any]:
    labels = [label for label in spec["labels"] if label["task"] == task]
    if len(labels) != 1:
        raise ValueError(f"spec {spec['name']!r} has no single label for task {task!r}")
    # a history of the other task's positives keeps that label as a raw-column filter (the
    # same rows), since only_positive_of must name one of the spec's tasks
    sequences = [_positive_filter(q, task) for q in spec.get("sequences", [])]
    return spec | {"name": name, "labels": labels} | ({"sequences": sequences} if sequences else {})


def _positive_filter(sequence: dict[str, Any], task: str) -> dict[str, Any]:
    other = sequence.get("only_positive_of")
    if other is None or other == task:
        return sequence
    if "filter" in sequence:
        raise ValueError(f"sequence {sequence['name']!r} has both only_positive_of and filter")
    kept = {k: v for k, v in sequence.items() if k != "only_positive_of"}
    return kept | {"filter": {"column": other, "where": {"op": "==", "value": 1}}}


def prepare_spec(ctx: Context, name: str, spec: Callable[[], dict[str, Any]], base: Path) -> Path:
    """Prepare the spec ``spec()`` (paths relative to ``base``) as ``ctx.work/data/name``."""
    from hmoe.platform.data import prepare

    out = ctx.work / "data" / name
    if ctx.cached_only or (out / "manifest.json").exists():
        return out
    ctx.log(f"preparing {name} -> {out}")
    spec_path = ctx.work / "specs" / f"{name}.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(yaml.safe_dump(spec(), sort_keys=False))
    prepare(spec_path, out, base_dir=base)
    return out


def adult(ctx: Context, task: str | None = None) -> Path:
    """Prepared adult: both tasks (``task=None``) or only ``task``."""
    if task is None:
        return prepared(ctx, ADULT)
    shipped = yaml.safe_load((SPECS_DIR / f"{ADULT}.yaml").read_text())
    name = f"{ADULT}-{task}"
    return prepare_spec(ctx, name, lambda: _one_task(shipped, task, name), SPECS_DIR)


def synth(ctx: Context, task: str | None = None) -> Path:
    """Prepared synthetic log (generated once): both tasks (``task=None``) or only ``task``."""
    from hmoe.platform.data.synth import SPEC_FILE

    name = SYNTH if task is None else f"{SYNTH}-{task}"
    raw = raw_dir(ctx, SYNTH, SYNTH_ROWS, SYNTH_SEED)

    def spec() -> dict[str, Any]:
        made = synth_raw(ctx, SYNTH, SYNTH_ROWS, SYNTH_SEED, synth_config())
        full = yaml.safe_load((made / SPEC_FILE).read_text())
        return full | {"name": name} if task is None else _one_task(full, task, name)

    out = prepare_spec(ctx, name, spec, raw)
    if not ctx.cached_only:
        copy_planted(raw, ctx.work / "specs")
    return out


def copy_planted(raw: Path, spec_dir: Path) -> None:
    """The analyses find a synth dataset's planted correlation beside the spec it was prepared
    from; a derived spec lives in ``spec_dir``, so the raw output's files go there too."""
    import shutil

    from hmoe.platform.analysis.inputs import PLANTED_MATRIX, PLANTED_META

    for name in (PLANTED_MATRIX, PLANTED_META):
        if (raw / name).exists() and not (spec_dir / name).exists():
            shutil.copy2(raw / name, spec_dir / name)
