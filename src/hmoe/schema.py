"""FeatureSchema and the Batch contract: what a prepared dataset offers and a model may read.

``hmoe.platform.data.prepare`` writes the schema into ``manifest.json["feature_schema"]``;
``hmoe.models.build(model_config, schema)`` reads it. Models never name a dataset's columns:
they iterate the schema. A Batch is a ``dict[str, Tensor]`` keyed by the names below
(``B`` batch, ``M`` multi-value length, ``L`` sequence length, ``K`` tasks):

* categorical ``c``: ``batch[c.name]`` long ``[B]``; multi-valued: long ``[B, M]``, 0 = padding
* numeric ``n``: ``batch[n.name]`` float ``[B]`` (raw value; the model maps it for MNSE/buckets)
* similarity ``s``: ``batch[s.name]`` float ``[B]`` (cosine in [-1, 1]; the model bucketises)
* sequence ``q`` (oldest first, 0 = padding after the last real behaviour):
  ``batch[seq_column(q.name, "item")]`` long ``[B, L]``, ``"category"`` long ``[B, L]`` when
  ``q.category_field`` is set, ``"time_delta"`` float ``[B, L]`` (seconds before the target,
  >= 0), ``"similarity"`` float ``[B, L]`` when ``q.has_similarity``, and
  ``batch[seq_column(q.name, "length")]`` long ``[B]``
* ``batch[LABELS]`` float ``[B, K]`` in ``schema.tasks`` order; ``batch[WEIGHT]`` float ``[B]``
  (1 where the data has none); ``batch[EXPOSURE]`` float ``[B]`` (earlier exposures of the same
  user and item, 0 where the data has none)

Index 0 of every vocabulary is padding and 1 is out-of-vocabulary.
"""

from __future__ import annotations

from hmoe.config import Config, ConfigError, config

__all__ = [
    "EXPOSURE",
    "LABELS",
    "MANIFEST",
    "METRIC_SPLITS",
    "OOV_INDEX",
    "PAD_INDEX",
    "SEQUENCE_PARTS",
    "SPLITS",
    "WEIGHT",
    "CategoricalFeature",
    "FeatureSchema",
    "NumericFeature",
    "SequenceFeature",
    "SimilarityFeature",
    "seq_column",
]

PAD_INDEX = 0
OOV_INDEX = 1
LABELS = "labels"
WEIGHT = "weight"
EXPOSURE = "exposure"
SEQUENCE_PARTS = ("item", "category", "time_delta", "similarity", "length")
# a prepared dataset's manifest (schema, shards, vocabularies, row counts), at its root
MANIFEST = "manifest.json"
# a prepared dataset's splits in order: its folder names and the manifest's keys
SPLITS: tuple[str, ...] = ("train", "valid", "test")
# the short name of each split in metric keys (``val_auc``) and in the training loop's calls
# (``read_split(data, "val", schema)``) -> the split it names
METRIC_SPLITS: dict[str, str] = dict(zip(("train", "val", "test"), SPLITS, strict=True))


def seq_column(sequence: str, part: str) -> str:
    """The Batch/Parquet column of one per-behaviour field of a sequence feature."""
    if part not in SEQUENCE_PARTS:
        raise ValueError(f"unknown sequence part {part!r}; valid: {SEQUENCE_PARTS}")
    return f"{sequence}__{part}"


@config
class CategoricalFeature(Config):
    """A categorical field; ``vocab_size`` counts padding (0) and OOV (1)."""

    name: str
    vocab_size: int
    multi_valued: bool = False
    max_len: int = 1  # M for multi-valued fields
    group: str = "default"  # field group (e.g. user / item / context), read by GwPFM

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ConfigError(f"{self.name}: vocab_size must be >= 2 (pad + OOV)")
        if self.max_len < 1 or (not self.multi_valued and self.max_len != 1):
            raise ConfigError(f"{self.name}: max_len must be 1, or >= 1 when multi_valued")


@config
class NumericFeature(Config):
    """A numeric field with statistics fitted on the train split (for MNSE's value mappings)."""

    name: str
    min_value: float
    max_value: float
    quantiles: tuple[float, ...] = ()  # sorted bucket boundaries fitted on train
    is_integer: bool = False  # every train value is a whole number (ages, years, counts)
    group: str = "default"


@config
class SimilarityFeature(Config):
    """A cosine similarity of pre-trained embeddings (e.g. user vs target item)."""

    name: str
    group: str = "default"


@config
class SequenceFeature(Config):
    """A point-in-time behaviour sequence whose items share a categorical field's vocabulary."""

    name: str
    max_len: int
    item_field: str  # the CategoricalFeature whose vocabulary (and target id) the items use
    category_field: str | None = None  # the CategoricalFeature of the behaviour category
    has_similarity: bool = False  # per-behaviour cosine to the target item is present
    group: str = "default"  # field group of the sequence's token(s), like the other features

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ConfigError(f"{self.name}: max_len must be >= 1")


@config
class FeatureSchema(Config):
    """Every encoded input of a prepared dataset, by kind, plus the task names in label order."""

    categorical: tuple[CategoricalFeature, ...] = ()
    numeric: tuple[NumericFeature, ...] = ()
    similarity: tuple[SimilarityFeature, ...] = ()
    sequences: tuple[SequenceFeature, ...] = ()
    tasks: tuple[str, ...] = ("click",)
    user_field: str | None = None  # categorical field of the user (GAUC groups by it)
    item_field: str | None = None  # categorical field of the target item
    has_weight: bool = False
    has_exposure: bool = False

    def __post_init__(self) -> None:
        names = [f.name for f in (*self.categorical, *self.numeric, *self.similarity)]
        names += [q.name for q in self.sequences]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(f"feature names used twice: {duplicated}")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks must be non-empty and distinct, got {list(self.tasks)}")
        categorical = {c.name for c in self.categorical}
        for field in (self.user_field, self.item_field):
            if field is not None and field not in categorical:
                raise ConfigError(f"{field!r} is not a categorical feature")
        for q in self.sequences:
            for field in (q.item_field, q.category_field):
                if field is not None and field not in categorical:
                    raise ConfigError(f"sequence {q.name}: {field!r} is not a categorical feature")

    def categorical_by_name(self, name: str) -> CategoricalFeature:
        for c in self.categorical:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)
