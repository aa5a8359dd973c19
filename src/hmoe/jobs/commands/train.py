"""``hmoe train``: one training run of a preset on a prepared dataset (Ray Train + MLflow)."""

from __future__ import annotations

import argparse

from hmoe.jobs.commands import NotImplementedYet, add_set_argument

ISSUE = "issue #5: Ray Train loop and MLflow tracking"


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None, help="MLflow URI (default: ./mlflow.db)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment name")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one model (Ray Train)")
    parser.add_argument("--preset", required=True, help="model preset, e.g. hmoe, dcnv2, debug")
    parser.add_argument("--data", required=True, help="prepared dataset directory")
    add_set_argument(parser)
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker")
    add_tracking_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedYet(ISSUE)
