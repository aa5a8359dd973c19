"""``hmoe cluster up | down | status``: a local Ray head on 127.0.0.1 with the Jobs API."""

from __future__ import annotations

import argparse

from hmoe.jobs.commands import NotImplementedYet

ISSUE = "issue #6: cluster and job submission"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cluster", help="start, stop or inspect a local Ray head")
    sub = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start a Ray head with the dashboard on 127.0.0.1")
    up.add_argument("--port", type=int, default=6379, help="GCS port")
    up.add_argument("--num-cpus", type=int, default=None, help="logical CPUs to advertise")
    up.set_defaults(func=run)
    down = sub.add_parser("down", help="stop the local Ray head")
    down.set_defaults(func=run)
    status = sub.add_parser("status", help="show the cluster's resources and address")
    status.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedYet(ISSUE)
