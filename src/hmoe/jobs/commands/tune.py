"""``hmoe tune``: a Ray Tune + Optuna search over a preset, one MLflow child run per trial."""

from __future__ import annotations

import argparse

from hmoe.jobs.commands import NotImplementedYet, add_set_argument
from hmoe.jobs.commands.train import add_tracking_arguments

ISSUE = "issue #5: Ray Tune/Optuna search"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tune", help="search hyperparameters (Ray Tune + Optuna)")
    parser.add_argument("--preset", required=True, help="base preset")
    parser.add_argument("--space", required=True, help="search space, e.g. full, experts, smoke")
    parser.add_argument("--data", required=True, help="prepared dataset directory")
    parser.add_argument("--num-samples", type=int, required=True, help="number of trials")
    parser.add_argument("--max-concurrent", type=int, default=1, help="trials at once")
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    parser.add_argument("--resume", action="store_true", help="resume an interrupted search")
    add_set_argument(parser)
    add_tracking_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedYet(ISSUE)
