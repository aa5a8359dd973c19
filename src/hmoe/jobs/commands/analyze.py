"""``hmoe analyze``: dimensional collapse, behaviour-target correlation, interest entanglement."""

from __future__ import annotations

import argparse

from hmoe.jobs.commands import NotImplementedYet

ISSUE = "issue #7: analysis tools"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("analyze", help="analyse a trained run (plots to MLflow)")
    parser.add_argument("run_id", help="MLflow run id")
    parser.add_argument(
        "--kind", choices=["collapse", "correlation", "entanglement", "all"], default="all"
    )
    parser.add_argument("--out", default=None, help="local directory for the PNG plots")
    parser.add_argument("--tracking-uri", default=None, help="MLflow URI (default: ./mlflow.db)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedYet(ISSUE)
