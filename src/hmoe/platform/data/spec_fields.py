"""The per-column parts of a dataset spec (tables, column roles, vocabulary rules, labels).

``hmoe.platform.data.spec`` assembles them into ``DatasetSpec`` and re-exports them; import them
from there.
"""

from __future__ import annotations

from typing import Literal

from hmoe.config import Config, ConfigError, config

__all__ = [
    "CategoricalSpec",
    "ColumnPredicate",
    "EmbeddingSpec",
    "LabelSpec",
    "NumericSpec",
    "Predicate",
    "SideTableSpec",
    "SimilaritySpec",
    "TableSpec",
    "TimestampSpec",
    "VocabSpec",
    "WeightSpec",
]

SECONDS_2100 = 4102444800.0  # 2100-01-01T00:00:00Z: later timestamps are treated as corrupt


@config
class TableSpec(Config):
    """A raw table: one or more files of one format.

    ``paths`` entries are files, directories (every file inside, sorted) or globs. Text formats
    are read with every column as a string, so parsing (and quarantining) is ours.
    """

    paths: tuple[str, ...]
    format: Literal["csv", "tsv", "parquet", "jsonl"] = "csv"  # file format of every path
    header: bool = True  # csv/tsv: the first line names the columns
    column_names: tuple[str, ...] = ()  # csv/tsv without header (or to rename every column)
    strip_type_suffix: bool = False  # RecBole-style headers "user_id:token" -> "user_id"
    delimiter: str | None = None  # csv/tsv: default "," or "\t"
    null_values: tuple[str, ...] = ("",)  # csv/tsv: strings read as missing

    def __post_init__(self) -> None:
        if not self.paths:
            raise ConfigError("paths must name at least one file")
        if self.format in ("csv", "tsv") and not self.header and not self.column_names:
            raise ConfigError("a csv/tsv without header needs column_names")


@config
class SideTableSpec(Config):
    """A table joined onto every log row by key (e.g. item or user attributes, embeddings)."""

    table: TableSpec
    key: str  # the side table's key column (unique)
    join_on: str  # the log column holding the key
    columns: tuple[str, ...] = ()  # side-table columns to add (default: all but the key)


@config
class TimestampSpec(Config):
    """The event time column; parsed to float seconds since the epoch (UTC).

    With a numeric ``unit``, a value that is an ISO-8601 string is read as that moment (naive
    times as UTC), so a log whose files write the time differently needs no second spec.
    """

    column: str  # the raw time column
    unit: Literal["s", "ms", "us", "iso8601"] = "s"
    min_seconds: float = 0.0  # rows outside [min_seconds, max_seconds] are quarantined
    max_seconds: float = SECONDS_2100  # default: the year 2100


@config
class VocabSpec(Config):
    """How raw values map to indices (0 = padding, 1 = OOV, real values from 2).

    ``fit``: values seen at least ``min_count`` times in the train split, most frequent first
    (ties by value), at most ``max_size`` of them; others are OOV. ``hash``: ``2 +
    crc32(value) % hash_size`` (stable across processes). ``identity``: pre-encoded
    non-negative integer ids, index = id + 2, size = max id over all splits + 3. ``closed``: the
    declared ``values`` only; any other value quarantines the row (``unknown_category``).
    """

    # fit, hash, identity or closed (above)
    mode: Literal["fit", "hash", "identity", "closed"] = "fit"
    min_count: int = 1
    max_size: int | None = None
    hash_size: int | None = None  # hash mode: number of hash buckets
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ConfigError("min_count must be >= 1")
        if self.mode == "hash" and (self.hash_size is None or self.hash_size < 1):
            raise ConfigError("mode 'hash' needs hash_size >= 1")
        if self.mode != "hash" and self.hash_size is not None:
            raise ConfigError(f"hash_size is only used by mode 'hash' (mode is {self.mode!r})")
        if self.mode == "closed" and not self.values:
            raise ConfigError("mode 'closed' needs the list of values")
        if self.mode != "closed" and self.values:
            raise ConfigError(f"values are only used by mode 'closed' (mode is {self.mode!r})")
        if self.max_size is not None and self.max_size < 1:
            raise ConfigError("max_size must be >= 1")


