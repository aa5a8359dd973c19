"""The report's runs: MLflow runs, and a committed export of them that a fresh checkout imports.

Every record of the report (one training run of a section, or one computed estimate) is a
FINISHED run of the MLflow experiment ``hmoe-report``. Its facts are tags, its numbers metrics:

- ``report.<key>``: each top-level field of the record (``section``, ``dataset``, ``variant``,
  ``seed``, ``preset``, ``overrides``, ``model_hash``, ``config``, ``machine``, ...); a string
  as it is, anything else as JSON, named in ``report.json_keys``, so a record reads back
  exactly; a value longer than MLflow's tag value limit (which MLflow truncates, silently) is
  split: the tag holds its first part, ``report.part/<key>/<n>`` the rest in order;
- ``report/<metric>``: the record's ``metrics`` (the best epoch's ``val_*``, its ``test_*``, the
  section's own extras); ``report_ia/<name>``: its ``ia`` (information abundance then).

A run trained by ``hmoe.train`` carries these beside what the platform logged (per-epoch
history, params, ``config.json``); the report reads only the ``report`` ones.

The MLflow store itself (``docs/results/mlflow.db``, not committed) is a working copy: a sqlite
file of the report's ~300 runs with their epoch histories is tens of MB of binary that every
report run would rewrite in git. What is committed is its export, ``docs/results/runs/<section>
.json``: per run its id, start time, ``report`` tags and metrics, one key per line, so a rerun
shows as a readable diff. ``RunStore.import_folder`` copies the exported runs that the store
lacks into it (a fresh checkout: all of them), before anything is read; ``export_folder`` writes
the export back from the store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EXPERIMENT = "hmoe-report"
TAG_PREFIX = "report."
JSON_KEYS_TAG = "report.json_keys"  # the record fields whose tag holds JSON, comma-separated
ORIGIN_TAG = "report.origin_run"  # an imported run: the id of the exported run it copies
METRIC_PREFIX = "report/"
IA_PREFIX = "report_ia/"
RECORD_METRICS = ("metrics", "ia")  # record fields held as MLflow metrics, not tags
FINISHED = "FINISHED"
MAX_TAGS_PER_BATCH = 100  # MLflow's log_batch limit
PART_PREFIX = "report.part/"  # ``report.part/<key>/<n>``: part n (from 1) of a split field
MAX_RESULTS = 50_000  # MLflow's page size limit for search_runs
EXPORT_SUFFIX = ".json"


def record_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """The ``report.*`` tags of ``record`` (its fields other than ``metrics`` and ``ia``)."""
    # MLflow truncates a longer tag value, so a longer field (``config``) is split into parts
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    tags: dict[str, str] = {}
    as_json = []
    for key, value in record.items():
        if key in RECORD_METRICS:
            continue
        if isinstance(value, str):
            text = value
        else:
            text = json.dumps(value, sort_keys=True)
            as_json.append(key)
        parts = [
            text[at : at + MAX_TAG_VAL_LENGTH] for at in range(0, len(text), MAX_TAG_VAL_LENGTH)
        ]
        tags[TAG_PREFIX + key] = parts[0] if parts else text
        tags |= {f"{PART_PREFIX}{key}/{n}": part for n, part in enumerate(parts[1:], start=1)}
    tags[JSON_KEYS_TAG] = ",".join(sorted(as_json))
    return tags


def record_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    metrics = {METRIC_PREFIX + k: float(v) for k, v in record.get("metrics", {}).items()}
    return metrics | {IA_PREFIX + k: float(v) for k, v in record.get("ia", {}).items()}


def to_record(tags: Mapping[str, str], metrics: Mapping[str, float]) -> dict[str, Any]:
    """The record a run's ``report`` tags and metrics hold (``record_tags`` inverted)."""
    as_json = set(filter(None, tags.get(JSON_KEYS_TAG, "").split(",")))
    record: dict[str, Any] = {}
    for tag, value in tags.items():
        if not tag.startswith(TAG_PREFIX) or tag.startswith(PART_PREFIX):
            continue
        if tag in (JSON_KEYS_TAG, ORIGIN_TAG):
            continue
        key = tag.removeprefix(TAG_PREFIX)
        text = value + "".join(_parts(tags, key))
        record[key] = json.loads(text) if key in as_json else text
    record["metrics"] = {
        k.removeprefix(METRIC_PREFIX): v for k, v in metrics.items() if k.startswith(METRIC_PREFIX)
    }
    record["ia"] = {
        k.removeprefix(IA_PREFIX): v for k, v in metrics.items() if k.startswith(IA_PREFIX)
    }
    return record


