"""Reading raw tables as pyarrow batches: file listing, fragments, text files as strings.

A log is cut into *fragments* (a text file, or one Parquet row group) that Ray Data reads in
parallel. Every row gets a stable id ``__row = file_index << ROW_BITS | row_in_file``, which
orders rows by file then file position, keeps re-runs deterministic and breaks ties in sorts.

Empty files (no bytes, or a Parquet file of no rows) are skipped. A text line with the wrong
number of fields does not stop the read: it comes out as a row whose ``__malformed`` column
holds the line (its number, the field counts and its text, as JSON) and whose other columns are
null, at its place in the file, and validation quarantines it (``malformed_line``). A file that
cannot be read (corrupt or truncated Parquet, bad JSON, no permission) is a ``ValueError``
naming the file.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hmoe.platform.data.spec import TableSpec, resolve_path

__all__ = [
    "FILE_COLUMN",
    "MALFORMED_COLUMN",
    "ROW_BITS",
    "ROW_COLUMN",
    "file_columns",
    "float_values",
    "fragments",
    "head",
    "list_files",
    "read_fragment",
    "read_table",
]

LOG = logging.getLogger(__name__)
ROW_BITS = 40  # rows per file < 2**40; file index in the bits above
ROW_COLUMN = "__row"
FILE_COLUMN = "__file"
MALFORMED_COLUMN = "__malformed"  # a text line with the wrong number of fields, as JSON
UNKNOWN_ROWS = -1  # a fragment's row count before reading it (text files)
TEXT_BLOCK_BYTES = 1 << 22  # pyarrow's csv block size
EXACT_FLOAT_INTEGERS = 2.0**53  # floats at least this large are not exact integers
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
        if _checked(path, lambda p: p.stat().st_size) == 0:
            LOG.warning("skipping %s: an empty file", path)
            continue
        if table.format == "parquet":
            meta = _checked(path, lambda p: pq.ParquetFile(p).metadata)
            if meta.num_rows == 0:
                LOG.warning("skipping %s: a Parquet file of no rows", path)
                continue
            offset = 0
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                if rows:
                    out.append(_fragment(written, path, file_index, group, offset, rows))
                offset += rows
        else:
            out.append(_fragment(written, path, file_index, -1, 0, UNKNOWN_ROWS))
    return out


def _is_empty(table: TableSpec, path: Path) -> bool:
    """No bytes at all, or a Parquet file of no rows (both are skipped)."""
    import pyarrow.parquet as pq

    size = _checked(path, lambda p: p.stat().st_size)
    if size == 0:
        return True
    if table.format == "parquet":
        return _checked(path, lambda p: pq.ParquetFile(p).metadata.num_rows) == 0
    return False


def _checked(path: str | Path, read: Any) -> Any:
    """``read(path)``, with a failure to read the file as one ``ValueError`` naming it."""
    try:
        return read(path)
    except (pa.ArrowException, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"cannot read {path}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def file_columns(table: TableSpec, path: str | Path) -> list[str] | None:
    """The column names of one file of ``table`` from its schema or header only (None for an
    empty file, which is skipped)."""
    path = Path(path)
    if _is_empty(table, path):
        return None
    if table.format == "parquet":
        import pyarrow.parquet as pq

        return list(_checked(path, lambda p: pq.read_schema(p).names))
    if table.format == "jsonl":
        return list(_checked(path, lambda p: _open_json(p).schema.names))
    return _text_names(table, str(path))


def head(table: TableSpec, path: str | Path, columns: list[str], rows: int) -> pa.Table:
    """Up to ``rows`` first rows of ``columns`` of one file, read cheaply (text as strings)."""
    path = str(path)
    if table.format == "parquet":
        import pyarrow.parquet as pq

        def first(p: str) -> pa.Table:
            batches = pq.ParquetFile(p).iter_batches(batch_size=rows, columns=columns)
            return pa.Table.from_batches([next(batches)])

        return _checked(path, first)
    if table.format == "jsonl":
        return _checked(path, lambda p: _first_rows(_open_json(p), rows)).select(columns)
    reader = _checked(path, lambda p: _open_text(table, p, include=columns, skip=_ignore_row))
    return _checked(path, lambda p: _first_rows(reader, rows))


def _first_rows(reader: Any, rows: int) -> pa.Table:
    batches, seen = [], 0
    for batch in reader:
        batches.append(batch)
        seen += batch.num_rows
        if seen >= rows:
            break
    return pa.Table.from_batches(batches, schema=reader.schema).slice(0, rows)


def _ignore_row(row: Any) -> str:
    return "skip"


def _open_json(path: str | Path) -> Any:
    import pyarrow.json as pj

    return pj.open_json(path)


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
    """Yield the fragment's rows in file order as tables with ``__row`` and ``__file`` added
    (and ``__malformed`` for text lines with the wrong number of fields, see the module)."""
    path = fragment["path"]
    base = int(fragment["file_index"]) << ROW_BITS
    batches = _raw_batches(table, path, fragment, batch_rows)
    while True:
        try:
            batch, rows = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"cannot read {path}: {_one_line(err)}") from None
        batch = batch.append_column(ROW_COLUMN, pa.array(base + rows))
        batch = batch.append_column(
            FILE_COLUMN, pa.array(np.full(batch.num_rows, fragment["file_index"], dtype=np.int32))
        )
        yield batch


def read_table(table: TableSpec, base_dir: str | Path, batch_rows: int) -> pa.Table:
    """Read a whole (small) table in the driver, e.g. a side table (a malformed line is an
    error here: a side table has no quarantine)."""
    parts = []
    for fragment in fragments(table, base_dir):
        for batch in read_fragment(table, fragment, batch_rows):
            if MALFORMED_COLUMN in batch.column_names:
                line = json.loads(batch.column(MALFORMED_COLUMN)[0].as_py())
                raise ValueError(f"{fragment['path']}: malformed line {line}")
            parts.append(batch)
    if not parts:
        raise ValueError(f"no rows in {list(table.paths)}")
    return pa.concat_tables(parts).drop_columns([ROW_COLUMN, FILE_COLUMN])


def _raw_batches(
    table: TableSpec, path: str, fragment: dict[str, Any], batch_rows: int
) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """``(batch, each row's position in its file)`` in file order."""
    start = int(fragment["row_offset"])
    if table.format in _TEXT_DELIMITERS:
        yield from _text_batches(table, path, batch_rows)
        return
    if table.format == "parquet":
        import pyarrow.parquet as pq

        data = pq.ParquetFile(path).read_row_group(int(fragment["row_group"]))
    else:
        import pyarrow.json as pj

        data = pj.read_json(path)
    for b in data.to_batches(batch_rows):
        yield pa.Table.from_batches([b]), np.arange(start, start + b.num_rows, dtype=np.int64)
        start += b.num_rows


def _text_batches(
    table: TableSpec, path: str, batch_rows: int
) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """A text file's rows, then its malformed lines (see the module) at their positions."""
    skipped: list[Any] = []  # pyarrow's InvalidRow of each malformed line, in file order

    def skip(row: Any) -> str:
        skipped.append(row)
        return "skip"

    reader = _open_text(table, path, include=None, skip=skip)
    first_data_row = 2 if table.header else 1  # pyarrow numbers rows from 1, header included
    pending: list[pa.RecordBatch] = []
    rows = done = 0
    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        if rows >= batch_rows:
            yield _positioned(pending, done, skipped, first_data_row)
            pending, done, rows = [], done + rows, 0
    if pending:
        yield _positioned(pending, done, skipped, first_data_row)
    if skipped:
        yield _malformed(reader.schema, path, skipped, first_data_row)


def _positioned(
    batches: list[pa.RecordBatch], done: int, skipped: list[Any], first_data_row: int
) -> tuple[pa.Table, np.ndarray]:
    """The batches as a table with the file position of each row: its rank among the parsed
    rows, shifted by the malformed lines before it (the reader sees those first)."""
    data = pa.Table.from_batches(batches)
    parsed = np.arange(done, done + data.num_rows, dtype=np.int64)
    lines = np.array([_line_of(r) - first_data_row for r in skipped], dtype=np.int64)
    good_before = np.sort(lines) - np.arange(len(lines))  # parsed rows before each bad line
    return data, parsed + np.searchsorted(good_before, parsed, side="right")


def _line_of(row: Any) -> int:
    if row.number is None:  # pyarrow knows the number when it reads with one thread
        raise ValueError(f"malformed line with unknown number: {row.text[:200]!r}")
    return int(row.number)


def _malformed(
    schema: pa.Schema, path: str, skipped: list[Any], first_data_row: int
) -> tuple[pa.Table, np.ndarray]:
    lines = [
        json.dumps(
            {
                "line": _line_of(r),
                "expected_fields": r.expected_columns,
                "fields": r.actual_columns,
                "text": r.text,
            }
        )
        for r in skipped
    ]
    n = len(lines)
    columns = {name: pa.nulls(n, pa.string()) for name in schema.names}
    columns[MALFORMED_COLUMN] = pa.array(lines, pa.string())
    positions = np.array([_line_of(r) - first_data_row for r in skipped], dtype=np.int64)
    return pa.table(columns), positions


def _open_text(table: TableSpec, path: str, include: list[str] | None, skip: Any) -> Any:
    import pyarrow.csv as pcsv

    names = _text_names(table, path)
    return pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(
            column_names=names,
            skip_rows=1 if table.header else 0,
            block_size=TEXT_BLOCK_BYTES,
            use_threads=False,  # so that a malformed line comes with its number
        ),
        parse_options=pcsv.ParseOptions(delimiter=_delimiter(table), invalid_row_handler=skip),
        convert_options=pcsv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            null_values=list(table.null_values),
            strings_can_be_null=True,
            include_columns=include,
        ),
    )


