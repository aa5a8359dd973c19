"""The ``torchrec`` embedding backend: every id table of one embedding set in TorchRec modules.

Where the TorchRec modules live: each ``FeatureEncoder`` built with
``model.embedding.backend="torchrec"`` owns one ``TorchRecIdTables`` (attribute ``id_tables``),
which owns one ``torchrec.FusedEmbeddingBagCollection`` (attribute ``collection``) holding a
table per categorical field of the schema (table name = field name, state-dict key
``encoders.{s}.id_tables.collection.embedding_bags.{field}.weight``, the layout of a plain
``EmbeddingBagCollection``). Every lookup of the set goes through that collection's single FBGEMM
table-batched kernel: each categorical field (multi-valued ones pooled by the set's ``pooling``),
and each behaviour position of each sequence (feature ``{sequence}.item@{l}`` /
``{sequence}.category@{l}`` on the item / category field's table, a bag of one id, so the
target and its behaviour sequence share the table).

How the optimizer is fused: the collection is built with ``optimizer_type`` / kwargs from
``FusedTableSettings`` (``model.embedding.table_*``); FBGEMM updates the rows a batch touches
inside the backward (``table_optimizer``: row-wise Adagrad, SGD or Adagrad; on CUDA also Adam),
so the tables never hold a ``.grad`` and the dense optimizer must leave them out
(``fused_table_parameters`` in ``hmoe.models.ranker``). ``fused_optimizer()`` exposes the state
(Adagrad accumulators, Adam moments) as a TorchRec ``KeyedOptimizer``.

Device: the tables are built on the CPU like the rest of the model; ``place`` (or
``place_fused_tables`` for a whole model) rebuilds the collection on a CUDA device with the same
weights, because FBGEMM chooses its kernel when the collection is built and ``Module.to`` would
move the weights without it. The lookups' output is float32 (the tables' dtype) under bf16
autocast; the dense layers after it autocast as usual.

The L2 (``table_l2``) is ours, not FBGEMM's: fbgemm-gpu-cpu 1.8.0's row-wise Adagrad ignores its
``weight_decay`` arguments. Each training forward first shrinks every row the batch touches by
``1 - 2 * table_lr * table_l2`` (a gradient step on ``table_l2 * |w_r|^2``, once per touched row
and step, however often the batch repeats the id); the fused Adagrad step then follows in the
backward. Untouched rows are never read or written, the point of the backend. When the
collection is sharded across workers (``hmoe.platform.training.sharding`` calls
``use_shards``), every rank gathers the rows the global batch touches (two ``all_gather`` per
step) and shrinks those that lie in its own shards, so a sharded step decays exactly the rows
one worker would.

Width: FBGEMM's kernels store rows in multiples of ``DIM_MULTIPLE`` floats, so a set of another
dim ``D`` keeps ``ceil(D / 4) * 4`` columns whose extra columns stay zero (never read, zero
gradient). Row-wise Adagrad averages the squared gradient over the stored width, so the lr and
eps handed to FBGEMM are scaled by ``sqrt(stored / D)``: the update then equals row-wise Adagrad
over the ``D`` real columns.

Padding: id 0 never enters the kernel (padded slots are dropped, their bags are empty and give
the zero vector, as the ``torch`` backend's zero row 0 does), so row 0 stays zero and untouched.

Legend for shape suffixes: ``B`` batch, ``M`` multi-value length, ``L`` sequence, ``D`` dim,
``N`` features of the collection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hmoe.config import ConfigError
from hmoe.models.embeddings import FusedTableSettings, Pooling, init_embedding_
from hmoe.schema import PAD_INDEX, FeatureSchema, seq_column

__all__ = [
    "DIM_MULTIPLE",
    "INSTALL_HINT",
    "TorchRecIdTables",
    "place_fused_tables",
    "require_torchrec",
]

DIM_MULTIPLE = 4  # FBGEMM's row alignment (its CPU kernels reject other widths)

INSTALL_HINT = (
    "model.embedding.backend='torchrec' needs TorchRec and FBGEMM matching torch (CPU: "
    "pip install --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0 && pip install tensordict "
    "pyre-extensions; or make venv), or set model.embedding.backend=torch"
)


def require_torchrec() -> None:
    """Raise one clear ``ConfigError`` when TorchRec / FBGEMM cannot be imported."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except (ImportError, OSError) as err:  # OSError: an FBGEMM build for another torch
        raise ConfigError(f"{INSTALL_HINT} ({type(err).__name__}: {err})") from None


