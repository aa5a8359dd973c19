"""The ``hmoe`` command line: argument parsing and printing over the Python API, nothing else.

Each subcommand lives in ``hmoe.jobs.commands.<name>`` with ``add_parser(subparsers)`` that
registers its arguments and a ``run(args) -> int`` handler. A user mistake (a ``ValueError`` or
``FileNotFoundError``, also when it is the root cause of a Ray error) prints one line and exits
with code 2; another error raised through Ray prints its root cause and exits with code 1.
Ctrl-C that no command handles itself ends it with one line and the shell's code 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hmoe import __version__
from hmoe.jobs.commands import COMMANDS
from hmoe.platform.core.failures import failure_reason, is_user_error, root_cause

EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


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
    except KeyboardInterrupt:
        print(f"hmoe {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        root = root_cause(err)  # behind Ray's wrappers (a worker's error reaches us wrapped)
        if is_user_error(root):  # user mistakes (ConfigError is a ValueError)
            print(f"hmoe {args.command}: error: {root}", file=sys.stderr)
            return EXIT_USER_ERROR
        if root is err:
            raise  # an internal error keeps its traceback
        # the worker's traceback is in its log already; the wrappers' add nothing
        print(f"hmoe {args.command}: error: {failure_reason(root)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
