"""What the subcommands share: ``--set PATH=VALUE`` overrides."""

from __future__ import annotations

import argparse

from hmoe.config import ConfigError, parse_override_value


def parse_sets(items: list[str] | None) -> dict[str, object]:
    """Parse repeated ``--set a.b.c=VALUE`` arguments into an ``apply_overrides`` mapping."""
    overrides: dict[str, object] = {}
    for item in items or []:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set expects PATH=VALUE (e.g. train.lr=0.001), got {item!r}")
        overrides[path.strip()] = parse_override_value(value)
    return overrides


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        metavar="PATH=VALUE",
        help="override a config field by its dotted path (repeatable), e.g. train.lr=0.003",
    )
