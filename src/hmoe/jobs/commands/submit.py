"""``hmoe submit``: send a job spec (search or training run) to a Ray cluster's Jobs API."""

from __future__ import annotations

import argparse

from hmoe.jobs.commands import NotImplementedYet

ISSUE = "issue #6: job submission"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("submit", help="submit a job spec to a Ray cluster")
    parser.add_argument("job", help="job spec (YAML)")
    parser.add_argument("--address", default=None, help="Ray dashboard URL (default: local)")
    parser.add_argument("--wait", action="store_true", help="wait for the job and print result")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedYet(ISSUE)
