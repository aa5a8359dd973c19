"""Row validation: raw (side-table-joined) batches to parsed columns plus a quarantine reason.

Every row gets ``__reason``: null when valid, else the first failing check in the order
line, timestamp, categorical, numeric, embeddings, labels, weight (one reason per row, so the
counts per reason add up to the quarantined rows), and ``__field``: the spec entry whose check
failed (e.g. ``numeric[0] 'age' (column 'age_text')``; null for a malformed line). Reasons:

* ``missing_value``: a required value is null or empty
* ``bad_number``: a number (numeric field, identity id, embedding element, numeric label rule)
  does not parse or is not finite
* ``bad_timestamp``: the timestamp does not parse or lies outside the spec's range
* ``bad_label``: a label column (without ``positive_if``) is not 0 or 1
* ``bad_embedding_length``: a vector's length differs from the spec's ``dim``
* ``unknown_category``: a value outside a closed vocabulary
* ``bad_weight``: a weight <= 0, or a propensity outside (0, 1]
* ``malformed_line``: a text line with the wrong number of fields (its raw value holds the line
  number, the field counts and the text)

A float-typed id column (pandas writes integer ids with a missing value as floats) reads its
whole numbers as integers (``196.0`` -> ``"196"``), NaN as missing, and infinities or values
too large to be exact integers (>= 2**53) as ``bad_number``. A timestamp in a numeric unit
that is an ISO-8601 string (e.g. one file of a log written differently) is read as such.

Parsed columns: ``__ts`` (float seconds), ``c:<name>`` (string, or list of strings when
multi-valued), ``n:<name>`` float64, ``e:<name>`` fixed-size list<float32> for an embedding in
a log column, ``k:<name>`` int64 (the key's row in its side table) for an embedding held by a
side table (parsed once in the driver, see ``side_embeddings``), ``label__<task>`` float32,
``__weight`` / ``__propensity`` float32, ``t:<column>`` tie-break strings. Invalid rows keep
their raw values as JSON in ``__raw`` for the quarantine files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hmoe.platform.data.parsing import (
    INTEGER_PATTERN,
    Reasons,
    apply_predicate,
    column_of,
    is_missing,
    normalise,
    parse_numbers,
)
from hmoe.platform.data.sides import (
    SideEmbedding,
    key_column,
    parse_embedding,
    side_embedding_keys,
)
from hmoe.platform.data.spec import CategoricalSpec, DatasetSpec, LabelSpec, label_column
from hmoe.platform.data.tables import (
    EXACT_FLOAT_INTEGERS,
    FILE_COLUMN,
    MALFORMED_COLUMN,
    ROW_COLUMN,
    as_strings,
    float_values,
)

__all__ = [
    "FIELD_COLUMN",
    "RAW_COLUMN",
    "REASON_COLUMN",
    "TS_COLUMN",
    "cat_column",
    "emb_column",
    "filter_column",
    "num_column",
    "parse_batch",
    "parse_timestamps",
    "tie_column",
]

REASON_COLUMN = "__reason"
FIELD_COLUMN = "__field"
RAW_COLUMN = "__raw"
TS_COLUMN = "__ts"
WEIGHT_COLUMN = "__weight"
PROPENSITY_COLUMN = "__propensity"
_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def cat_column(name: str) -> str:
    return f"c:{name}"


def num_column(name: str) -> str:
    return f"n:{name}"


def emb_column(name: str) -> str:
    return f"e:{name}"


def tie_column(name: str) -> str:
    return f"t:{name}"


def field_label(kind: str, index: int | None, name: str, column: str | None = None) -> str:
    """How messages name a spec entry: ``numeric[0] 'age'``, plus ``(column 'x')`` when the
    column differs from the name; ``timestamp (column 'ts')`` for an entry without index."""
    entry = f"{kind}[{index}] {name!r}" if index is not None else kind
    if index is None:
        return f"{entry} (column {name!r})"
    return entry if column in (None, name) else f"{entry} (column {column!r})"


def filter_column(sequence: str) -> str:
    """Whether the row satisfies the sequence's behaviour ``filter``."""
    return f"f:{sequence}"


