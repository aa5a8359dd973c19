"""``hmoe jobs list | status | logs | stop | result``: follow jobs on a Ray cluster."""

from __future__ import annotations

import argparse
import sys
import time

from hmoe.jobs.commands.cluster import reports_errors
from hmoe.jobs.commands.submit import add_client_arguments, print_result

EXIT_NOT_SUCCEEDED = 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("jobs", help="list, inspect, follow or stop submitted jobs")
    sub = parser.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    actions = [sub.add_parser("list", help="list jobs")]
    actions[0].set_defaults(func=run_list)
    for name, text, func in (
        ("status", "show a job's status", run_status),
        ("stop", "stop a running job (its MLflow runs end KILLED)", run_stop),
        ("result", "print a finished job's best trial and MLflow ids", run_result),
    ):
        action = sub.add_parser(name, help=text)
        action.add_argument("job_id")
        action.set_defaults(func=func)
        actions.append(action)
    logs = sub.add_parser("logs", help="print a job's logs")
    logs.add_argument("job_id")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends")
    logs.set_defaults(func=run_logs)
    actions.append(logs)
    for action in actions:
        add_client_arguments(action)


def _job(args: argparse.Namespace):  # -> hmoe.jobs.api.Job
    from hmoe.jobs.api import get_job

    return get_job(args.job_id, args.address, token_file=args.token_file, state_dir=args.state_dir)


@reports_errors
def run_list(args: argparse.Namespace) -> int:
    from hmoe.jobs.api import list_jobs

    jobs = list_jobs(args.address, token_file=args.token_file, state_dir=args.state_dir)
    print(f"{'SUBMISSION ID':<44} {'STATUS':<10} {'STARTED':<20} KIND")
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((job.start_time or 0) / 1e3))
        kind = (job.metadata or {}).get("hmoe.kind", "-")
        print(
            f"{job.submission_id or job.job_id or '-':<44} {job.status.value:<10} "
            f"{started:<20} {kind}"
        )
    return 0


@reports_errors
def run_status(args: argparse.Namespace) -> int:
    info = _job(args).info()
    print(f"{args.job_id}: {info.status.value}")
    if info.message:
        print(f"  {info.message.splitlines()[0]}")
    return 0


@reports_errors
def run_logs(args: argparse.Namespace) -> int:
    job = _job(args)
    if not args.follow:
        sys.stdout.write(job.logs())
        return 0
    for chunk in job.follow():
        sys.stdout.write(chunk)
        sys.stdout.flush()
    return 0


@reports_errors
def run_stop(args: argparse.Namespace) -> int:
    job = _job(args)
    if not job.stop():
        print(f"{args.job_id} had already ended: {job.status()}")
        return 0
    print(f"stopping {args.job_id} ...", flush=True)
    print(f"{args.job_id}: {job.wait()}")
    return 0


@reports_errors
def run_result(args: argparse.Namespace) -> int:
    from hmoe.jobs.api import JobError

    try:
        print_result(_job(args))
    except JobError as err:
        print(f"hmoe jobs result: {err}", file=sys.stderr)
        return EXIT_NOT_SUCCEEDED
    return 0
