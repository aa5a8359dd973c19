"""Example schemas and random, contract-valid Batches for the model tests and benchmarks.

``random_batch`` fills every column of the Batch contract (``hmoe.schema``) from a
``torch.Generator``, so the same generator seed gives the same batch. To exercise the edge
cases in every test that uses it: row 0 has an all-padding history and empty multi-valued
fields, row 1 a length-1 history; with ``batch_size >= 2`` every task has a negative in row 0
and a positive in row 1.

Legend for shape suffixes: ``B`` batch, ``M`` multi-value length, ``L`` sequence, ``K`` tasks.
"""

from __future__ import annotations

import torch

from hmoe.schema import (
    EXPOSURE,
    LABELS,
    OOV_INDEX,
    PAD_INDEX,
    WEIGHT,
    CategoricalFeature,
    FeatureSchema,
    NumericFeature,
    SequenceFeature,
    SimilarityFeature,
    seq_column,
)

__all__ = ["criteo_like_schema", "ml100k_like_schema", "random_batch", "tiny_schema"]

POSITIVE_RATE = 0.3
MAX_GAP_SECONDS = 7 * 24 * 3600.0  # time between two consecutive random behaviours
MAX_EXPOSURE = 5
WEIGHT_RANGE = (0.5, 1.5)
# Criteo-like vocabulary sizes (26 fields, ~1.07M ids as with a frequency threshold of 10)
CRITEO_VOCABS = (
    1_460, 580, 300_000, 180_000, 310, 25, 12_500, 640, 5, 93_000, 5_700, 280_000, 3_200,
    30, 13_000, 240_000, 12, 5_600, 2_200, 6, 260_000, 20, 17, 80_000, 100, 70_000,
)  # fmt: skip
CRITEO_NUMERIC_MAX = (
    5_800, 260_000, 65_500, 970, 23_000_000, 430_000, 56_000, 6_000, 29_000, 11, 230, 4_000, 7_400,
)  # fmt: skip
CRITEO_NUM_QUANTILES = 20


def tiny_schema(tasks: tuple[str, ...] = ("click",)) -> FeatureSchema:
    """Every feature kind once: single and multi-valued ids, integer / scaled / quantile
    numerics, a similarity, and a sequence with category and similarity; three field groups."""
    return FeatureSchema(
        categorical=(
            CategoricalFeature(name="user", vocab_size=12, group="user"),
            CategoricalFeature(name="item", vocab_size=20, group="item"),
            CategoricalFeature(name="category", vocab_size=7, group="item"),
            CategoricalFeature(
                name="tags", vocab_size=9, multi_valued=True, max_len=3, group="item"
            ),
            CategoricalFeature(name="hour", vocab_size=26, group="context"),
        ),
        numeric=(
            NumericFeature(
                name="age", min_value=0.0, max_value=70.0, is_integer=True, group="user"
            ),
            NumericFeature(name="price", min_value=0.5, max_value=99.5, group="item"),
            NumericFeature(
                name="ctr",
                min_value=0.0,
                max_value=1.0,
                quantiles=(0.01, 0.05, 0.1, 0.3),
                group="context",
            ),
        ),
        similarity=(SimilarityFeature(name="user_item_sim", group="context"),),
        sequences=(
            SequenceFeature(
                name="history",
                max_len=6,
                item_field="item",
                category_field="category",
                has_similarity=True,
                group="user",
            ),
        ),
        tasks=tasks,
        user_field="user",
        item_field="item",
        has_weight=True,
        has_exposure=True,
    )


def ml100k_like_schema(tasks: tuple[str, ...] = ("click",)) -> FeatureSchema:
    """The shape of MovieLens-100K as prepared for hmoe: 943 users, 1682 items, 19 genres
    (multi-valued on the target, one per behaviour), a 50-long history with similarity."""
    return FeatureSchema(
        categorical=(
            CategoricalFeature(name="user_id", vocab_size=945, group="user"),
            CategoricalFeature(name="gender", vocab_size=4, group="user"),
            CategoricalFeature(name="occupation", vocab_size=23, group="user"),
            CategoricalFeature(name="item_id", vocab_size=1684, group="item"),
            CategoricalFeature(
                name="genre", vocab_size=21, multi_valued=True, max_len=6, group="item"
            ),
            CategoricalFeature(name="hour", vocab_size=26, group="context"),
        ),
        numeric=(
            NumericFeature(
                name="age", min_value=7.0, max_value=73.0, is_integer=True, group="user"
            ),
            NumericFeature(
                name="release_year",
                min_value=1922.0,
                max_value=1998.0,
                is_integer=True,
                quantiles=(1960.0, 1980.0, 1990.0, 1994.0, 1996.0, 1997.0),
                group="item",
            ),
        ),
        similarity=(SimilarityFeature(name="user_item_sim", group="context"),),
        sequences=(
            SequenceFeature(
                name="history",
                max_len=50,
                item_field="item_id",
                category_field="genre",
                has_similarity=True,
                group="user",
            ),
        ),
        tasks=tasks,
        user_field="user_id",
        item_field="item_id",
    )


