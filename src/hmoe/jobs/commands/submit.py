"""``hmoe submit``: send a job spec (search or training run) to a Ray cluster's Jobs API."""

from __future__ import annotations

import argparse
import json
import sys

from hmoe.jobs.commands import add_set_argument, parse_sets
from hmoe.jobs.commands.cluster import add_state_dir_argument, reports_errors

EXIT_JOB_FAILED = 1


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray dashboard URL, e.g. http://HEAD:8265 (default: $RAY_ADDRESS, then the head "
        "of `hmoe cluster up`)",
    )
    parser.add_argument("--token-file", default=None, help="Ray auth token file")
    add_state_dir_argument(parser)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("submit", help="submit a job spec to a Ray cluster")
    parser.add_argument("job", help="job spec (YAML), e.g. src/hmoe/jobs/examples/smoke.yaml")
    add_client_arguments(parser)
    parser.add_argument("--wait", action="store_true", help="follow the logs, print the result")
    add_set_argument(parser)
    parser.add_argument(
        "--no-check-paths",
        action="store_true",
        help="do not check dataset paths here (they exist only on a remote cluster)",
    )
    parser.set_defaults(func=run)


def print_result(job: object) -> None:
    result = job.result()  # type: ignore[attr-defined]
    print(f"result of {result.job_id}:")
    print(f"  MLflow {result.tracking_uri}, experiment {result.experiment!r}")
    print(
        f"  parent run {result.parent_run_id}: {result.num_trials} trial(s), "
        f"{result.num_errors} failed"
    )
    print(f"  best run {result.best_run_id} (trial {result.best_trial_id})")
    print(f"  best params {json.dumps(result.best_params, sort_keys=True, default=str)}")
    main = {k: v for k, v in sorted(result.best_metrics.items()) if k.startswith(("val_", "test_"))}
    print("  best metrics " + ", ".join(f"{k}={v:.4f}" for k, v in main.items()))
    if result.model_version is not None:
        print(f"  registered model {result.registered_model} version {result.model_version}")


@reports_errors
def run(args: argparse.Namespace) -> int:
    from hmoe.jobs.api import submit

    job = submit(
        args.job,
        args.address,
        overrides=parse_sets(args.sets),
        check_paths=not args.no_check_paths,
        token_file=args.token_file,
        state_dir=args.state_dir,
    )
    print(f"submitted {job.submission_id} to {job.client.address}")
    print(f"  follow: hmoe jobs logs {job.submission_id} --follow")
    if not args.wait:
        return 0
    for chunk in job.follow():
        sys.stdout.write(chunk)
        sys.stdout.flush()
    status = job.wait()
    print(f"job {job.submission_id}: {status}")
    if status != "SUCCEEDED":
        return EXIT_JOB_FAILED
    print_result(job)
    return 0
