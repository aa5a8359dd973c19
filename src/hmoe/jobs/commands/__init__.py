"""One module per ``hmoe`` subcommand, in the order ``hmoe --help`` lists them."""

from __future__ import annotations

from hmoe.jobs.commands import (
    analyze,
    cluster,
    data,
    demo,
    jobs,
    runs,
    submit,
    train,
    tune,
    ui,
)
from hmoe.jobs.commands.options import add_set_argument, parse_sets

__all__ = ["COMMANDS", "add_set_argument", "parse_sets"]

COMMANDS = (data, train, tune, analyze, runs, cluster, ui, submit, jobs, demo)
