"""The dataset spec: where the raw logs are, what each column means, and how to encode them.

A spec is YAML read strictly into the frozen configs below (an unknown key or a wrong type raises
``ConfigError`` naming its key path). Paths are relative to the spec file's directory unless
absolute; ``${HMOE_DATA_ROOT}`` expands to the environment variable of that name, or to
``../shared/data`` relative to the current directory when unset. Any other ``${NAME}`` must be
set in the environment. A minimal spec::

    name: toy
    log: {paths: [log.csv], format: csv}
    timestamp: {column: ts, unit: s}
    user_field: user
    item_field: item
    categorical:
      - {name: user}
      - {name: item}
      - {name: genres, column: genre_list, multi_valued: true, separator: "|", max_len: 4}
    numeric: [{name: price}]
    labels: [{task: click}]
    sequences: [{name: hist, max_len: 20, item_field: item, only_positive_of: click}]
    split: {kind: temporal, fractions: [0.8, 0.1, 0.1]}

Encoded columns carry the feature names (``CategoricalSpec.name`` ...), labels are written as
``label__<task>`` (see ``label_column``); the reader assembles them into ``Batch["labels"]``.

Before any Ray work, every column the spec names (fields, labels, timestamp, weight, filters,
tie-breaks, side-table keys and columns, behaviour-log columns) is checked against each file's
schema or header, and each label without ``positive_if`` against its first rows (it must hold
0/1): a mismatch is one error naming the spec entry, the column, the file and its columns.
Rows that fail validation are quarantined (``quarantine/`` in the output: row id, reason, raw
row, failing field, source file); ``validate.max_quarantine_fraction`` fails the run when a
larger share of the rows is quarantined (see ``ValidateSpec``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from hmoe.config import Config, ConfigError, FrozenMap, config
from hmoe.platform.data.spec_fields import (
    CategoricalSpec,
    ColumnPredicate,
    EmbeddingSpec,
    LabelSpec,
    NumericSpec,
    Predicate,
    SideTableSpec,
    SimilaritySpec,
    TableSpec,
    TimestampSpec,
    VocabSpec,
    WeightSpec,
)
from hmoe.schema import SPLITS

__all__ = [
    "DATA_ROOT_ENV",
    "SPLITS",
    "BehaviourLogSpec",
    "CategoricalSpec",
    "ColumnPredicate",
    "DatasetSpec",
    "EmbeddingSpec",
    "LabelSpec",
    "NumericSpec",
    "OutputSpec",
    "Predicate",
    "SequenceSpec",
    "SideTableSpec",
    "SimilaritySpec",
    "SplitSpec",
    "TableSpec",
    "TimestampSpec",
    "ValidateSpec",
    "VocabSpec",
    "WeightSpec",
    "data_root",
    "label_column",
    "load_spec",
    "resolve_path",
    "spec_from_dict",
]

DATA_ROOT_ENV = "HMOE_DATA_ROOT"
DEFAULT_DATA_ROOT = Path("..") / "shared" / "data"
LABEL_PREFIX = "label__"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Split = Literal["train", "valid", "test"]


def label_column(task: str) -> str:
    """The Parquet column of one task's 0/1 label (the reader stacks them into ``labels``)."""
    return f"{LABEL_PREFIX}{task}"


@config
class BehaviourLogSpec(Config):
    """A separate behaviour log (e.g. clicks) whose events feed a sequence."""

    table: TableSpec
    user_column: str  # the user id column (values as in user_field)
    item_column: str  # the item id column (values as in the sequence's item_field)
    timestamp_column: str  # parsed with the spec's TimestampSpec unit and range
    category_column: str | None = None  # the category column, if the sequence has one


@config
class SequenceSpec(Config):
    """A point-in-time behaviour sequence per target row.

    Behaviours are the same user's events with a timestamp strictly earlier than the target's
    (ties excluded), the latest ``max_len`` of them, oldest first. Source ``log``: the log's own
    valid rows (any split), optionally only those with ``only_positive_of`` == 1 and/or
    satisfying ``filter``; the item and
    category are the row's ``item_field`` / ``category_field`` values. Source ``behaviour_log``:
    the events of ``behaviour_log``, encoded with the same vocabularies.
    """

    name: str  # the sequence's name in the prepared data and the model
    max_len: int
    item_field: str  # a CategoricalSpec name (shares its vocabulary)
    category_field: str | None = None  # a CategoricalSpec name
    # where behaviours come from: the log itself or behaviour_log
    source: Literal["log", "behaviour_log"] = "log"
    only_positive_of: str | None = None  # a task: keep behaviours whose label is 1
    filter: ColumnPredicate | None = None  # and/or keep rows satisfying a rule on a raw column
    behaviour_log: BehaviourLogSpec | None = None
    similarity_embedding: str | None = None  # an item EmbeddingSpec: cosine to the target item
    group: str = "default"  # field group of the sequence's tokens (FeatureSchema)

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ConfigError(f"{self.name}: max_len must be >= 1")
        if (self.source == "behaviour_log") != (self.behaviour_log is not None):
            raise ConfigError(f"{self.name}: behaviour_log is given iff source is behaviour_log")
        if self.source == "behaviour_log" and (self.only_positive_of or self.filter):
            raise ConfigError(f"{self.name}: only_positive_of and filter apply to source 'log'")