def parse_batch(
    raw: pa.Table, spec: DatasetSpec, sides: Mapping[str, SideEmbedding] | None = None
) -> pa.Table:
    """Parse and validate one raw batch; see the module docstring for the output columns.

    ``sides``: the side-table embeddings ``join_side_tables`` referenced by key position.
    """
    reasons = Reasons(raw.num_rows)
    out: dict[str, pa.Array] = {
        ROW_COLUMN: raw.column(ROW_COLUMN).combine_chunks(),
        FILE_COLUMN: raw.column(FILE_COLUMN).combine_chunks(),
    }
    if MALFORMED_COLUMN in raw.column_names:
        reasons.add("malformed_line", _present(raw.column(MALFORMED_COLUMN)))
    if spec.timestamp is not None:
        out[TS_COLUMN] = _parse_timestamp(raw, spec, reasons)
    for index, feature in enumerate(spec.categorical):
        field = field_label("categorical", index, feature.name, feature.column)
        out[cat_column(feature.name)] = _parse_categorical(raw, feature, spec, reasons, field)
    for index, numeric in enumerate(spec.numeric):
        field = field_label("numeric", index, numeric.name, numeric.column)
        values, missing = _numbers_of(raw, numeric.source, reasons, field)
        if numeric.fill_missing is not None:
            values[missing] = numeric.fill_missing
        elif numeric.required:
            reasons.add("missing_value", missing, field)
        out[num_column(numeric.name)] = pa.array(np.nan_to_num(values, nan=0.0))
    for index, embedding in enumerate(spec.embeddings):
        field = field_label("embeddings", index, embedding.name, embedding.column)
        if key_column(embedding.name) in raw.column_names:
            out[key_column(embedding.name)] = side_embedding_keys(
                raw, embedding, sides, reasons, field
            )
        else:
            out[emb_column(embedding.name)] = parse_embedding(raw, embedding, reasons, field)
    for index, label in enumerate(spec.labels):
        field = field_label("labels", index, label.task, label.column)
        out[label_column(label.task)] = _parse_label(raw, label, reasons, field)
    if spec.weight is not None:
        out.update(_parse_weight(raw, spec, reasons))
    for q in spec.sequences:
        if q.filter is not None:
            keep, _, _ = apply_predicate(column_of(raw, q.filter.column), q.filter.where)
            out[filter_column(q.name)] = pa.array(keep)
    for name in spec.split.tie_break:
        out[tie_column(name)] = as_strings(column_of(raw, name))
    out[REASON_COLUMN] = reasons.array()
    out[FIELD_COLUMN] = reasons.field_array()
    out[RAW_COLUMN] = _raw_json(raw, reasons.codes >= 0)
    return pa.table(out)


def _present(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.combine_chunks().is_valid(), dtype=bool)


def _numbers_of(
    raw: pa.Table, name: str, reasons: Reasons, field: str
) -> tuple[np.ndarray, np.ndarray]:
    values, missing, bad = parse_numbers(column_of(raw, name))
    reasons.add("bad_number", bad, field)
    return values, missing


def _parse_timestamp(raw: pa.Table, spec: DatasetSpec, reasons: Reasons) -> pa.Array:
    assert spec.timestamp is not None
    field = field_label("timestamp", None, spec.timestamp.column)
    seconds, missing, bad = parse_timestamps(column_of(raw, spec.timestamp.column), spec)
    reasons.add("missing_value", missing, field)
    reasons.add("bad_timestamp", bad, field)
    return pa.array(seconds)


