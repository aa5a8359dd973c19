"""``hmoe jobs list | status | logs | stop``: follow jobs on a Ray cluster."""

from __future__ import annotations

import argparse

from hmoe.jobs.commands import NotImplementedYet

ISSUE = "issue #6: job submission"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("jobs", help="list, inspect, follow or stop submitted jobs")
    parser.add_argument("--address", default=None, help="Ray dashboard URL (default: local)")
    sub = parser.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="list jobs").set_defaults(func=run)
    for name, text in (("status", "show a job's status"), ("stop", "stop a running job")):
        action = sub.add_parser(name, help=text)
        action.add_argument("job_id")
        action.set_defaults(func=run)
    logs = sub.add_parser("logs", help="print a job's logs")
    logs.add_argument("job_id")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends")
    logs.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedYet(ISSUE)