def criteo_like_schema(max_vocab: int | None = None) -> FeatureSchema:
    """The shape of Criteo: 26 anonymous categorical fields (~1.07M ids; ``max_vocab`` caps
    each for fast tests) and 13 integer counts with train quantiles; no sequence, one task."""
    cap = max_vocab if max_vocab is not None else max(CRITEO_VOCABS)
    categorical = tuple(
        CategoricalFeature(name=f"C{i + 1}", vocab_size=max(2, min(v, cap)))
        for i, v in enumerate(CRITEO_VOCABS)
    )
    numeric = tuple(
        NumericFeature(
            name=f"I{i + 1}",
            min_value=0.0,
            max_value=float(top),
            is_integer=True,
            quantiles=_geometric_quantiles(float(top)),
        )
        for i, top in enumerate(CRITEO_NUMERIC_MAX)
    )
    return FeatureSchema(categorical=categorical, numeric=numeric, tasks=("click",))


def _geometric_quantiles(top: float) -> tuple[float, ...]:
    """Count-like quantiles: geometrically spaced boundaries in ``[1, top]``."""
    steps = torch.logspace(0.0, torch.log10(torch.tensor(top)).item(), CRITEO_NUM_QUANTILES)
    return tuple(sorted({float(round(s)) for s in steps.tolist()}))


def random_batch(
    schema: FeatureSchema, batch_size: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A valid Batch for ``schema`` (every column, dtype and shape of the contract)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g, b = generator, batch_size
    batch: dict[str, torch.Tensor] = {}
    for c in schema.categorical:
        if c.multi_valued:
            lengths_B = torch.randint(0, c.max_len + 1, (b,), generator=g)
            lengths_B[0] = 0
            batch[c.name] = _padded_ids(c.vocab_size, lengths_B, c.max_len, g)
        else:
            batch[c.name] = torch.randint(OOV_INDEX, c.vocab_size, (b,), generator=g)
    for n in schema.numeric:
        values_B = n.min_value + torch.rand(b, generator=g) * (n.max_value - n.min_value)
        batch[n.name] = values_B.round() if n.is_integer else values_B
    for s in schema.similarity:
        batch[s.name] = torch.rand(b, generator=g) * 2.0 - 1.0
    for q in schema.sequences:
        batch.update(_random_sequence(schema, q, b, g))
    labels_BK = (torch.rand(b, schema.num_tasks, generator=g) < POSITIVE_RATE).float()
    if b >= 2:
        labels_BK[0], labels_BK[1] = 0.0, 1.0
    batch[LABELS] = labels_BK
    low, high = WEIGHT_RANGE
    batch[WEIGHT] = (
        low + torch.rand(b, generator=g) * (high - low) if schema.has_weight else torch.ones(b)
    )
    batch[EXPOSURE] = (
        torch.randint(0, MAX_EXPOSURE + 1, (b,), generator=g).float()
        if schema.has_exposure
        else torch.zeros(b)
    )
    return batch


def _padded_ids(
    vocab_size: int, lengths_B: torch.Tensor, width: int, g: torch.Generator
) -> torch.Tensor:
    """Random ids ``[B, width]`` in ``[OOV, vocab)``, padding after each row's length."""
    ids = torch.randint(OOV_INDEX, vocab_size, (lengths_B.shape[0], width), generator=g)
    real = torch.arange(width).unsqueeze(0) < lengths_B.unsqueeze(1)
    return ids.masked_fill(~real, PAD_INDEX)


def _random_sequence(
    schema: FeatureSchema, q: SequenceFeature, b: int, g: torch.Generator
) -> dict[str, torch.Tensor]:
    lengths_B = torch.randint(0, q.max_len + 1, (b,), generator=g)
    lengths_B[0] = 0
    if b >= 2:
        lengths_B[1] = 1
    real_BL = torch.arange(q.max_len).unsqueeze(0) < lengths_B.unsqueeze(1)
    item_vocab = schema.categorical_by_name(q.item_field).vocab_size
    out = {
        seq_column(q.name, "item"): _padded_ids(item_vocab, lengths_B, q.max_len, g),
        seq_column(q.name, "length"): lengths_B,
    }
    # oldest first: the time before the target shrinks along the row, newest >= 0
    gaps_BL = torch.rand(b, q.max_len, generator=g) * MAX_GAP_SECONDS * real_BL
    out[seq_column(q.name, "time_delta")] = gaps_BL.flip(1).cumsum(1).flip(1) * real_BL
    if q.category_field is not None:
        vocab = schema.categorical_by_name(q.category_field).vocab_size
        out[seq_column(q.name, "category")] = _padded_ids(vocab, lengths_B, q.max_len, g)
    if q.has_similarity:
        similarity_BL = torch.rand(b, q.max_len, generator=g) * 2.0 - 1.0
        out[seq_column(q.name, "similarity")] = similarity_BL * real_BL
    return out
