"""``hmoe train``: one training run of a preset on a prepared dataset (Ray Train + MLflow)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any

from hmoe.config import ConfigError
from hmoe.jobs.commands.options import add_set_argument, parse_sets

METRIC_COLUMNS = ("auc", "gauc", "logloss")
TRACKING_URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)"
# what --resume takes from the run's logged config instead
CONFIG_FLAGS = ("preset", "data", "sets", "workers", "gpus_per_worker", "experiment",
                "registered_model")  # fmt: skip


def add_tracking_uri_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    add_tracking_uri_argument(parser)
    parser.add_argument("--experiment", default=None, help="MLflow experiment name")
    parser.add_argument(
        "--registered-model",
        default=None,
        help="Model Registry name of the trained model (default: <experiment>-best)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one model (Ray Train)")
    parser.add_argument("--preset", help="model preset, e.g. hmoe, dcnv2, debug (required)")
    parser.add_argument("--data", help="prepared dataset directory (required)")
    parser.add_argument(
        "--resume",
        metavar="RUN_ID",
        default=None,
        help="resume this unfinished run from its checkpoint, with its logged config "
        "(instead of --preset/--data)",
    )
    add_set_argument(parser)
    parser.add_argument("--workers", type=int, default=None, help="Ray Train workers (DDP)")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker")
    add_tracking_arguments(parser)
    parser.set_defaults(func=run)


def metrics_table(per_task: Mapping[str, Mapping[str, float]]) -> str:
    """One row per task and split: AUC, GAUC and logloss."""
    header = f"{'task':<16}{'split':<7}" + "".join(f"{m:>10}" for m in METRIC_COLUMNS)
    lines = [header, "-" * len(header)]
    for task, values in per_task.items():
        for split in ("val", "test"):
            cells = []
            for metric in METRIC_COLUMNS:
                value = values.get(f"{split}_{metric}", math.nan)
                cells.append(f"{value:>10.4f}")
            lines.append(f"{task:<16}{split:<7}" + "".join(cells))
    return "\n".join(lines)


def shortcut_options(args: argparse.Namespace) -> dict[str, Any]:
    """The resource and tracking flags ``hmoe train`` and ``hmoe tune`` share, as API keywords."""
    names = ("workers", "gpus_per_worker", "tracking_uri", "experiment", "registered_model")
    return {name: getattr(args, name) for name in names}


def run(args: argparse.Namespace) -> int:
    # parse and validate before importing the platform (which imports torch and Ray)
    if args.resume is not None:
        given = [name for name in CONFIG_FLAGS if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + ("set" if n == "sets" else n.replace("_", "-")) for n in given)
            raise ConfigError(f"--resume takes the run's logged config; drop {flags}")
        from hmoe.platform.api import resume

        return print_result(resume(args.resume, tracking_uri=args.tracking_uri, progress=print))
    if args.preset is None or args.data is None:
        raise ConfigError("--preset and --data are required (or --resume RUN_ID)")
    overrides = parse_sets(args.sets)
    from hmoe.platform.api import train

    result = train(
        args.preset,
        args.data,
        overrides,
        **shortcut_options(args),
        progress=print,
    )
    return print_result(result)


def print_result(result: Any) -> int:
    print()
    print(metrics_table(result.per_task))
    print()
    best = result.metrics.get("best_epoch")
    if best is not None:
        print(f"best epoch: {int(best)} (the metrics above are that epoch's; its weights are kept)")
    print(f"MLflow run id: {result.run_id}  ({result.run_name})")
    if result.model_version is not None:
        print(f"registered model: {result.registered_model} version {result.model_version}")
    return 0