@config
class SplitSpec(Config):
    """How rows are split into train / valid / test.

    ``temporal``: a stable sort by (timestamp, ``tie_break`` columns, file order), then
    ``fractions`` of the rows in that order. ``ordered``: ``fractions`` in file order (files in
    ``paths`` order). ``cutoff``: rows with timestamp < ``cutoffs[0]`` train, < ``cutoffs[1]``
    valid, the rest test (seconds since the epoch). ``random``: each row independently by a
    stable hash of (seed, row position). ``group``: all rows of a group (the values of the
    categorical feature ``group_by``, e.g. a query or a user) in one split, chosen by a stable
    hash of (seed, value), so ``fractions`` hold for groups, not rows. ``group_temporal``: each
    group split in time, the same stable sort as ``temporal`` within the group: its last
    ``max(1, round(n * fractions[2]))`` rows to test, the ``max(1, round(n * fractions[1]))``
    before them to valid (none when a fraction is 0), the rest to train, so every group with
    three rows or more has training rows before its test rows (``group_by: user_id`` is the
    leave-last-out protocol of sequential recommendation; it collects the group, time and row id
    of every row in the driver). ``pinned_files`` sends every row of a log path (as written in
    ``log.paths``) to one split; the others are split among the remaining rows.
    """

    # temporal, ordered, cutoff, random, group or group_temporal (above)
    kind: Literal["temporal", "ordered", "cutoff", "random", "group", "group_temporal"] = "temporal"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # cutoff: the train/valid and valid/test times (seconds)
    cutoffs: tuple[float, float] | None = None
    tie_break: tuple[str, ...] = ()  # raw columns; compared as numbers when all parse as numbers
    seed: int = 0  # random and group: the hash seed
    group_by: str | None = None  # a single-valued categorical feature (kinds group*)
    pinned_files: Mapping[str, Split] = FrozenMap()

    def __post_init__(self) -> None:
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-9:
            raise ConfigError(f"fractions must be >= 0 and sum to 1, got {list(self.fractions)}")
        if (self.kind == "cutoff") != (self.cutoffs is not None):
            raise ConfigError("cutoffs are given iff kind is 'cutoff'")
        if self.cutoffs is not None and self.cutoffs[0] > self.cutoffs[1]:
            raise ConfigError(f"cutoffs must be increasing, got {list(self.cutoffs)}")
        if self.tie_break and self.kind not in ("temporal", "group_temporal"):
            raise ConfigError("tie_break applies to kinds 'temporal' and 'group_temporal' only")
        if (self.group_by is not None) != self.kind.startswith("group"):
            raise ConfigError(
                f"split.group_by is given iff kind is 'group' or 'group_temporal' "
                f"(kind {self.kind!r}, group_by {self.group_by!r})"
            )


