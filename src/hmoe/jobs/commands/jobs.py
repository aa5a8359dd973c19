"""``hmoe jobs list | status | logs | stop | delete | resume | result``: follow jobs on a Ray
cluster. ``--json`` on ``list``, ``status`` and ``result`` prints one JSON document with stable
keys (``hmoe.jobs.JobProgress`` / ``JobResult`` field names) instead of the table."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from hmoe.jobs.commands.cluster import reports_errors
from hmoe.jobs.commands.submit import (
    EXIT_DETACHED,
    add_client_arguments,
    address_hint,
    finish,
    follow_until_done,
    print_result,
)

EXIT_NOT_SUCCEEDED = 1
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
LIST_KEYS = ("job_id", "status", "kind", "name", "start_time", "end_time", "message")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "jobs", help="list, inspect, follow, stop, delete or resume submitted jobs"
    )
    sub = parser.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    actions = {"list": sub.add_parser("list", help="list jobs")}
    actions["list"].set_defaults(func=run_list)
    for name, text, func in (
        ("status", "show a job's status, trials done and best val_auc", run_status),
        ("stop", "stop a running job (its MLflow runs end KILLED)", run_stop),
        ("delete", "delete an ended job and its logs from the cluster", run_delete),
        ("resume", "resume a stopped or failed search from its Ray Tune state", run_resume),
        ("result", "print a finished job's best trial and MLflow ids", run_result),
    ):
        action = sub.add_parser(name, help=text)
        action.add_argument("job_id")
        action.set_defaults(func=func)
        actions[name] = action
    for name in ("list", "status", "result"):
        actions[name].add_argument("--json", action="store_true", help="print JSON, stable keys")
    actions["resume"].add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow the resumed job until it ends (default); --no-wait returns at once",
    )
    logs = sub.add_parser("logs", help="print a job's logs")
    logs.add_argument("job_id")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends")
    logs.set_defaults(func=run_logs)
    actions["logs"] = logs
    for action in actions.values():
        add_client_arguments(action)


def _job(args: argparse.Namespace):  # -> hmoe.jobs.api.Job
    from hmoe.jobs.api import get_job

    return get_job(args.job_id, args.address, token_file=args.token_file, state_dir=args.state_dir)


def _when(seconds: float | None) -> str:
    return time.strftime(TIME_FORMAT, time.localtime(seconds)) if seconds else "-"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


@reports_errors
def run_list(args: argparse.Namespace) -> int:
    from hmoe.jobs.api import job_status, list_jobs

    jobs = list_jobs(args.address, token_file=args.token_file, state_dir=args.state_dir)
    rows = [job_status(job) for job in jobs]
    if args.json:
        _print_json([{k: row[k] for k in LIST_KEYS} for row in rows])
        return 0
    print(f"{'SUBMISSION ID':<44} {'STATUS':<10} {'STARTED':<20} KIND")
    for row in rows:
        print(
            f"{row['job_id'] or '-':<44} {row['status']:<10} {_when(row['start_time']):<20} "
            f"{row['kind'] or '-'}"
        )
    return 0


@reports_errors
def run_status(args: argparse.Namespace) -> int:
    progress = _job(args).progress()
    if args.json:
        _print_json(progress.to_dict())
        return 0
    print(f"{args.job_id}: {progress.status}")
    if progress.message:
        print(f"  {progress.message.splitlines()[0]}")
    if progress.resumes:
        print(f"  resumes the search of job {progress.resumes}")
    if progress.trials_total is not None or progress.trials_finished is not None:
        done = "?" if progress.trials_finished is None else progress.trials_finished
        total = "?" if progress.trials_total is None else progress.trials_total
        print(f"  trials: {done}/{total} finished")
    if progress.best_val_auc is not None:
        print(f"  best val_auc so far: {progress.best_val_auc:.4f}")
    if progress.mlflow_url is not None:
        print(f"  MLflow: {progress.mlflow_url}")
    elif progress.mlflow_error is not None:
        print(f"  MLflow: {progress.mlflow_error}")
    return 0


@reports_errors
def run_logs(args: argparse.Namespace) -> int:
    job = _job(args)
    if not args.follow:
        sys.stdout.write(job.logs())
        return 0
    return 0 if follow_until_done(job, address_hint(args)) is not None else EXIT_DETACHED


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
def run_delete(args: argparse.Namespace) -> int:
    _job(args).delete()
    print(f"deleted {args.job_id} (its MLflow runs and Tune storage are kept)")
    return 0


@reports_errors
def run_resume(args: argparse.Namespace) -> int:
    job = _job(args).resume()
    print(f"submitted {job.submission_id} to {job.client.address}, resuming {args.job_id}")
    return finish(job, args)


@reports_errors
def run_result(args: argparse.Namespace) -> int:
    from hmoe.jobs.api import JobError, JobNotFoundError

    job = _job(args)
    try:
        if args.json:
            _print_json(job.result().to_dict())
        else:
            print_result(job)
    except JobNotFoundError:
        raise
    except JobError as err:
        print(f"hmoe jobs result: {err}", file=sys.stderr)
        return EXIT_NOT_SUCCEEDED
    return 0
