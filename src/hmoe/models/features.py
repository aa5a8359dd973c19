"""The feature encoder of ONE embedding set: every field of the schema becomes ``D``-dim token(s).

Token order (``field_names``): categorical fields, numeric fields, similarity fields, then the
token(s) of each sequence, each kind in schema order. A multi-embedding model builds one
``FeatureEncoder`` per embedding set (each owns all its tables, so sets never share a
parameter and may differ in ``D``).

Legend for shape suffixes: ``B`` batch, ``F`` fields (tokens), ``L`` sequence, ``D`` dim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.models.embeddings import FieldEmbedding, FusedTableSettings, Pooling
from hmoe.models.mnse import NumericEncoder, NumericEncoderConfig
from hmoe.models.sequence import SequenceEncoder, SequenceEncoderConfig
from hmoe.models.similarity import SimilarityEncoder, SimilarityEncoderConfig
from hmoe.schema import FeatureSchema, SequenceFeature, seq_column

__all__ = ["FeatureEncoder", "FeatureEncoderConfig"]


@config
class FeatureEncoderConfig(Config):
    """How one embedding set encodes the schema's fields.

    ``pooling`` pools multi-valued categorical fields; ``init_std`` is the normal-init standard
    deviation of every table of the set (ids, MNSE digits, similarity buckets, TIM/SASRec
    positions); ``numeric`` / ``similarity`` / ``sequence`` configure those encoders.
    """

    pooling: Pooling = "mean"
    init_std: float = 0.01
    numeric: NumericEncoderConfig = NumericEncoderConfig()
    similarity: SimilarityEncoderConfig = SimilarityEncoderConfig()
    sequence: SequenceEncoderConfig = SequenceEncoderConfig()

    def __post_init__(self) -> None:
        if not self.init_std > 0.0:
            raise ConfigError(f"init_std must be > 0, got {self.init_std}")


class FeatureEncoder(nn.Module):
    """One embedding set: a Batch -> tokens ``[B, F, D]``.

    Every categorical field (multi-valued ones pooled), numeric field (MNSE or bucket table),
    similarity field (bucket table) gives one token; each sequence gives its encoder's
    ``num_tokens`` tokens, its behaviours and target embedded with this set's item / category
    tables (plus a per-sequence similarity side table).

    The id tables are ``nn.Embedding`` modules (``categorical``, the ``torch`` backend) or, with
    ``fused_tables``, one TorchRec collection (``id_tables``, see
    ``hmoe.models.torchrec_tables``); both give the same tokens from the same weights.

    Args:
        config: pooling, init and the numeric / similarity / sequence encoder configs.
        schema: the dataset's feature schema (fields, vocabularies, numeric statistics).
        embedding_dim: this set's dimension ``D``.
        fused_tables: ``None`` for the ``torch`` backend; else the ``torchrec`` backend's
            fused optimizer of the id tables.

    Example:
        >>> from hmoe.models.testing import random_batch, tiny_schema
        >>> schema = tiny_schema()
        >>> encoder = FeatureEncoder(FeatureEncoderConfig(), schema, embedding_dim=8)
        >>> batch = random_batch(schema, 4, torch.Generator().manual_seed(0))
        >>> encoder(batch).shape == (4, encoder.num_fields, 8)
        True
    """

    def __init__(
        self,
        config: FeatureEncoderConfig,
        schema: FeatureSchema,
        embedding_dim: int,
        fused_tables: FusedTableSettings | None = None,
    ) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.schema = schema
        self.embedding_dim = embedding_dim
        self.sequence_config = config.sequence
        d, std = embedding_dim, config.init_std
        self.id_tables: nn.Module | None = None
        if fused_tables is None:
            self.categorical = nn.ModuleList(
                FieldEmbedding(c.vocab_size, d, config.pooling, std) for c in schema.categorical
            )
        else:
            # imported here: the torch backend must not need TorchRec installed
            from hmoe.models.torchrec_tables import TorchRecIdTables

            self.categorical = nn.ModuleList()
            settings = dataclasses.replace(fused_tables, use_category=config.sequence.use_category)
            self.id_tables = TorchRecIdTables(schema, d, config.pooling, std, settings)
        self.numeric = nn.ModuleList(
            NumericEncoder(n, d, config.numeric, std) for n in schema.numeric
        )
        self.similarity = nn.ModuleList(
            SimilarityEncoder(d, config.similarity, std) for _ in schema.similarity
        )
        self.sequences = nn.ModuleList(
            SequenceEncoder(config.sequence, d, q.max_len, std) for q in schema.sequences
        )
        self.side_similarity = nn.ModuleDict(
            {
                str(i): SimilarityEncoder(d, config.similarity, std)
                for i, q in enumerate(schema.sequences)
                if q.has_similarity and config.sequence.use_similarity
            }
        )
        self._categorical_index = {c.name: i for i, c in enumerate(schema.categorical)}
        self._dense_token_columns = tuple(f.name for f in (*schema.numeric, *schema.similarity))
        names, groups = self._describe_fields()
        if not names:
            raise ValueError("the schema has no feature to encode")
        self.field_names: tuple[str, ...] = names
        self.field_groups: tuple[str, ...] = groups
        self.num_fields: int = len(names)

    def _describe_fields(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        s = self.schema
        names = [f.name for f in (*s.categorical, *s.numeric, *s.similarity)]
        groups = [f.group for f in (*s.categorical, *s.numeric, *s.similarity)]
        for q, encoder in zip(s.sequences, self.sequences, strict=True):
            for suffix in encoder.token_suffixes:
                names.append(f"{q.name}.{suffix}" if suffix else q.name)
                groups.append(q.group)
        return tuple(names), tuple(groups)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """A Batch (see ``hmoe.schema``) -> tokens ``[B, F, D]`` in ``field_names`` order."""
        id_tokens, behaviours = self._id_lookups(batch)
        tokens = id_tokens + [
            encoder(_column(batch, name)) for name, encoder in self._dense_token_fields()
        ]
        tokens_BFD = torch.stack(tokens, dim=1) if tokens else None
        sequence_tokens = [
            encoder(*self._sequence_inputs(batch, i, id_tokens, behaviours[i]))
            for i, encoder in enumerate(self.sequences)
        ]
        parts = ([tokens_BFD] if tokens_BFD is not None else []) + sequence_tokens
        return torch.cat(parts, dim=1)

    def attention_weights(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per sequence name, its encoder's pooling weights over the history ``[B, L]``."""
        id_tokens, behaviours = self._id_lookups(batch)
        return {
            q.name: encoder.attention_weights(
                *self._sequence_inputs(batch, i, id_tokens, behaviours[i])
            )
            for i, (q, encoder) in enumerate(
                zip(self.schema.sequences, self.sequences, strict=True)
            )
        }

    def behaviour_weights(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per sequence name, each input behaviour's share of its interest token ``[B, L]``
        (``SequenceEncoder.behaviour_weights``)."""
        id_tokens, behaviours = self._id_lookups(batch)
        return {
            q.name: encoder.behaviour_weights(
                *self._sequence_inputs(batch, i, id_tokens, behaviours[i])
            )
            for i, (q, encoder) in enumerate(
                zip(self.schema.sequences, self.sequences, strict=True)
            )
        }

    def embedding_tables(self) -> dict[str, torch.Tensor]:
        """Per categorical / numeric / similarity field, the (detached) matrix of the token of
        every value: the id table ``[V, D]`` (row 0 = padding, always zero), the numeric
        encoder's token of every level ``[levels, D]``, the similarity bucket table
        ``[buckets, D]``. Sequences reuse their item / category fields' tables."""
        with torch.no_grad():
            ids = {c.name: self.id_table(c.name).detach().clone() for c in self.schema.categorical}
            return ids | {
                name: encoder.token_table().detach().clone()
                for name, encoder in self._dense_token_fields()
            }

    def id_table(self, name: str) -> torch.Tensor:
        """The id table ``[V, D]`` of categorical field ``name`` (row 0 = padding), either
        backend; the live weight, not a copy."""
        if self.id_tables is not None:
            return self.id_tables.table(name)
        return self.categorical[self._categorical_index[name]].token_table()

    def temporal_tables(self) -> dict[str, torch.Tensor]:
        """Per TIM sequence, its (detached) temporal-encoding table ``[rows, D]`` (row 0 = the
        target; then relative positions 1.. or log-interval buckets)."""
        out = {}
        for q, encoder in zip(self.schema.sequences, self.sequences, strict=True):
            table = encoder.temporal_table()
            if table is not None:
                out[q.name] = table.detach().clone()
        return out

    def _dense_token_fields(self) -> list[tuple[str, nn.Module]]:
        """(batch column, encoder) of every numeric and similarity field, in token order."""
        encoders = [*self.numeric, *self.similarity]
        return list(zip(self._dense_token_columns, encoders, strict=True))

    def _id_lookups(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every id lookup of the set: per categorical field its token ``[B, D]`` (schema
        order), per sequence its behaviours ``[B, L, D]`` (item + category), fresh tensors."""
        if self.id_tables is not None:
            return self.id_tables(batch)
        tokens = [
            encoder(_column(batch, c.name))
            for c, encoder in zip(self.schema.categorical, self.categorical, strict=True)
        ]
        behaviours = []
        for q in self.schema.sequences:
            item_table = self.categorical[self._categorical_index[q.item_field]]
            behaviours_BLD = item_table.lookup(_column(batch, seq_column(q.name, "item")))
            if q.category_field is not None and self.sequence_config.use_category:
                category_table = self.categorical[self._categorical_index[q.category_field]]
                # in place into the fresh lookup: at large B * L * D a new buffer per sum costs
                # page faults as much as the sum itself (docs/performance.md)
                behaviours_BLD = behaviours_BLD.add_(
                    category_table.lookup(_column(batch, seq_column(q.name, "category")))
                )
            behaviours.append(behaviours_BLD)
        return tokens, behaviours

    def _sequence_inputs(
        self,
        batch: Mapping[str, torch.Tensor],
        index: int,
        id_tokens: list[torch.Tensor],
        behaviours_BLD: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Behaviours ``[B, L, D]``, target ``[B, D]``, lengths ``[B]``, time deltas ``[B, L]``;
        the target is its item (+ category) field's token, looked up once for both uses."""
        q: SequenceFeature = self.schema.sequences[index]
        target_BD = id_tokens[self._categorical_index[q.item_field]]
        if q.category_field is not None and self.sequence_config.use_category:
            target_BD = target_BD + id_tokens[self._categorical_index[q.category_field]]
        if str(index) in self.side_similarity:
            side = self.side_similarity[str(index)]
            behaviours_BLD = behaviours_BLD.add_(
                side(_column(batch, seq_column(q.name, "similarity")))
            )
            target_BD = target_BD + side(torch.ones_like(target_BD[:, 0]))  # cos(t, t) = 1
        lengths_B = _column(batch, seq_column(q.name, "length"))
        time_delta_BL = _column(batch, seq_column(q.name, "time_delta"))
        return behaviours_BLD, target_BD, lengths_B, time_delta_BL


def _column(batch: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in batch:
        raise ValueError(f"the batch has no column {name!r} that the schema declares")
    return batch[name]
