"""``hmoe tune``: a Ray Tune + Optuna search over a preset, one MLflow child run per trial."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hmoe.jobs.commands.options import add_set_argument, parse_sets
from hmoe.jobs.commands.train import add_tracking_arguments, metrics_table, shortcut_options

EXIT_INTERRUPTED = 130  # the shell's code for an interrupted (Ctrl+C) command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tune", help="search hyperparameters (Ray Tune + Optuna)")
    parser.add_argument("--preset", required=True, help="base preset")
    parser.add_argument(
        "--space",
        required=True,
        help="search space: a shipped one (full, experts, smoke, ...) or your own define-by-run "
        "function as FILE.py:FUNCTION",
    )
    parser.add_argument("--data", required=True, help="prepared dataset directory")
    parser.add_argument("--num-samples", type=int, required=True, help="number of trials")
    parser.add_argument("--max-concurrent", type=int, default=1, help="trials at once")
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    parser.add_argument("--resume", action="store_true", help="resume an interrupted search")
    parser.add_argument("--workers", type=int, default=None, help="Ray Train workers per trial")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker")
    add_set_argument(parser)
    add_tracking_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = parse_sets(args.sets)
    from hmoe.platform.search.tune import SearchInterrupted, tune

    try:
        result = run_search(tune, args, overrides)
    except SearchInterrupted as err:
        print(f"hmoe tune: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return report(result)


def run_search(tune: Any, args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    return tune(
        args.preset,
        args.space,
        args.data,
        args.num_samples,
        overrides,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        resume=args.resume,
        **shortcut_options(args),
        progress=print,
    )


def report(result: Any) -> int:
    print(f"\nsearch {result.search_name}: {result.num_trials} trials, {result.num_errors} failed")
    for trial, reason in result.errors.items():
        print(f"  failed {trial}: {reason.splitlines()[0][:160]}")
    if result.best_trial_id is None:
        print("no trial finished")
        return 1
    print(f"best trial {result.best_trial_id}: {result.best_params}")
    print()
    print(metrics_table(result.best_per_task))
    print()
    print(f"MLflow parent run id: {result.parent_run_id}; best trial run id: {result.best_run_id}")
    if result.model_version is not None:
        print(f"registered model: {result.registered_model} version {result.model_version}")
    return 0
