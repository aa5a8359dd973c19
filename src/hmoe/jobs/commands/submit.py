"""``hmoe submit``: send a job spec (search or training run) to a Ray cluster's Jobs API.

As ``ray job submit``, it follows the job's logs until the job ends and prints its result;
``--no-wait`` returns once the job is submitted. Ctrl-C while following detaches (exit 130):
the job keeps running, and the command says how to follow or stop it.
"""

from __future__ import annotations

import argparse
import json
import sys

from hmoe.jobs.commands.cluster import add_state_dir_argument, reports_errors
from hmoe.jobs.commands.options import add_set_argument, parse_sets

EXIT_JOB_FAILED = 1
EXIT_DETACHED = 130  # the shell's code for a command ended by Ctrl-C


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
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow the logs until the job ends and print its result (default); --no-wait "
        "returns once it is submitted",
    )
    add_set_argument(parser)
    parser.add_argument(
        "--no-check-paths",
        action="store_true",
        help="do not check dataset paths here (they exist only on a remote cluster)",
    )
    parser.set_defaults(func=run)


def follow_until_done(job: object, address_args: str = "") -> str | None:
    """Stream the job's logs until it ends; its final status, or ``None`` after Ctrl-C (which
    detaches: the job keeps running, and how to follow or stop it is printed)."""
    job_id = job.submission_id  # type: ignore[attr-defined]
    try:
        for chunk in job.follow():  # type: ignore[attr-defined]
            sys.stdout.write(chunk)
            sys.stdout.flush()
        return job.wait()  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        print(
            f"\ndetached from job {job_id}; it keeps running.\n"
            f"  follow: hmoe jobs logs {job_id} --follow{address_args}\n"
            f"  status: hmoe jobs status {job_id}{address_args}\n"
            f"  stop:   hmoe jobs stop {job_id}{address_args}",
            file=sys.stderr,
            flush=True,
        )
        return None


def address_hint(args: argparse.Namespace) -> str:
    """The client options to repeat in a printed command (empty for the defaults)."""
    parts = [f" --address {args.address}"] if args.address else []
    parts += [f" --token-file {args.token_file}"] if args.token_file else []
    parts += [f" --state-dir {args.state_dir}"] if args.state_dir else []
    return "".join(parts)


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
    print(f"submitted {job.submission_id} to {job.client.address}", flush=True)
    return finish(job, args)


def finish(job: object, args: argparse.Namespace) -> int:
    """Follow a just-submitted job (unless ``--no-wait``) and print its result."""
    hint = address_hint(args)
    job_id = job.submission_id  # type: ignore[attr-defined]
    if not args.wait:
        print(f"  follow: hmoe jobs logs {job_id} --follow{hint}")
        return 0
    status = follow_until_done(job, hint)
    if status is None:
        return EXIT_DETACHED
    print(f"job {job_id}: {status}")
    if status != "SUCCEEDED":
        return EXIT_JOB_FAILED
    print_result(job)
    return 0