@config
class CategoricalSpec(Config):
    """A categorical feature read from one raw column (after side-table joins).

    ``transform`` derives the value: ``first_token`` = first ``separator``-separated token,
    ``prefix`` = the first ``prefix_len`` characters. A multi-valued field splits the value on
    ``separator`` (or reads a list column) and keeps the first ``max_len`` tokens.
    """

    name: str  # the feature's name in the prepared data and the model
    column: str | None = None  # default: name
    group: str = "default"  # field group: user, item, context ... (multi-embedding and analysis)
    multi_valued: bool = False  # several values per row (pooled by the model)
    separator: str = " "
    max_len: int = 1
    transform: Literal["none", "first_token", "prefix"] = "none"
    prefix_len: int = 1
    required: bool = True  # a missing value quarantines the row (missing_value)
    fill_missing: str | None = None  # used instead when given (also for empty tokens)
    vocab: VocabSpec | None = None  # default: DatasetSpec.vocab

    def __post_init__(self) -> None:
        if self.max_len < 1 or (not self.multi_valued and self.max_len != 1):
            raise ConfigError(f"{self.name}: max_len must be 1, or >= 1 when multi_valued")
        if self.multi_valued and self.transform != "none":
            raise ConfigError(f"{self.name}: a multi-valued field takes no transform")
        if self.prefix_len < 1:
            raise ConfigError(f"{self.name}: prefix_len must be >= 1")

    @property
    def source(self) -> str:
        return self.column or self.name


@config
class NumericSpec(Config):
    """A numeric feature (raw value; non-finite or unparsable values quarantine the row)."""

    name: str  # the feature's name in the prepared data and the model
    column: str | None = None  # default: name
    group: str = "default"  # field group (as for categorical features)
    required: bool = True  # a missing value quarantines the row (missing_value)
    fill_missing: float | None = None  # used for missing values (needed when not required)

    def __post_init__(self) -> None:
        if not self.required and self.fill_missing is None:
            raise ConfigError(
                f"{self.name}: a numeric field that is not required needs fill_missing"
            )

    @property
    def source(self) -> str:
        return self.column or self.name


@config
class EmbeddingSpec(Config):
    """A pre-trained vector column (a list column, or a ``separator``-joined string of floats).

    Vectors from a side table keyed by user or item are joined first (``side_tables``), then
    named here by their column. Embeddings are not written; they feed ``similarity`` and the
    per-behaviour similarity of sequences.
    """

    name: str  # what similarity and sequences call it
    column: str | None = None  # default: name
    dim: int  # vector length; another length quarantines the row
    separator: str = " "

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"{self.name}: dim must be >= 1")

    @property
    def source(self) -> str:
        return self.column or self.name


@config
class SimilaritySpec(Config):
    """Cosine similarity of two embeddings of the same row (e.g. user vs target item)."""

    name: str  # the feature's name in the prepared data and the model
    left: str  # an EmbeddingSpec name
    right: str  # the other EmbeddingSpec
    group: str = "default"  # field group (as for categorical features)


@config
class Predicate(Config):
    """``value OP operand``: numeric for the order operators, string or number for ==, !=, in."""

    op: Literal["==", "!=", ">", ">=", "<", "<=", "in", "not_in"]  # the comparison
    value: float | str | None = None  # the operand of ==, !=, >, >=, <, <=
    values: tuple[float | str, ...] = ()  # the operands of in / not_in

    def __post_init__(self) -> None:
        listed = self.op in ("in", "not_in")
        if listed and (not self.values or self.value is not None):
            raise ConfigError(f"op {self.op!r} takes values: [...], not value")
        if not listed and (self.value is None or self.values):
            raise ConfigError(f"op {self.op!r} takes value, not values")
        if self.op in (">", ">=", "<", "<=") and isinstance(self.value, str):
            raise ConfigError(f"op {self.op!r} needs a numeric value, got {self.value!r}")


@config
class ColumnPredicate(Config):
    """A rule on a raw column (after side-table joins), e.g. ``{column: rating, where: {op:
    ">=", value: 4}}``; a missing value does not satisfy it."""

    column: str  # a raw column
    where: Predicate


@config
class LabelSpec(Config):
    """One task's binary label: the column itself (must be 0/1) or ``positive_if`` on it."""

    task: str  # the task's name (metrics are named after it)
    column: str | None = None  # default: task
    positive_if: Predicate | None = None

    @property
    def source(self) -> str:
        return self.column or self.task


@config
class WeightSpec(Config):
    """A sample weight, or a logged propensity p (the weight becomes 1/p; p kept as a column)."""

    column: str  # the raw column
    kind: Literal["weight", "propensity"] = "weight"  # weight: used as is; propensity: weight = 1/p