@config
class OutputSpec(Config):
    """Shard sizes and the statistics fitted for numeric features."""

    rows_per_shard: int = 250_000  # bounds a write task's memory; shards are written in parallel
    numeric_quantiles: int = 16  # bucket boundaries per numeric feature (fitted on train)
    quantile_sample_rows: int = 200_000  # train rows sampled (deterministically) for them
    read_batch_rows: int = 65_536  # rows per block read from text files

    def __post_init__(self) -> None:
        for name in ("rows_per_shard", "quantile_sample_rows", "read_batch_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.numeric_quantiles < 0:
            raise ConfigError("numeric_quantiles must be >= 0")


@config
class ValidateSpec(Config):
    """How much of the log may be quarantined before ``prepare`` fails.

    ``max_quarantine_fraction``: the run fails (naming the share, the top reasons with their
    fields and this key; nothing is written) when more than this fraction of the rows read is
    quarantined. The default, 0.5, lets through logs with a share of corrupt rows however
    large it is in practice, while a spec that misreads the data (a text column read as a
    number, a rating used as a 0/1 label, timestamps in another unit) quarantines most rows
    and fails. Set 1.0 to keep any run that leaves at least one valid row.
    """

    max_quarantine_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            raise ConfigError(
                f"max_quarantine_fraction must be in [0, 1], got {self.max_quarantine_fraction}"
            )


@config
class DatasetSpec(Config):
    """A whole dataset: raw tables, column roles, sequences, vocabulary rules and the split."""

    name: str  # the dataset's name, kept in the manifest
    log: TableSpec
    side_tables: tuple[SideTableSpec, ...] = ()
    timestamp: TimestampSpec | None = None
    user_field: str | None = None  # a CategoricalSpec name
    item_field: str | None = None  # a CategoricalSpec name
    categorical: tuple[CategoricalSpec, ...] = ()
    numeric: tuple[NumericSpec, ...] = ()
    embeddings: tuple[EmbeddingSpec, ...] = ()
    similarity: tuple[SimilaritySpec, ...] = ()
    labels: tuple[LabelSpec, ...]
    weight: WeightSpec | None = None
    sequences: tuple[SequenceSpec, ...] = ()
    count_exposures: bool = False  # earlier exposures (strictly earlier time) of user and item
    vocab: VocabSpec = VocabSpec()
    split: SplitSpec = SplitSpec()
    output: OutputSpec = OutputSpec()
    validate: ValidateSpec = ValidateSpec()

    def __post_init__(self) -> None:
        _check_spec(self)

    def vocab_of(self, feature: CategoricalSpec) -> VocabSpec:
        return feature.vocab or self.vocab

    def categorical_by_name(self, name: str) -> CategoricalSpec:
        for c in self.categorical:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def needs_user_pass(self) -> bool:
        """Sequences and exposure counts need each user's rows together, in time order."""
        return bool(self.sequences) or self.count_exposures


def _check_spec(spec: DatasetSpec) -> None:
    names = [f.name for f in (*spec.categorical, *spec.numeric, *spec.similarity)]
    names += [q.name for q in spec.sequences]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"feature names used twice: {duplicated}")
    tasks = [label.task for label in spec.labels]
    if not tasks or len(set(tasks)) != len(tasks):
        raise ConfigError(f"labels: tasks must be non-empty and distinct, got {tasks}")
    categorical = {c.name for c in spec.categorical}
    embeddings = {e.name for e in spec.embeddings}
    for key in ("user_field", "item_field"):
        value = getattr(spec, key)
        if value is not None and value not in categorical:
            raise ConfigError(f"{key}: {value!r} is not a categorical feature")
    for s in spec.similarity:
        for side in (s.left, s.right):
            if side not in embeddings:
                raise ConfigError(f"similarity {s.name}: {side!r} is not an embedding")
    for q in spec.sequences:
        for field in (q.item_field, q.category_field):
            if field is not None and field not in categorical:
                raise ConfigError(f"sequence {q.name}: {field!r} is not a categorical feature")
        if q.only_positive_of is not None and q.only_positive_of not in tasks:
            raise ConfigError(f"sequence {q.name}: {q.only_positive_of!r} is not a task")
        if q.similarity_embedding is not None and q.similarity_embedding not in embeddings:
            raise ConfigError(f"sequence {q.name}: {q.similarity_embedding!r} is not an embedding")
        if q.similarity_embedding is not None and q.source != "log":
            raise ConfigError(f"sequence {q.name}: similarity_embedding needs source 'log'")
        if spec.categorical_by_name(q.item_field).multi_valued:
            raise ConfigError(f"sequence {q.name}: item_field must be single-valued")
    if spec.needs_user_pass and (spec.user_field is None or spec.timestamp is None):
        raise ConfigError("sequences and count_exposures need user_field and timestamp")
    if spec.count_exposures and spec.item_field is None:
        raise ConfigError("count_exposures needs item_field")
    group_by = spec.split.group_by
    if group_by is not None and (
        group_by not in categorical or spec.categorical_by_name(group_by).multi_valued
    ):
        raise ConfigError(
            f"split.group_by: {group_by!r} is not a single-valued categorical feature"
        )
    if spec.split.kind in ("temporal", "cutoff", "group_temporal") and spec.timestamp is None:
        raise ConfigError(f"split kind {spec.split.kind!r} needs a timestamp")
    unknown_pins = sorted(set(spec.split.pinned_files) - set(spec.log.paths))
    if unknown_pins:
        raise ConfigError(f"split.pinned_files: {unknown_pins} are not in log.paths")


def spec_from_dict(data: Mapping[str, Any]) -> DatasetSpec:
    """Build a spec strictly; errors name the key path (``DatasetSpec.categorical[2].vocab``)."""
    return DatasetSpec.from_dict(data)


def load_spec(path: str | Path) -> DatasetSpec:
    """Read a YAML dataset spec (paths in it stay as written; see ``resolve_path``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset spec not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        raise ConfigError(f"{path}: a dataset spec must be a YAML mapping, got {kind}")
    try:
        return spec_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def data_root() -> Path:
    """``$HMOE_DATA_ROOT``, or ``../shared/data`` relative to the current directory."""
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def resolve_path(path: str, base_dir: str | Path) -> Path:
    """Expand ``${VAR}`` (``${HMOE_DATA_ROOT}`` has a default) and anchor relative paths."""

    def expand(match: re.Match[str]) -> str:
        var = match.group(1)
        if var == DATA_ROOT_ENV:
            return str(data_root().absolute())
        if var not in os.environ:
            raise ConfigError(f"path {path!r}: environment variable {var} is not set")
        return os.environ[var]

    expanded = Path(_VAR.sub(expand, path)).expanduser()
    return expanded if expanded.is_absolute() else Path(base_dir) / expanded
