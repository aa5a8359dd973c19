"""Column parsing shared by log rows, side tables and behaviour logs: numbers, missing values,
predicates, and the quarantine reasons (first failing check per row, with the spec entry that
failed it, so that a message can say which field quarantined the rows)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hmoe.platform.data.spec import Predicate
from hmoe.platform.data.tables import as_strings

__all__ = [
    "INTEGER_PATTERN",
    "NUMBER_PATTERN",
    "REASONS",
    "Reasons",
    "apply_predicate",
    "column_of",
    "is_missing",
    "normalise",
    "parse_numbers",
]

REASONS = (
    "missing_value",
    "bad_number",
    "bad_timestamp",
    "bad_label",
    "bad_embedding_length",
    "unknown_category",
    "bad_weight",
    "malformed_line",
)
NUMBER_PATTERN = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
INTEGER_PATTERN = r"^\s*\+?\d+\s*$"


class Reasons:
    """The first reason per row, filled in check order, and the spec entry that gave it
    (``field``, e.g. ``numeric[0] 'age'``; None for a check of the whole row)."""

    def __init__(self, n: int) -> None:
        self.codes = np.full(n, -1, dtype=np.int8)
        self.field_codes = np.full(n, -1, dtype=np.int32)
        self.fields: list[str] = []

    def add(self, reason: str, bad: np.ndarray, field: str | None = None) -> None:
        first = (self.codes < 0) & bad
        self.codes[first] = REASONS.index(reason)
        if field is not None and first.any():
            if field not in self.fields:
                self.fields.append(field)
            self.field_codes[first] = self.fields.index(field)

    def array(self) -> pa.Array:
        names = np.array(REASONS, dtype=object)[np.maximum(self.codes, 0)]
        return pa.array(names, type=pa.string(), mask=self.codes < 0)

    def field_array(self) -> pa.Array:
        """The failing spec entry per row (null for valid rows and whole-row checks)."""
        names = np.array([*self.fields, ""], dtype=object)[self.field_codes]
        return pa.array(names, type=pa.string(), mask=self.field_codes < 0)


def column_of(raw: pa.Table, name: str) -> pa.Array:
    if name not in raw.column_names:
        raise ValueError(f"column {name!r} not in the data; columns: {raw.column_names}")
    return normalise(raw.column(name).combine_chunks())


def normalise(array: pa.Array) -> pa.Array:
    """Large strings and dictionary columns (pandas, Parquet) as plain arrays."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    if pa.types.is_large_list(array.type):
        array = array.cast(pa.list_(array.type.value_type))
    return array


def is_missing(array: pa.Array) -> np.ndarray:
    missing = array.is_null()
    if pa.types.is_string(array.type):
        missing = pc.or_(missing, pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(array)), 0))
    return np.asarray(missing.fill_null(True), dtype=bool)


def parse_numbers(array: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(float64 values, missing, unparsable or non-finite)``; bad entries hold NaN."""
    array = normalise(array)
    missing = is_missing(array)
    if pa.types.is_string(array.type):
        ok = np.asarray(
            pc.match_substring_regex(array, NUMBER_PATTERN).fill_null(False), dtype=bool
        )
        text = pc.if_else(pa.array(ok), pc.utf8_trim_whitespace(array), pa.scalar("nan"))
        values = np.asarray(pc.cast(text, pa.float64()), dtype=np.float64)
    elif (
        pa.types.is_boolean(array.type)
        or pa.types.is_integer(array.type)
        or pa.types.is_floating(array.type)
        or pa.types.is_decimal(array.type)
    ):
        values = np.asarray(pc.cast(array, pa.float64()).fill_null(np.nan), dtype=np.float64)
    else:
        raise ValueError(f"cannot read numbers from a column of type {array.type}")
    bad = ~missing & ~np.isfinite(values)
    values = np.where(np.isfinite(values), values, np.nan)
    return values, missing, bad


def apply_predicate(array: pa.Array, rule: Predicate) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    operands = rule.values if rule.op in ("in", "not_in") else (rule.value,)
    numeric = all(isinstance(v, float) for v in operands)
    if numeric:
        values, missing, bad = parse_numbers(array)
        left: np.ndarray = values
    else:
        strings = as_strings(array)
        missing = is_missing(strings)
        bad = np.zeros(len(strings), dtype=bool)
        left = np.asarray(strings.fill_null("").to_pylist(), dtype=object)
        operands = tuple(_number_text(v) for v in operands)
    compare = {
        "==": lambda: left == operands[0],
        "!=": lambda: left != operands[0],
        ">": lambda: left > operands[0],
        ">=": lambda: left >= operands[0],
        "<": lambda: left < operands[0],
        "<=": lambda: left <= operands[0],
        "in": lambda: np.isin(left, operands),
        "not_in": lambda: ~np.isin(left, operands),
    }[rule.op]
    with np.errstate(invalid="ignore"):
        positive = np.asarray(compare(), dtype=bool) & ~missing & ~bad
    return positive, missing, bad


def _number_text(value: float | str | None) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
