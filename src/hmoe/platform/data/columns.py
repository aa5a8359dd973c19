"""The spec against the data, before any Ray work: columns from schemas, labels from first rows.

Every column a spec names is looked up in each file's schema (Parquet) or header (text), so a
typo fails in a second with one line naming the spec entry, the column, the file and the
columns it has, instead of inside a Ray task. Log columns may also come from side tables (their
columns are joined onto every row). A label column without ``positive_if`` must hold 0/1; most
of its first rows holding other values (a 1-5 rating, a dwell time) means the rule is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmoe.platform.data.parsing import parse_numbers
from hmoe.platform.data.spec import DatasetSpec, TableSpec
from hmoe.platform.data.tables import file_columns, head, list_files
from hmoe.platform.data.validate import field_label

__all__ = ["check_columns", "check_labels"]

LABEL_SAMPLE_ROWS = 10_000  # first rows of the first log file read to check 0/1 labels
NON_BINARY_SHARE = 0.5  # more of them than this other than 0/1: positive_if is missing
EXAMPLES = 5  # example values quoted in a message


@dataclass(frozen=True)
class _Need:
    entry: str  # how the message names the spec entry
    column: str
    joined: bool = True  # a log column a side table may provide


def check_columns(spec: DatasetSpec, base: Path) -> None:
    """Raise ``ValueError`` (one line) for the first file lacking a column the spec names."""
    added: list[str] = []  # columns the side tables join onto log rows
    for index, side in enumerate(spec.side_tables):
        entry = f"side_tables[{index}]"
        needs = [_Need(f"{entry}.key", side.key)]
        needs += [_Need(f"{entry}.columns[{j}]", c) for j, c in enumerate(side.columns)]
        columns = _check_table(side.table, base, needs, f"side table ({entry})")
        added += list(side.columns) or [c for c in columns if c != side.key]
    _check_table(spec.log, base, _log_needs(spec), "log file", tuple(added))
    for index, q in enumerate(spec.sequences):
        log = q.behaviour_log
        if log is None:
            continue
        entry = f"sequences[{index}] {q.name!r} behaviour_log"
        names = ("user_column", "item_column", "timestamp_column", "category_column")
        needs = [_Need(f"{entry}.{n}", getattr(log, n)) for n in names if getattr(log, n)]
        _check_table(log.table, base, needs, "behaviour log")


def _log_needs(spec: DatasetSpec) -> list[_Need]:
    needs = [
        _Need(f"side_tables[{i}].join_on", s.join_on, joined=False)
        for i, s in enumerate(spec.side_tables)
    ]
    if spec.timestamp is not None:
        needs.append(_Need("timestamp.column", spec.timestamp.column))
    for kind, entries in (
        ("categorical", spec.categorical),
        ("numeric", spec.numeric),
        ("embeddings", spec.embeddings),
    ):
        needs += [_Need(field_label(kind, i, e.name), e.source) for i, e in enumerate(entries)]
    needs += [
        _Need(field_label("labels", i, label.task), label.source)
        for i, label in enumerate(spec.labels)
    ]
    if spec.weight is not None:
        needs.append(_Need("weight.column", spec.weight.column))
    for i, q in enumerate(spec.sequences):
        if q.filter is not None:
            needs.append(_Need(f"sequences[{i}] {q.name!r} filter.column", q.filter.column))
    needs += [_Need(f"split.tie_break[{i}]", c) for i, c in enumerate(spec.split.tie_break)]
    return needs


def _check_table(
    table: TableSpec, base: Path, needs: list[_Need], what: str, added: tuple[str, ...] = ()
) -> list[str]:
    """Check every non-empty file of ``table``; return the first one's columns."""
    first: list[str] | None = None
    for _, path in list_files(table, base):
        columns = file_columns(table, path)
        if columns is None:
            continue  # an empty file, skipped by the reader too
        first = columns if first is None else first
        clash = sorted(set(added) & set(columns))
        if clash:
            raise ValueError(
                f"{what} {path} already has column(s) {clash} that a side table adds; "
                "list the side table's other columns in side_tables[...].columns"
            )
        joined = set(columns) | set(added)
        missing = [n for n in needs if n.column not in (joined if n.joined else columns)]
        if missing:
            wanted = ", ".join(f"{n.entry} needs column {n.column!r}" for n in missing)
            joined = f"; side tables add: {', '.join(added)}" if added else ""
            raise ValueError(
                f"{wanted}, which {what} {path} does not have; its columns: "
                f"{', '.join(columns)}{joined}"
            )
    if first is None:
        raise ValueError(f"no rows in {what} {list(table.paths)}: every file is empty")
    return first


def check_labels(spec: DatasetSpec, base: Path) -> None:
    """Raise ``ValueError`` when a label without ``positive_if`` does not look 0/1 in the first
    ``LABEL_SAMPLE_ROWS`` rows of the first non-empty log file (labels from side tables are
    left to validation)."""
    labels = [(i, label) for i, label in enumerate(spec.labels) if label.positive_if is None]
    if not labels:
        return
    for _, path in list_files(spec.log, base):
        columns = file_columns(spec.log, path)
        if columns is not None:
            break
    else:
        return
    sources = sorted({label.source for _, label in labels if label.source in columns})
    if not sources:
        return
    sample = head(spec.log, path, sources, LABEL_SAMPLE_ROWS)
    for index, label in labels:
        if label.source not in sources:
            continue
        values, missing, bad = parse_numbers(sample.column(label.source).combine_chunks())
        present = ~missing
        other = bad | (present & ~np.isin(values, (0.0, 1.0)))
        if present.any() and other.sum() > NON_BINARY_SHARE * present.sum():
            seen = sample.column(label.source).filter(other).unique().to_pylist()
            examples = ", ".join(str(v) for v in sorted(seen, key=str)[:EXAMPLES])
            entry = field_label("labels", index, label.task, label.column)
            raise ValueError(
                f"{entry} is not a 0/1 label: {other.sum()} of the first {present.sum()} "
                f"values in {path} are other values (e.g. {examples}); set "
                f"labels[{index}].positive_if to say which values are positive, e.g. "
                "positive_if: {op: '>=', value: 4}"
            )
