"""Reading raw tables as pyarrow batches: file listing, fragments, text files as strings.

A log is cut into *fragments* (a text file, or one Parquet row group) that Ray Data reads in
parallel. Every row gets a stable id ``__row = file_index << ROW_BITS | row_in_file``, which
orders rows by file then file position, keeps re-runs deterministic and breaks ties in sorts.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hmoe.platform.data.spec import TableSpec, resolve_path

__all__ = [
    "FILE_COLUMN",
    "ROW_BITS",
    "ROW_COLUMN",
    "fragments",
    "list_files",
    "read_fragment",
    "read_table",
]

ROW_BITS = 40  # rows per file < 2**40; file index in the bits above
ROW_COLUMN = "__row"
FILE_COLUMN = "__file"
UNKNOWN_ROWS = -1  # a fragment's row count before reading it (text files)
_TEXT_DELIMITERS = {"csv": ",", "tsv": "\t"}


def list_files(table: TableSpec, base_dir: str | Path) -> list[tuple[str, Path]]:
    """``(path as written, file)`` for every file of ``table``, in ``paths`` order, sorted within
    a directory or glob. A path that matches nothing is an error."""
    files: list[tuple[str, Path]] = []
    for written in table.paths:
        path = resolve_path(written, base_dir)
        if path.is_dir():
            matched = sorted(
                p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
            )
        elif any(ch in str(path) for ch in "*?["):
            matched = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        else:
            matched = [path] if path.is_file() else []
        if not matched:
            raise FileNotFoundError(f"no data file at {path} (from {written!r})")
        files.extend((written, p) for p in matched)
    return files


def fragments(table: TableSpec, base_dir: str | Path) -> list[dict[str, Any]]:
    """One fragment per text file or Parquet row group, with its first row's id and its row
    count (``UNKNOWN_ROWS`` for text files)."""
    import pyarrow.parquet as pq

    out: list[dict[str, Any]] = []
    for file_index, (written, path) in enumerate(list_files(table, base_dir)):
        if table.format == "parquet":
            meta = pq.ParquetFile(path).metadata
            offset = 0
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                out.append(_fragment(written, path, file_index, group, offset, rows))
                offset += rows
        else:
            out.append(_fragment(written, path, file_index, -1, 0, UNKNOWN_ROWS))
    return out


def _fragment(
    written: str, path: Path, file_index: int, group: int, offset: int, rows: int
) -> dict:
    return {
        "written": written,
        "path": str(path),
        "file_index": file_index,
        "row_group": group,
        "row_offset": offset,
        "rows": rows,
    }


def read_fragment(
    table: TableSpec, fragment: dict[str, Any], batch_rows: int
) -> Iterator[pa.Table]:
    """Yield the fragment's rows in file order as tables with ``__row`` and ``__file`` added."""
    path = fragment["path"]
    start = fragment["row_offset"]
    for batch in _raw_batches(table, path, int(fragment["row_group"]), batch_rows):
        n = batch.num_rows
        base = (int(fragment["file_index"]) << ROW_BITS) + start
        batch = batch.append_column(ROW_COLUMN, pa.array(np.arange(base, base + n, dtype=np.int64)))
        batch = batch.append_column(
            FILE_COLUMN, pa.array(np.full(n, fragment["file_index"], dtype=np.int32))
        )
        start += n
        yield batch


def read_table(table: TableSpec, base_dir: str | Path, batch_rows: int) -> pa.Table:
    """Read a whole (small) table in the driver, e.g. a side table."""
    parts = [
        batch
        for fragment in fragments(table, base_dir)
        for batch in read_fragment(table, fragment, batch_rows)
    ]
    return pa.concat_tables(parts).drop_columns([ROW_COLUMN, FILE_COLUMN])


def _raw_batches(
    table: TableSpec, path: str, row_group: int, batch_rows: int
) -> Iterator[pa.Table]:
    if table.format == "parquet":
        import pyarrow.parquet as pq

        data = pq.ParquetFile(path).read_row_group(row_group)
        yield from (pa.Table.from_batches([b]) for b in data.to_batches(batch_rows))
    elif table.format == "jsonl":
        import pyarrow.json as pj

        data = pj.read_json(path)
        yield from (pa.Table.from_batches([b]) for b in data.to_batches(batch_rows))
    else:
        yield from _text_batches(table, path, batch_rows)


def _text_batches(table: TableSpec, path: str, batch_rows: int) -> Iterator[pa.Table]:
    import pyarrow.csv as pcsv

    delimiter = table.delimiter or _TEXT_DELIMITERS[table.format]
    names = list(table.column_names) or _header(path, delimiter)
    if table.strip_type_suffix:
        names = [name.split(":", 1)[0] for name in names]
    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(
            column_names=names, skip_rows=1 if table.header else 0, block_size=1 << 22
        ),
        parse_options=pcsv.ParseOptions(delimiter=delimiter),
        convert_options=pcsv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            null_values=list(table.null_values),
            strings_can_be_null=True,
        ),
    )
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        if rows >= batch_rows:
            yield pa.Table.from_batches(pending)
            pending, rows = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def _header(path: str, delimiter: str) -> list[str]:
    with open(path, newline="") as f:
        row = next(csv.reader(f, delimiter=delimiter), None)
    if row is None:
        raise ValueError(f"{path}: empty file (expected a header line)")
    return row


def as_strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as strings (ids read from Parquet may be integers)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return array.cast(pa.string())
    if pa.types.is_floating(array.type):
        # 196.0 -> "196" so that float-typed ids match their text form
        as_int = pc.cast(array, pa.int64(), safe=False)
        whole = pc.equal(pc.cast(as_int, pa.float64()), array)
        return pc.if_else(whole, pc.cast(as_int, pa.string()), pc.cast(array, pa.string()))
    return pc.cast(array, pa.string())