def _delimiter(table: TableSpec) -> str:
    return table.delimiter or _TEXT_DELIMITERS[table.format]


def _text_names(table: TableSpec, path: str) -> list[str]:
    names = list(table.column_names) or _header(path, _delimiter(table))
    if table.strip_type_suffix:
        names = [name.split(":", 1)[0] for name in names]
    return names


def _header(path: str, delimiter: str) -> list[str]:
    def first_row(p: str) -> list[str] | None:
        with open(p, newline="") as f:
            return next(csv.reader(f, delimiter=delimiter), None)

    row = _checked(path, first_row)
    if row is None:
        raise ValueError(f"{path}: empty file (expected a header line)")
    return row


def as_strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as strings (ids read from Parquet may be integers)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return array.cast(pa.string())
    if pa.types.is_floating(array.type):
        # 196.0 -> "196" so that float-typed ids match their text form; NaN is missing (pandas
        # writes an integer column with a missing value as floats with NaN)
        values = float_values(array)
        with np.errstate(invalid="ignore"):
            whole = (np.abs(values) < EXACT_FLOAT_INTEGERS) & (np.floor(values) == values)
        ints = pa.array(np.where(whole, values, 0.0).astype(np.int64)).cast(pa.string())
        text = pc.if_else(pa.array(whole), ints, pc.cast(array, pa.string()))
        return pc.if_else(pa.array(np.isnan(values)), pa.scalar(None, pa.string()), text)
    return pc.cast(array, pa.string())


def float_values(array: pa.Array) -> np.ndarray:
    """A floating column as float64 with NaN for nulls."""
    return np.asarray(pc.cast(array, pa.float64()).fill_null(np.nan), dtype=np.float64)
