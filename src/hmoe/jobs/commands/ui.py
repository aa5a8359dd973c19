"""``hmoe ui``: an MLflow tracking server (sqlite + local artifacts) on 127.0.0.1."""

from __future__ import annotations

import argparse

from hmoe.jobs.commands import NotImplementedYet

ISSUE = "issue #6: MLflow server and UI"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ui", help="start (or --stop) the MLflow tracking server")
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1")
    parser.add_argument("--stop", action="store_true", help="stop the server started by hmoe ui")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedYet(ISSUE)
