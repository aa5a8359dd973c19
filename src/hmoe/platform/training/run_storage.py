"""Run storage (Ray Train / Tune folders with checkpoints) that hmoe created, and pruning it.

Every folder ``hmoe train`` or ``hmoe tune`` hands to Ray (``train-<run id>``, a search's
``<preset>-<space>-<hash>``) gets a marker file, ``.hmoe-run.json``, naming its MLflow run and
store. ``prune`` deletes marked folders whose run is over: FINISHED runs (their model is in
MLflow), runs deleted from MLflow, and with ``include_unfinished`` also FAILED and KILLED ones
(which could otherwise be resumed). A RUNNING run, a folder younger than ``min_age_days`` and
anything without a marker are never touched. Pruning reads local folders; a run folder in object
storage gets its marker too, for a lifecycle rule or a later tool to act on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from hmoe.platform.core import storage

__all__ = ["MARKER", "Pruned", "mark", "prune"]

MARKER = ".hmoe-run.json"
MAX_DEPTH = 3  # storage/<job id>/<search>: marked folders sit at most this deep
SECONDS_PER_DAY = 86_400
FINISHED = "FINISHED"
UNFINISHED = ("FAILED", "KILLED")
GONE = "DELETED"  # the run no longer exists in its store (or was deleted there)


def mark(folder: str | Path, run_id: str, tracking_uri: str) -> None:
    """Record that hmoe created ``folder`` (a path or an ``s3://`` prefix) for MLflow run
    ``run_id`` in ``tracking_uri``."""
    marker = {"run_id": run_id, "tracking_uri": tracking_uri}
    data = json.dumps(marker, sort_keys=True).encode()
    storage.write_bytes(storage.join(storage.absolute(folder), MARKER), data)


@dataclasses.dataclass(frozen=True)
class Pruned:
    """A marked folder ``prune`` deleted (or would delete, on a dry run)."""

    folder: Path
    run_id: str
    status: str
    size_bytes: int


def _marked(root: Path, depth: int = 0) -> Iterator[Path]:
    if (root / MARKER).is_file():
        yield root
        return
    if depth >= MAX_DEPTH:
        return
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        yield from _marked(child, depth + 1)


def _status(run_id: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    from hmoe.platform.tracking.runs import open_store

    try:
        run = open_store(uri).get_run(run_id)
    except MlflowException:
        return GONE
    return GONE if run.info.lifecycle_stage == "deleted" else run.info.status


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def prune(
    storage: str | Path,
    *,
    min_age_days: float = 0.0,
    include_unfinished: bool = False,
    dry_run: bool = False,
) -> list[Pruned]:
    """Delete the marked run folders under ``storage`` whose run is over (module docstring)."""
    root = Path(storage)
    if not root.is_dir():
        return []
    prunable = (FINISHED, GONE, *(UNFINISHED if include_unfinished else ()))
    now = time.time()
    out = []
    for folder in _marked(root):
        marker = json.loads((folder / MARKER).read_text())
        age_days = (now - os.stat(folder / MARKER).st_mtime) / SECONDS_PER_DAY
        if age_days < min_age_days:
            continue
        status = _status(marker["run_id"], marker["tracking_uri"])
        if status not in prunable:
            continue
        out.append(Pruned(folder, marker["run_id"], status, _size(folder)))
        if not dry_run:
            shutil.rmtree(folder)
    return out
