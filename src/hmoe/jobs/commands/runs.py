"""``hmoe runs gc``: end the MLflow runs left RUNNING by processes that are gone; ``hmoe runs
prune``: delete the run storage of runs that are over."""

from __future__ import annotations

import argparse

from hmoe.jobs.commands.train import add_tracking_uri_argument

DEFAULT_STORAGE = "hmoe_runs"  # TrainConfig.storage_path's default (not imported: no torch here)
BYTES_PER_MB = 1e6


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("runs", help="maintain the MLflow runs of the store")
    sub = parser.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    gc = sub.add_parser(
        "gc", help="mark KILLED the RUNNING runs of this host whose process has ended"
    )
    add_tracking_uri_argument(gc)
    gc.add_argument(
        "--dry-run", action="store_true", help="list the runs it would mark, change nothing"
    )
    gc.set_defaults(func=run_gc)
    prune = sub.add_parser(
        "prune",
        help="delete the run storage (checkpoints) of hmoe runs that are over",
        description="Delete the Ray Train / Tune folders (checkpoints) that hmoe created for "
        "runs that are FINISHED or deleted from MLflow (their model is in MLflow); with "
        "--include-unfinished also FAILED and KILLED ones, which could otherwise be resumed. "
        "RUNNING runs and folders hmoe did not create are never touched.",
    )
    prune.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help=f"the runs' train.storage_path (default: ./{DEFAULT_STORAGE})",
    )
    prune.add_argument(
        "--min-age-days",
        type=float,
        default=0.0,
        help="only runs started at least this many days ago (default 0: all)",
    )
    prune.add_argument(
        "--include-unfinished", action="store_true", help="also FAILED and KILLED runs"
    )
    prune.add_argument("--dry-run", action="store_true", help="list what it would delete")
    prune.set_defaults(func=run_prune)


def run_gc(args: argparse.Namespace) -> int:
    from hmoe.platform.tracking.runs import end_orphans, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    orphans = end_orphans(uri, dry_run=args.dry_run)
    verb = "would mark" if args.dry_run else "marked"
    for orphan in orphans:
        print(
            f"{verb} KILLED: run {orphan.run_id} ({orphan.run_name}, experiment "
            f"{orphan.experiment_id}): {orphan.reason}"
        )
    print(f"{len(orphans)} orphan run(s) in {uri}" + (" (dry run)" if args.dry_run else ""))
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from hmoe.platform.training.run_storage import prune

    pruned = prune(
        args.storage,
        min_age_days=args.min_age_days,
        include_unfinished=args.include_unfinished,
        dry_run=args.dry_run,
    )
    verb = "would delete" if args.dry_run else "deleted"
    for item in pruned:
        print(
            f"{verb} {item.folder} ({item.size_bytes / BYTES_PER_MB:.1f} MB): run {item.run_id} "
            f"is {item.status}"
        )
    total = sum(item.size_bytes for item in pruned) / BYTES_PER_MB
    print(f"{len(pruned)} run folder(s), {total:.1f} MB" + (" (dry run)" if args.dry_run else ""))
    return 0
