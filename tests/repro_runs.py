"""Stored report runs for the tests of ``benchmarks/repro`` sections: a record as the report's
store keeps one, and a report ``Context`` over an empty store in ``tmp_path``."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from repro.common import Context


def report_context(tmp_path: Path) -> Context:
    """A loaded report context whose store is empty until the test adds records."""
    ctx = Context(work=tmp_path / "work", out=tmp_path / "out", data_root=tmp_path, log=print)
    ctx.load()
    return ctx


def stored_record(
    *,
    section: str,
    dataset: str,
    variant: str,
    seed: int,
    preset: str,
    overrides: Mapping[str, Any],
    metrics: Mapping[str, float],
    ia: Mapping[str, float] | None = None,
    params: int = 1000,
) -> dict:
    """One finished run of ``section`` (``overrides`` as the run resolved them, JSON-normalised
    as the store keeps them), trained for one epoch in one second."""
    return {
        "section": section,
        "dataset": dataset,
        "variant": variant,
        "seed": seed,
        "preset": preset,
        "overrides": json.loads(json.dumps(dict(overrides), sort_keys=True, default=str)),
        "quick": False,
        "metrics": dict(metrics),
        "ia": dict(ia or {}),
        "best_epoch": 1,
        "epochs_run": 1,
        "params": params,
        "wall_s": 1.0,
    }