def parse_timestamps(
    column: pa.Array | pa.ChunkedArray, spec: DatasetSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(seconds, missing, unparsable or out of range)`` with the spec's unit and range."""
    ts = spec.timestamp
    assert ts is not None
    array = normalise(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    missing = is_missing(array)
    if ts.unit == "iso8601":
        seconds = _iso_seconds(array)
    else:
        values, _, unparsed = parse_numbers(array)
        seconds = values * _UNIT_SECONDS[ts.unit]
        if unparsed.any() and pa.types.is_string(array.type):
            # an ISO-8601 moment is unambiguous whatever the unit (no number parses as one)
            seconds[unparsed] = _iso_seconds(array.filter(pa.array(unparsed)))
    with np.errstate(invalid="ignore"):
        bad = ~missing & ~((seconds >= ts.min_seconds) & (seconds <= ts.max_seconds))
    return np.nan_to_num(seconds, nan=0.0), missing, bad


def _iso_seconds(array: pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(array.type):
        micros = pc.cast(pc.cast(array, pa.timestamp("us", tz="UTC")), pa.int64())
        return np.asarray(micros.fill_null(0), dtype=np.float64) * 1e-6
    try:
        parsed = pc.cast(as_strings(array), pa.timestamp("us", tz="UTC"))
        micros = pc.cast(parsed, pa.int64())
        values = np.asarray(micros.fill_null(0), dtype=np.float64) * 1e-6
        values[np.asarray(parsed.is_null(), dtype=bool)] = np.nan
        return values
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([_iso_one(v) for v in as_strings(array).to_pylist()], dtype=np.float64)


def _iso_one(text: str | None) -> float:
    if text is None:
        return np.nan
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return np.nan
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _parse_categorical(
    raw: pa.Table, feature: CategoricalSpec, spec: DatasetSpec, reasons: Reasons, field: str
) -> pa.Array:
    array = column_of(raw, feature.source)
    if feature.multi_valued:
        return _parse_multi(array, feature, spec, reasons, field)
    if pa.types.is_floating(array.type):
        # no id survives a float that is infinite or too large to be an exact integer
        with np.errstate(invalid="ignore"):
            inexact = np.abs(float_values(array)) >= EXACT_FLOAT_INTEGERS
        reasons.add("bad_number", inexact, field)
    # numbers written as text are never blank: only nulls are missing (saves the trims)
    numeric = pa.types.is_integer(array.type) or pa.types.is_floating(array.type)
    values = as_strings(array)
    if feature.transform == "first_token":
        values = _first_nonempty(values, feature.separator)
    elif feature.transform == "prefix":
        values = pc.utf8_slice_codeunits(values, 0, feature.prefix_len)
    missing = _nulls(values) if numeric and feature.transform == "none" else is_missing(values)
    fill = pa.scalar(feature.fill_missing, pa.string())  # null (-> padding) when not given
    if missing.any():
        values = pc.if_else(pa.array(missing), fill, values)
    if feature.fill_missing is None and feature.required:
        reasons.add("missing_value", missing, field)
    vocab = spec.vocab_of(feature)
    # without a fill the missing values became nulls and the rest is unchanged
    present = ~missing if feature.fill_missing is None else ~is_missing(values)
    if vocab.mode == "identity":
        ok = np.asarray(
            pc.match_substring_regex(values, INTEGER_PATTERN).fill_null(False), dtype=bool
        )
        reasons.add("bad_number", present & ~ok, field)
    elif vocab.mode == "closed":
        known = np.asarray(pc.is_in(values, value_set=pa.array(vocab.values)), dtype=bool)
        reasons.add("unknown_category", present & ~known, field)
    return values


def _nulls(array: pa.Array) -> np.ndarray:
    return np.asarray(array.is_null(), dtype=bool)


def _tokens(array: pa.Array, separator: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Non-empty trimmed tokens of a separated string (or list) column, in row order:
    ``(tokens, owner row of each token, rank of each token within its row)``."""
    if pa.types.is_list(array.type):
        lists = array.cast(pa.list_(pa.string()))
    else:
        lists = pc.split_pattern(as_strings(array), separator)
    lengths = np.asarray(pc.list_value_length(lists).fill_null(0), dtype=np.int64)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    owner = np.repeat(np.arange(len(lengths)), lengths)
    kept = ~is_missing(flat)
    owner = owner[kept]
    tokens = flat.filter(pa.array(kept))
    starts = np.searchsorted(owner, np.arange(len(lengths)), side="left")
    rank = np.arange(len(owner)) - starts[owner]
    return tokens, owner, rank


def _first_nonempty(values: pa.Array, separator: str) -> pa.Array:
    """The first non-empty ``separator``-separated token (null when there is none)."""
    tokens, owner, rank = _tokens(values, separator)
    first = np.full(len(values), -1, dtype=np.int64)
    first[owner[rank == 0]] = np.flatnonzero(rank == 0)
    return tokens.take(pa.array(first, mask=first < 0))


def _parse_multi(
    array: pa.Array, feature: CategoricalSpec, spec: DatasetSpec, reasons: Reasons, field: str
) -> pa.Array:
    tokens, owner, rank = _tokens(array, feature.separator)
    short = rank < feature.max_len
    tokens, owner = tokens.filter(pa.array(short)), owner[short]
    n = len(array)
    counts = np.bincount(owner, minlength=n)
    missing = counts == 0
    filled = missing & (feature.fill_missing is not None)
    sizes = counts + filled
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    index = np.empty(int(offsets[-1]), dtype=np.int64)
    index[offsets[owner] + rank[short]] = np.arange(len(owner))
    index[offsets[:-1][filled]] = len(tokens)  # the fill token, appended below
    pool = pa.concat_arrays([tokens, pa.array([feature.fill_missing or ""], pa.string())])
    values = pa.ListArray.from_arrays(pa.array(offsets), pool.take(pa.array(index)))
    if feature.required:
        reasons.add("missing_value", missing & ~filled, field)
    vocab = spec.vocab_of(feature)
    flat = values.flatten()
    owners = np.repeat(np.arange(n), sizes)
    if vocab.mode == "closed":
        unknown = ~np.asarray(pc.is_in(flat, value_set=pa.array(vocab.values)), dtype=bool)
        reasons.add("unknown_category", np.bincount(owners[unknown], minlength=n) > 0, field)
    elif vocab.mode == "identity":
        ok = np.asarray(
            pc.match_substring_regex(flat, INTEGER_PATTERN).fill_null(False), dtype=bool
        )
        reasons.add("bad_number", np.bincount(owners[~ok], minlength=n) > 0, field)
    return values


def _parse_label(raw: pa.Table, label: LabelSpec, reasons: Reasons, field: str) -> pa.Array:
    array = column_of(raw, label.source)
    rule = label.positive_if
    if rule is None:
        values, missing, bad = parse_numbers(array)
        reasons.add("missing_value", missing, field)
        reasons.add("bad_label", bad | (~missing & ~np.isin(values, (0.0, 1.0))), field)
        return pa.array(np.nan_to_num(values, nan=0.0).astype(np.float32))
    positive, missing, bad = apply_predicate(array, rule)
    reasons.add("missing_value", missing, field)
    reasons.add("bad_number", bad, field)
    return pa.array(positive.astype(np.float32))


def _parse_weight(raw: pa.Table, spec: DatasetSpec, reasons: Reasons) -> dict[str, pa.Array]:
    weight = spec.weight
    assert weight is not None
    field = field_label("weight", None, weight.column)
    values, missing = _numbers_of(raw, weight.column, reasons, field)
    reasons.add("missing_value", missing, field)
    with np.errstate(invalid="ignore"):
        if weight.kind == "propensity":
            bad = ~missing & ~((values > 0.0) & (values <= 1.0))
        else:
            bad = ~missing & ~(values > 0.0)
    reasons.add("bad_weight", bad & np.isfinite(values), field)
    clean = np.where(np.isfinite(values) & (values > 0.0), values, 1.0)
    if weight.kind == "weight":
        return {WEIGHT_COLUMN: pa.array(clean.astype(np.float32))}
    return {
        WEIGHT_COLUMN: pa.array((1.0 / clean).astype(np.float32)),
        PROPENSITY_COLUMN: pa.array(clean.astype(np.float32)),
    }


def _raw_json(raw: pa.Table, bad: np.ndarray) -> pa.Array:
    """The raw row as JSON for invalid rows (null for valid ones, which need no copy); for a
    malformed line, the line as the reader reported it."""
    texts: list[str | None] = [None] * raw.num_rows
    rows = np.flatnonzero(bad)
    if len(rows):
        internal = (ROW_COLUMN, FILE_COLUMN, MALFORMED_COLUMN)
        names = [c for c in raw.column_names if c not in internal]
        subset = raw.select(names).take(pa.array(rows)).to_pylist()
        lines: list[str | None] = [None] * len(rows)
        if MALFORMED_COLUMN in raw.column_names:
            lines = raw.column(MALFORMED_COLUMN).take(pa.array(rows)).to_pylist()
        for i, record, line in zip(rows, subset, lines, strict=True):
            texts[i] = line if line is not None else json.dumps(record, default=str)
    return pa.array(texts, type=pa.string())
