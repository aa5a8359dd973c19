"""``hmoe runs gc``: end the MLflow runs left RUNNING by processes that are gone."""

from __future__ import annotations

import argparse

from hmoe.jobs.commands.train import add_tracking_uri_argument


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


def run_gc(args: argparse.Namespace) -> int:
    from hmoe.platform.tracking import end_orphans, tracking_uri

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
