"""``hmoe data prepare | synth | fetch``: raw logs to encoded shards, synthetic logs, real data."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hmoe.jobs.commands.options import add_set_argument
from hmoe.schema import MANIFEST, SPLITS

EXIT_FETCH_FAILED = 4
EXIT_USER_ERROR = 2  # as hmoe.jobs.cli for ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="prepare, synthesise or fetch datasets")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    prepare = sub.add_parser("prepare", help="encode raw logs into Parquet shards (Ray Data)")
    prepare.add_argument("spec", help="dataset spec (YAML)")
    prepare.add_argument(
        "--out",
        required=True,
        help="output directory, replaced as a whole: absent, empty or a prepared dataset",
    )
    prepare.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out that is not a prepared dataset (never the current "
        "directory, its parents or a directory holding the spec or an input)",
    )
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(func=run_prepare)

    synth = sub.add_parser("synth", help="generate realistic synthetic ad-impression logs")
    synth.add_argument("--out", required=True, help="output directory (raw logs + spec)")
    synth.add_argument("--rows", type=int, required=True, help="number of impressions")
    synth.add_argument("--seed", type=int, default=0, help="random seed (deterministic output)")
    synth.add_argument("--users", type=int, default=None, help="users (default rows/40)")
    synth.add_argument("--items", type=int, default=None, help="items in the catalogue")
    synth.add_argument("--click-rate", type=float, default=None, help="target click rate")
    synth.add_argument("--tasks", default=None, help="comma-separated, e.g. click,conversion")
    synth.add_argument("--block-rows", type=int, default=None, help="rows per parallel block")
    synth.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    add_set_argument(synth)  # any other SynthConfig field, e.g. --set planted.decay=0.5
    synth.set_defaults(func=run_synth)

    fetch = sub.add_parser("fetch", help="download a public dataset (e.g. ml-100k)")
    fetch.add_argument("name", help="dataset name, e.g. ml-100k")
    fetch.add_argument("--out", default=None, help="where to put it (default: HMOE_DATA_ROOT)")
    fetch.add_argument(
        "--archive", default=None, help="an already downloaded archive (no network needed)"
    )
    fetch.set_defaults(func=run_fetch)


def run_prepare(args: argparse.Namespace) -> int:
    from hmoe.platform.data import prepare

    # the warnings are printed below, after the summary: not a second time by logging's
    # last-resort handler (a handler on the logger, here one that drops them, replaces it)
    logger = logging.getLogger(prepare.__module__)
    quiet = logging.NullHandler()
    logger.addHandler(quiet)
    try:
        manifest = prepare(args.spec, args.out, progress=not args.quiet, overwrite=args.overwrite)
    finally:
        logger.removeHandler(quiet)
    for line in prepare_summary(manifest, args.out):
        print(line)
    for warning in manifest["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def prepare_summary(manifest: Mapping[str, Any], out: str | Path) -> list[str]:
    """What ``prepare`` did, from its manifest: rows read, written and quarantined (by reason),
    and rows and shards per split (``hmoe data prepare`` and a job's log print it)."""
    from hmoe.platform.core import storage

    rows = manifest["rows"]
    lines = [
        f"prepared {manifest['name']} -> {out}",
        f"  rows read {rows['read']:,}, written {rows['written']:,}, "
        f"quarantined {rows['quarantined']:,}",
    ]
    for split in SPLITS:
        shards = len(manifest["shards"][split])
        lines.append(f"  {split:<5} {rows[split]:>12,} rows in {shards} shard(s)")
    for reason, count in manifest["quarantined_by_reason"].items():
        lines.append(f"  quarantined {reason}: {count:,}")
    lines.append(f"  manifest {storage.join(out, MANIFEST)}")
    return lines


def run_synth(args: argparse.Namespace) -> int:
    from hmoe.config import apply_overrides
    from hmoe.jobs.commands.options import parse_sets
    from hmoe.platform.core import storage
    from hmoe.platform.data.synth import SynthConfig, synthesize

    flags = {
        "users": args.users,
        "items": args.items,
        "click_rate": args.click_rate,
        "block_rows": args.block_rows,
        "tasks": args.tasks.split(",") if args.tasks else None,
    }
    overrides = {key: value for key, value in flags.items() if value is not None}
    cfg = apply_overrides(SynthConfig(), {**overrides, **parse_sets(args.sets)})
    try:
        result = synthesize(args.out, args.rows, args.seed, cfg, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"hmoe data synth: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    rates = ", ".join(f"{task} {rate:.4f}" for task, rate in result.rates.items())
    print(f"wrote {result.rows:,} impressions of {result.users:,} users in {result.blocks} blocks")
    print(f"  to {result.out_dir}  (rates: {rates})")
    print(f"  spec: {result.spec_path}  ->  hmoe data prepare {result.spec_path} --out DIR")
    print(f"  ground truth: {storage.join(result.out_dir, 'planted_correlation.npy')}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from hmoe.platform.data import FetchError, fetch

    try:
        folder = fetch(args.name, args.out, archive=args.archive)
    except (FetchError, PermissionError) as err:
        print(f"hmoe data fetch: error: {err}", file=sys.stderr)
        return EXIT_FETCH_FAILED
    print(f"fetched {args.name} -> {folder}")
    return 0
