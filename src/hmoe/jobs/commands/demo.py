"""``hmoe demo``: the main job end to end on this machine (prepare, search, leaderboard, UI).

A thin layer over ``hmoe.jobs.demo.run_demo``: flags to a ``DemoConfig``, progress lines
to stdout, then the leaderboard, the registered model, the plots and the MLflow UI command.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from hmoe.jobs.commands.options import add_set_argument, parse_sets

# flag -> DemoConfig field; a flag left out keeps the config's default
FLAGS = {
    "out": "out",
    "synthetic": "synthetic",
    "rows": "rows",
    "trials": "trials",
    "epochs": "epochs",
    "space": "space",
    "max_concurrent": "max_concurrent",
    "cpus_per_worker": "cpus_per_worker",
    "seed": "seed",
}
PARAM_WIDTH = 14
# the Train workers' ingest progress bars would drown the demo's own progress lines; a Ray that
# this process starts passes its environment to its workers
QUIET_RAY_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job end to end on this machine")
    parser.add_argument("--out", default=None, help="output folder (default hmoe-runs/demo)")
    parser.add_argument(
        "--synthetic", action="store_true", default=None, help="synthetic logs, not ml-100k"
    )
    parser.add_argument("--rows", type=int, default=None, help="synthetic impressions")
    parser.add_argument("--trials", type=int, default=None, help="trials in the search")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (at most)")
    parser.add_argument("--space", default=None, help="search space (hmoe.search_spaces)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once")
    parser.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per trial")
    parser.add_argument("--seed", type=int, default=None, help="data, sampler and init seed")
    add_set_argument(parser)  # any other DemoConfig field, e.g. --set fetch=false
    parser.set_defaults(func=run)


def demo_config(args: argparse.Namespace) -> Any:
    """The DemoConfig of the parsed flags (``--set`` last, so it wins)."""
    from hmoe.config import apply_overrides
    from hmoe.jobs.demo import DemoConfig

    flags = {field: getattr(args, flag) for flag, field in FLAGS.items()}
    overrides = {field: value for field, value in flags.items() if value is not None}
    return apply_overrides(DemoConfig(), {**overrides, **parse_sets(args.sets)})


def run(args: argparse.Namespace) -> int:
    cfg = demo_config(args)
    from hmoe.jobs.demo import run_demo

    for key, value in QUIET_RAY_ENV.items():
        os.environ.setdefault(key, value)
    start = time.perf_counter()
    result = run_demo(cfg, progress=lambda line: print(line, flush=True))
    print()
    print(f"dataset: {result.data.name} - {result.data.note}")
    print(f"search {result.search_name} (MLflow parent run {result.parent_run_id})")
    print()
    print(leaderboard_table(result.leaderboard, result.tasks))
    print()
    if result.model_version is None:
        print("no trial finished: no model registered")
        return 1
    print(f"best trial run: {result.best_run_id}")
    print(f"registered model: {result.registered_model} version {result.model_version}")
    for name, path in result.plots.items():
        print(f"plot {name}: {path}")
    print(f"finished in {time.perf_counter() - start:.0f} s")
    print()
    print("open the MLflow UI on these runs with:")
    print(f"  {result.ui_command}")
    return 0


def leaderboard_table(rows: Sequence[Any], tasks: Sequence[str]) -> str:
    """Rank, trial, sampled parameters, epochs run, validation and test AUC per task."""
    names = sorted({name for row in rows for name in row.params})
    short = [name.rsplit(".", 1)[-1][:PARAM_WIDTH] for name in names]
    aucs = [f"{split} {task}"[:PARAM_WIDTH] for task in tasks for split in ("val", "test")]
    header = f"{'#':<3}{'trial':<14}" + "".join(f"{s:>{PARAM_WIDTH + 1}}" for s in short)
    header += f"{'epochs':>7}" + "".join(f"{a:>{PARAM_WIDTH + 1}}" for a in aucs) + "  status"
    lines = [header, "-" * len(header)]
    for rank, row in enumerate(rows, 1):
        cells = [_cell(row.params.get(name)) for name in names]
        for task in tasks:
            cells_auc = (row.val_auc.get(task, math.nan), row.test_auc.get(task, math.nan))
            cells += ["-" if math.isnan(v) else f"{v:.4f}" for v in cells_auc]
        line = f"{rank:<3}{row.trial_id:<14}"
        line += "".join(f"{c:>{PARAM_WIDTH + 1}}" for c in cells[: len(names)])
        line += f"{row.epochs:>7}"
        line += "".join(f"{c:>{PARAM_WIDTH + 1}}" for c in cells[len(names) :])
        lines.append(f"{line}  {row.status}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)[:PARAM_WIDTH]