def _optimizer(
    settings: FusedTableSettings, width_ratio: float
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The TorchRec optimizer type and kwargs that FBGEMM fuses into the backward
    (``width_ratio``: stored / real columns, see the module docstring). Element-wise
    optimizers (``sgd``, ``adagrad``, ``adam``) leave the always-zero alignment columns at zero
    and need no scaling."""
    from torchrec.optim import RowWiseAdagrad

    if settings.optimizer == "rowwise_adagrad":
        scale = 1.0 / math.sqrt(width_ratio)
        return RowWiseAdagrad, {"lr": settings.lr * scale, "eps": settings.eps * scale}
    if settings.optimizer == "sgd":
        return torch.optim.SGD, {"lr": settings.lr}
    if settings.optimizer == "adagrad":
        return torch.optim.Adagrad, {"lr": settings.lr, "eps": settings.eps}
    return torch.optim.Adam, {"lr": settings.lr, "eps": settings.eps}


class TorchRecIdTables(nn.Module):
    """All id tables of one embedding set in one TorchRec ``FusedEmbeddingBagCollection``.

    ``forward(batch)`` returns, for every categorical field (schema order), its token ``[B, D]``
    and, per sequence, its behaviours ``[B, L, D]`` (item plus category embedding when
    ``use_category``, zero at padding), each a fresh tensor (not a view of another).

    Args:
        schema: the dataset's feature schema.
        dim: the set's embedding dimension ``D``.
        pooling: pooling of multi-valued fields (``mean`` over non-padding ids, or ``sum``).
        init_std: normal-init standard deviation (row 0 zero), as the ``torch`` backend.
        settings: the fused optimizer of the tables and whether sequences add categories.

    Example:
        >>> from hmoe.models.testing import random_batch, tiny_schema
        >>> schema = tiny_schema()
        >>> tables = TorchRecIdTables(schema, 4, "mean", 0.01, FusedTableSettings())
        >>> tokens, behaviours = tables(random_batch(schema, 3, torch.Generator()))
        >>> len(tokens), tokens[0].shape, behaviours[0].shape
        (5, torch.Size([3, 4]), torch.Size([3, 6, 4]))
    """

    def __init__(
        self,
        schema: FeatureSchema,
        dim: int,
        pooling: Pooling,
        init_std: float,
        settings: FusedTableSettings,
    ) -> None:
        super().__init__()
        require_torchrec()
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

        self.schema, self.dim, self.use_category = schema, dim, settings.use_category
        self.decay_factor = 1.0 - 2.0 * settings.lr * settings.l2
        # set by use_shards once the collection is sharded: table -> (local rows, first row)
        self._shards: dict[str, list[tuple[torch.Tensor, int]]] | None = None
        self._shard_group: Any = None
        self.stored_dim = -(-dim // DIM_MULTIPLE) * DIM_MULTIPLE
        # per table (categorical field): the batch columns looked up in it, as
        # (column, is_sequence); the kernel's features run table by table in this order
        self._columns: dict[str, list[tuple[str, bool]]] = {
            c.name: [(c.name, False)] for c in schema.categorical
        }
        for q in schema.sequences:
            self._columns[q.item_field].append((seq_column(q.name, "item"), True))
            if q.category_field is not None and self.use_category:
                self._columns[q.category_field].append((seq_column(q.name, "category"), True))
        max_len = {seq_column(q.name, k): q.max_len for q in schema.sequences for k in _SEQ_KINDS}
        self._max_len = max_len
        self._offsets = self._feature_offsets()
        pool = PoolingType.MEAN if pooling == "mean" else PoolingType.SUM
        tables = [
            EmbeddingBagConfig(
                num_embeddings=c.vocab_size,
                embedding_dim=self.stored_dim,
                name=c.name,
                feature_names=[
                    f"{column}@{position}"
                    for column, is_seq in self._columns[c.name]
                    for position in (range(max_len[column]) if is_seq else [0])
                ],
                pooling=pool,
            )
            for c in schema.categorical
        ]
        self._table_configs = tables
        self._optimizer_name = settings.optimizer
        self._optimizer_type, self._optimizer_kwargs = _optimizer(settings, self.stored_dim / dim)
        self.collection = self._make_collection(torch.device("cpu"))
        with torch.no_grad():
            for c in schema.categorical:
                self.collection.embedding_bags[c.name].weight.zero_()
                init_embedding_(self.table(c.name), init_std, PAD_INDEX)

    def _make_collection(self, device: torch.device) -> Any:
        """A fresh ``FusedEmbeddingBagCollection`` of these tables whose FBGEMM kernel (and its
        optimizer state) lives on ``device``: FBGEMM picks the kernel when it is built."""
        from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

        try:
            return FusedEmbeddingBagCollection(
                tables=self._table_configs,
                optimizer_type=self._optimizer_type,
                optimizer_kwargs=self._optimizer_kwargs,
                device=device,
            )
        except AssertionError as err:  # FBGEMM's way of saying "not on this device"
            raise ConfigError(
                f"model.embedding.table_optimizer={self._optimizer_name!r} on {device.type}: "
                f"{err or 'FBGEMM has no such kernel there'}"
            ) from None

    @property
    def device(self) -> torch.device:
        """Where the tables and their kernel live."""
        return self.collection.embedding_bags[self.schema.categorical[0].name].weight.device

    @torch.no_grad()
    def place(self, device: torch.device) -> None:
        """Move the tables to ``device`` by rebuilding the collection there with the same
        weights (``Module.to`` would move the weights but leave FBGEMM's kernel behind). The
        fused optimizer starts afresh: place the tables before training, not mid-way."""
        if _same_device(self.device, device):
            return
        weights = {c.name: self.table(c.name).detach() for c in self.schema.categorical}
        self.collection = self._make_collection(device)
        for name, weight in weights.items():
            self.collection.embedding_bags[name].weight.zero_()  # the alignment columns
            self.table(name).copy_(weight)

    def _feature_offsets(self) -> dict[str, int]:
        """Column -> index of its first feature in the kernel's output ``[B, N, D]``."""
        offsets, position = {}, 0
        for columns in self._columns.values():
            for column, is_seq in columns:
                offsets[column] = position
                position += self._max_len[column] if is_seq else 1
        self.num_features = position
        return offsets

    def table(self, name: str) -> torch.Tensor:
        """The table of categorical field ``name`` ``[V, D]``: a view of the kernel's own
        storage (without the alignment columns)."""
        return self.collection.embedding_bags[name].weight[:, : self.dim]

    def fused_optimizer(self) -> Any:
        """The fused optimizer (a TorchRec ``KeyedOptimizer``: state, lr, state_dict)."""
        return self.collection.fused_optimizer()

    def _features(self, batch: Mapping[str, torch.Tensor]) -> Any:
        """The ``KeyedJaggedTensor`` of every lookup, padding ids dropped; in training, each
        table's touched rows decayed first (the L2, see the module docstring)."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        decay = self.decay_factor != 1.0 and self.training and torch.is_grad_enabled()
        if decay:
            self._decay(
                {
                    table: _touched_rows([_column(batch, column) for column, _ in columns])
                    for table, columns in self._columns.items()
                }
            )
        keys, slots, counts = [], [], []
        for columns in self._columns.values():
            for column, is_seq in columns:
                ids = _column(batch, column)
                if is_seq:  # [B, L] -> L features of one-id bags, position-major
                    ids_LB1 = ids.t().unsqueeze(-1)
                    keys += [f"{column}@{p}" for p in range(ids.shape[1])]
                    slots.append(ids_LB1.reshape(-1))
                    counts.append((ids_LB1 != PAD_INDEX).reshape(-1))
                    continue
                ids_BM = ids.unsqueeze(1) if ids.dim() == 1 else ids
                keys.append(f"{column}@0")
                slots.append(ids_BM.reshape(-1))
                counts.append((ids_BM != PAD_INDEX).sum(dim=1))
        values = torch.cat(slots)
        lengths = torch.cat([c.to(torch.int32) for c in counts])
        return KeyedJaggedTensor(keys=keys, values=values[values != PAD_INDEX], lengths=lengths)

    def use_shards(self, shards: Mapping[str, list[tuple[torch.Tensor, int]]], group: Any) -> None:
        """Decay through this rank's shards from now on: per table, each local piece
        ``[rows, columns]`` (a view of the sharded kernel's weights) and the global index of its
        first row; ``group``: the process group whose ranks share the global batch."""
        self._shards = {name: list(shards.get(name, [])) for name in self._columns}
        self._shard_group = group

    @torch.no_grad()
    def _decay(self, rows: dict[str, torch.Tensor]) -> None:
        """Shrink each table's ``rows`` (unique, no padding) by ``decay_factor``; sharded: the
        rows any rank's batch touches, in this rank's pieces."""
        if self._shards is None:
            for table, touched in rows.items():
                weight = self.collection.embedding_bags[table].weight
                weight.index_copy_(0, touched, weight.index_select(0, touched) * self.decay_factor)
            return
        for table, touched in self._gather_rows(rows).items():
            for piece, first in self._shards[table]:
                local = touched[(touched >= first) & (touched < first + piece.shape[0])] - first
                piece.index_copy_(0, local, piece.index_select(0, local) * self.decay_factor)

    def _gather_rows(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The union over the group's ranks of each table's touched rows (one flat id space,
        table after table, so two ``all_gather`` serve every table)."""
        import torch.distributed as dist

        starts, start = {}, 0
        for c in self.schema.categorical:
            starts[c.name], start = start, start + c.vocab_size
        flat = torch.cat([rows[name] + starts[name] for name in self._columns])
        world = dist.get_world_size(self._shard_group)
        size = torch.tensor([flat.numel()], device=flat.device)
        sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=self._shard_group)
        padded = flat.new_full((int(max(sizes).item()),), -1)  # all_gather needs equal sizes
        padded[: flat.numel()] = flat
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=self._shard_group)
        every = torch.cat([p[: int(n.item())] for p, n in zip(parts, sizes, strict=True)]).unique()
        return {
            c.name: every[(every >= starts[c.name]) & (every < starts[c.name] + c.vocab_size)]
            - starts[c.name]
            for c in self.schema.categorical
        }

    def forward(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per categorical field its token ``[B, D]``; per sequence its behaviours ``[B, L, D]``."""
        for q in self.schema.sequences:
            length = _column(batch, seq_column(q.name, "item")).shape[1]
            if length != q.max_len:
                raise ValueError(f"sequence {q.name!r}: expected length {q.max_len}, got {length}")
        features = self._features(batch)
        pooled_BND = _in_feature_order(self.collection(features), features.keys())
        pooled_BND = pooled_BND.unflatten(1, (-1, self.stored_dim))[..., : self.dim]
        # one unbind, never an index or slice per field: each of those backwards zero-fills a
        # whole [B, N, D] gradient (26 Criteo fields: 3x the cost of the lookups themselves)
        features = pooled_BND.unbind(1)
        tokens = [features[self._offsets[c.name]] for c in self.schema.categorical]
        behaviours = []
        for q in self.schema.sequences:
            start = self._offsets[seq_column(q.name, "item")]
            items_BLD = torch.stack(features[start : start + q.max_len], dim=1)
            if q.category_field is not None and self.use_category:
                start = self._offsets[seq_column(q.name, "category")]
                items_BLD = items_BLD.add_(torch.stack(features[start : start + q.max_len], dim=1))
            behaviours.append(items_BLD)
        return tokens, behaviours


_SEQ_KINDS = ("item", "category")


def _in_feature_order(pooled: Any, keys: list[str]) -> torch.Tensor:
    """The pooled features ``[B, N * D]`` in ``keys`` order: a collection sharded across workers
    (``hmoe.platform.training.sharding``) returns them grouped by sharding type, not in input
    order."""
    if pooled.keys() == keys:
        return pooled.values()
    by_key = pooled.to_dict()
    return torch.cat([by_key[k] for k in keys], dim=1)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are one device when 0 is the current one."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (
        b.index if b.index is not None else current
    )


def place_fused_tables(model: nn.Module, device: torch.device) -> None:
    """Every ``torchrec``-backend table set of ``model`` rebuilt on ``device`` (a no-op where
    they already are, as on CPU); the rest of the model moves with ``Module.to`` as usual."""
    for tables in model.modules():
        if isinstance(tables, TorchRecIdTables):
            tables.place(device)


def _touched_rows(ids: list[torch.Tensor]) -> torch.Tensor:
    """The distinct non-padding ids of ``ids`` (each row decays once per step)."""
    rows = torch.cat([i.reshape(-1) for i in ids]).unique()
    return rows[rows != PAD_INDEX]


def _column(batch: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in batch:
        raise ValueError(f"the batch has no column {name!r} that the schema declares")
    return batch[name]
