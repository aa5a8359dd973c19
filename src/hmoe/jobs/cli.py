"""The ``hmoe`` command line: argument parsing and printing over the Python API, nothing else.

Each subcommand lives in ``hmoe.jobs.commands.<name>`` with ``add_parser(subparsers)`` that
registers its arguments and a ``run(args) -> int`` handler.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hmoe import __version__
from hmoe.jobs.commands import COMMANDS, NotImplementedYet

EXIT_USER_ERROR = 2
EXIT_NOT_IMPLEMENTED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hmoe",
        description="Prepare ads logs, train and search heterogeneous multi-embedding MoE "
        "rankers on Ray, and compare the runs in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"hmoe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NotImplementedYet as err:
        print(f"hmoe {args.command}: not implemented yet ({err})", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED
    except (ValueError, FileNotFoundError) as err:  # user mistakes (ConfigError is a ValueError)
        print(f"hmoe {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