def _parts(tags: Mapping[str, str], key: str) -> list[str]:
    """The split parts of field ``key`` after its first, in order (none: it was not split)."""
    prefix = f"{PART_PREFIX}{key}/"
    numbered = {int(t.removeprefix(prefix)): v for t, v in tags.items() if t.startswith(prefix)}
    return [numbered[n] for n in sorted(numbered)]


class RunStore:
    """The report's runs in the MLflow store ``uri`` (experiment ``hmoe-report``)."""

    def __init__(self, uri: str) -> None:
        from hmoe.platform.tracking.runs import experiment_id, open_store

        self.uri = uri
        self.client = open_store(uri)
        self.experiment_id = experiment_id(self.client, EXPERIMENT, uri)

    def runs(self) -> list[Any]:
        """The FINISHED report runs, oldest first (a later run of the same key wins)."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.status = '{FINISHED}'",
            max_results=MAX_RESULTS,
            order_by=["attributes.start_time ASC"],
        )
        return [run for run in found if JSON_KEYS_TAG in run.data.tags]

    def records(self) -> list[dict[str, Any]]:
        return [to_record(run.data.tags, run.data.metrics) for run in self.runs()]

    def add(
        self,
        record: Mapping[str, Any],
        run_id: str | None = None,
        start_time: int | None = None,
        extra_tags: Mapping[str, str] | None = None,
    ) -> str:
        """Log ``record`` into the run ``run_id`` (a run ``hmoe.train`` made), or into a new run
        (a record computed without training, an imported one); the run ends FINISHED."""
        from mlflow.entities import Metric, RunTag

        tags = record_tags(record) | dict(extra_tags or {})
        if run_id is None:
            name = "-".join(str(record.get(k)) for k in ("section", "dataset", "variant", "seed"))
            run = self.client.create_run(self.experiment_id, start_time=start_time, run_name=name)
            run_id = run.info.run_id
        stamp = start_time or 0
        metrics = [Metric(k, v, stamp, 0) for k, v in record_metrics(record).items()]
        items = [RunTag(k, v) for k, v in tags.items()]
        for at in range(0, max(len(items), 1), MAX_TAGS_PER_BATCH):
            batch = items[at : at + MAX_TAGS_PER_BATCH]
            self.client.log_batch(run_id, metrics=metrics if at == 0 else [], tags=batch)
        self.client.set_terminated(run_id, FINISHED)
        return run_id

    def export_folder(self, folder: Path) -> dict[str, int]:
        """Write ``<section>.json`` per section from the store; runs per section."""
        by_section: dict[str, list[dict[str, Any]]] = {}
        for run in self.runs():
            tags = {k: v for k, v in run.data.tags.items() if k.startswith(TAG_PREFIX)}
            origin = tags.pop(ORIGIN_TAG, run.info.run_id)
            metrics = {
                k: _exported(v)
                for k, v in run.data.metrics.items()
                if k.startswith((METRIC_PREFIX, IA_PREFIX))
            }
            entry = {"run_id": origin, "start_time": run.info.start_time}
            entry |= {"tags": tags, "metrics": metrics}
            by_section.setdefault(tags.get(TAG_PREFIX + "section", "none"), []).append(entry)
        folder.mkdir(parents=True, exist_ok=True)
        for section, entries in by_section.items():
            text = json.dumps(entries, indent=1, sort_keys=True, allow_nan=False)
            (folder / f"{section}{EXPORT_SUFFIX}").write_text(text + "\n")
        return {section: len(entries) for section, entries in by_section.items()}

    def import_folder(self, folder: Path) -> int:
        """Copy the exported runs the store lacks into it; how many were copied."""
        if not folder.is_dir():
            return 0
        present = set()
        for run in self.runs():
            present |= {run.info.run_id, run.data.tags.get(ORIGIN_TAG, run.info.run_id)}
        copied = 0
        for path in sorted(folder.glob(f"*{EXPORT_SUFFIX}")):
            for entry in json.loads(path.read_text()):
                if entry["run_id"] in present:
                    continue
                metrics = {k: _imported(v) for k, v in entry["metrics"].items()}
                record = to_record(entry["tags"], metrics)
                origin = {ORIGIN_TAG: entry["run_id"]}
                self.add(record, start_time=entry["start_time"], extra_tags=origin)
                copied += 1
        return copied


def _exported(value: float) -> float | str:
    """JSON has no NaN or infinity: those are written as strings."""
    return value if math.isfinite(value) else str(value)


def _imported(value: float | str) -> float:
    return float(value)


def sections_of(records: Sequence[Mapping[str, Any]]) -> set[str]:
    return {str(r.get("section")) for r in records}
