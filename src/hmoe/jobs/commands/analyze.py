"""``hmoe analyze``: dimensional collapse, behaviour-target correlation, interest entanglement."""

from __future__ import annotations

import argparse

from hmoe.config import ConfigError, apply_overrides
from hmoe.jobs.commands.options import add_set_argument, parse_sets
from hmoe.jobs.commands.train import add_tracking_uri_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("analyze", help="analyse a trained run (plots to MLflow)")
    parser.add_argument("run_id", help="MLflow run id")
    parser.add_argument(
        "--kind", choices=["collapse", "correlation", "entanglement", "all"], default="all"
    )
    parser.add_argument("--out", default=None, help="local directory for the PNG plots")
    add_tracking_uri_argument(parser)
    parser.add_argument(
        "--reference",
        action="append",
        metavar="TASK=RUN_ID",
        help="entanglement: a single-task run that defines TASK's distances (repeatable)",
    )
    add_set_argument(parser)  # AnalysisConfig paths, e.g. correlation.target_category=5
    parser.set_defaults(func=run)


def _references(items: list[str] | None) -> dict[str, str]:
    refs = {}
    for item in items or []:
        task, sep, run_id = item.partition("=")
        if not sep or not task or not run_id:
            raise ConfigError(f"--reference expects TASK=RUN_ID, got {item!r}")
        refs[task.strip()] = run_id.strip()
    return refs


def run(args: argparse.Namespace) -> int:
    from hmoe.platform.analysis.api import analyze
    from hmoe.platform.analysis.reports import AnalysisConfig

    config = apply_overrides(AnalysisConfig(), parse_sets(args.sets))
    result = analyze(
        args.run_id,
        kind=args.kind,
        out_dir=args.out,
        tracking_uri=args.tracking_uri,
        config=config,
        reference_runs=_references(args.reference),
    )
    for name, path in result.plots.items():
        print(f"{name}: {path}")
    for name, value in sorted(result.metrics.items()):
        print(f"{name} = {value:.4f}")
    return 0
