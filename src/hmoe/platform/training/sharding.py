"""TorchRec model parallelism on Ray Train workers: id tables sharded, dense layers replicated.

With more than one worker and id tables held in TorchRec modules (``EmbeddingBagCollection``,
``EmbeddingCollection``, or the ``torchrec`` backend's ``FusedEmbeddingBagCollection``),
``ShardedTraining`` wraps the train module in TorchRec's ``DistributedModelParallel`` with a
plan from its ``EmbeddingShardingPlanner``: each table is placed whole on one rank
(table-wise), split by columns or rows, or replicated (data-parallel), and the rest of the
model is wrapped in DDP. gloo on CPU, NCCL on CUDA (the process group Ray Train set up); on
CUDA the tables are on FBGEMM's CUDA kernels (``run_loop`` places them before sharding) and
may also be split by rows.

What TorchRec 1.8 offers depends on the module and the device: on CPU a bag collection's table
can be data-parallel, table-wise, column-wise or table-column-wise but not row-wise (its
sharders list row-wise only for CUDA); an ``EmbeddingCollection`` table can also be row-wise.
A fused collection's table is never data-parallel here (``fused_table_constraints``).

Evaluation, early stopping's best weights, the monitor and the logged model stay as they are:
rank 0 keeps an unsharded copy of the model, and after each epoch every rank sends its pieces
of the tables into it. Memory: every worker builds the whole model once before it is sharded;
rank 0's copy then keeps those unsharded tables (so rank 0 holds the tables once, plus its
shards), and the other ranks free theirs (so they hold their shards). Checkpoints are
sharded: every rank writes its shards (weights and fused optimizer state) with
``torch.distributed.checkpoint`` into the same Ray Train checkpoint (Ray syncs the checkpoint
folder's name across ranks), and every rank of a restarted group reads back its own shards.

The ``torchrec`` backend's touched-row L2 (``table_l2``) follows the shards: each rank learns
the rows the whole global batch touches and decays those its own shards hold
(``TorchRecIdTables.use_shards``).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "PLAN_ARTIFACT",
    "ShardedTraining",
    "fused_table_constraints",
    "gather_full_state",
    "has_torchrec_tables",
    "load_full_state",
    "plan_summary",
]

PLAN_ARTIFACT = "sharding_plan.json"
GATHER_CHUNK_BYTES = 64 * 2**20  # a piece of a table travels to rank 0 in chunks of this size
SHARDS_FOLDER = "shards"  # the torch.distributed.checkpoint files inside a Ray checkpoint


def has_torchrec_tables(module: nn.Module) -> bool:
    """Whether ``module`` holds TorchRec table collections (without importing TorchRec)."""
    return bool(_table_collections(module))


def _table_collections(module: nn.Module) -> list[nn.Module]:
    """The TorchRec table collections in ``module`` (found by type name: no TorchRec import)."""
    names = {"EmbeddingBagCollection", "EmbeddingCollection", "FusedEmbeddingBagCollection"}
    return [
        m
        for m in module.modules()
        if type(m).__name__ in names and type(m).__module__.startswith("torchrec.")
    ]


def fused_table_constraints(module: nn.Module, device: torch.device) -> dict[str, Any]:
    """Planner constraints that keep every table of a ``FusedEmbeddingBagCollection`` off
    data-parallel sharding.

    TorchRec 1.8 cannot train such a table data-parallel here: its sharded module wraps the
    replicated table in a DDP built with ``device_ids=[device]``, which DDP rejects for a CPU
    device (``ValueError``), and the optimizer it fuses into that DDP is left out of
    ``fused_optimizer`` (a TODO in ``torchrec/distributed/fused_embeddingbag.py``), so its state
    would be lost at every checkpoint. Small tables therefore go table-wise instead.
    """
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

    kinds = [ShardingType.TABLE_WISE, ShardingType.COLUMN_WISE, ShardingType.TABLE_COLUMN_WISE]
    if device.type == "cuda":
        kinds += [ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE]
    allowed = [k.value for k in kinds]
    return {
        table.name: ParameterConstraints(sharding_types=allowed)
        for m in module.modules()
        if isinstance(m, FusedEmbeddingBagCollection)
        for table in m.embedding_bag_configs()
    }


def _is_sharded(value: Any) -> bool:
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    return isinstance(value, ShardedTensor | DTensor)


def _local_pieces(value: Any) -> list[tuple[torch.Tensor, tuple[slice, ...]]]:
    """This rank's pieces of a sharded tensor and where each sits in the global tensor."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if isinstance(value, ShardedTensor):
        return [
            (
                shard.tensor,
                tuple(
                    slice(o, o + n)
                    for o, n in zip(
                        shard.metadata.shard_offsets, shard.metadata.shard_sizes, strict=True
                    )
                ),
            )
            for shard in value.local_shards()
        ]
    shape, offset = compute_local_shape_and_global_offset(
        value.shape, value.device_mesh, value.placements
    )
    return [(value.to_local(), tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True)))]


@torch.no_grad()
def load_full_state(sharded_state: dict[str, Any], full_state: dict[str, torch.Tensor]) -> None:
    """Copy unsharded tensors (same keys) into a sharded model's state, in place, on every rank."""
    for key, value in sharded_state.items():
        if _is_sharded(value):
            for local, where in _local_pieces(value):
                local.copy_(full_state[key][where])
        elif isinstance(value, torch.Tensor):
            value.copy_(full_state[key])


@torch.no_grad()
def gather_full_state(
    sharded_state: dict[str, Any],
    rank: int,
    device: torch.device | None = None,
    into: dict[str, torch.Tensor] | None = None,
) -> None:
    """Gather the whole state into rank 0's tensors ``into`` (same keys and shapes; ``None`` on
    the other ranks), in place; a collective. ``device``: where the shards live (NCCL moves
    only CUDA tensors); default CPU.

    Each piece goes from its rank to rank 0 alone, in chunks of ``GATHER_CHUNK_BYTES`` written
    straight into place: TorchRec's own gathers stage the whole table, or one buffer per rank
    of the largest shard's size, which at ads scale is several times the tables' memory."""
    if rank == 0 and into is None:
        raise ValueError("rank 0 needs the tensors to gather into")
    for key, value in sharded_state.items():
        target = into[key] if into is not None else None
        if target is not None and tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"{key}: shape {tuple(value.shape)}, local copy {tuple(target.shape)}")
        if _is_sharded(value):
            _gather_pieces(_local_pieces(value), target, rank, device or torch.device("cpu"))
        elif target is not None and isinstance(value, torch.Tensor):
            target.copy_(value)  # replicated: rank 0's own is everyone's


def _gather_pieces(
    pieces: list[tuple[torch.Tensor, tuple[slice, ...]]],
    target: torch.Tensor | None,
    rank: int,
    device: torch.device,
) -> None:
    """Every rank's ``pieces`` of one tensor into rank 0's ``target`` (a collective)."""
    import torch.distributed as dist

    mine = [tuple((s.start, s.stop) for s in where) for _, where in pieces]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    for owner, bounds_of in enumerate(everyone):
        for index, bounds in enumerate(bounds_of):
            where = tuple(slice(a, b) for a, b in bounds)
            if rank == owner == 0:
                assert target is not None
                target[where].copy_(pieces[index][0])
            elif rank == owner:
                _send_rows(pieces[index][0])
            elif rank == 0 and owner != 0:
                assert target is not None
                _recv_rows(target[where], owner, device)


def _chunk_rows(piece_shape: torch.Size, element_size: int) -> int:
    row_bytes = element_size * math.prod(piece_shape[1:])
    return max(1, GATHER_CHUNK_BYTES // max(row_bytes, 1))


def _send_rows(piece: torch.Tensor) -> None:
    import torch.distributed as dist

    step = _chunk_rows(piece.shape, piece.element_size())
    for start in range(0, piece.shape[0], step):
        dist.send(piece[start : start + step].contiguous(), dst=0)


def _recv_rows(place: torch.Tensor, owner: int, device: torch.device) -> None:
    import torch.distributed as dist

    step = _chunk_rows(place.shape, place.element_size())
    for start in range(0, place.shape[0], step):
        rows = place[start : start + step]
        buffer = torch.empty(rows.shape, dtype=rows.dtype, device=device)
        dist.recv(buffer, src=owner)
        rows.copy_(buffer)


def plan_summary(plan: Any) -> dict[str, dict[str, Any]]:
    """The plan as JSON-ready dicts: module path -> table -> sharding type, kernel, shards."""
    out: dict[str, dict[str, Any]] = {}
    for path, module_plan in plan.plan.items():
        tables = {}
        for table, p in module_plan.items():
            shards = []
            if p.sharding_spec is not None:
                shards = [
                    {
                        "offsets": list(s.shard_offsets),
                        "sizes": list(s.shard_sizes),
                        "placement": str(s.placement),
                    }
                    for s in p.sharding_spec.shards
                ]
            tables[table] = {
                "sharding_type": p.sharding_type,
                "compute_kernel": p.compute_kernel,
                "ranks": list(p.ranks) if p.ranks is not None else None,
                "shards": shards,
            }
        out[path] = tables
    return out


def _local_copy(
    model: nn.Module, train_module: nn.Module, collections: list[nn.Module]
) -> tuple[nn.Module, nn.Module]:
    """An unsharded copy of ``(model, train_module)`` that shares the id tables' modules (the
    TorchRec ``collections`` in them) instead of copying them.

    ``DistributedModelParallel`` then swaps those modules in ``train_module`` for sharded ones,
    so the unsharded tables become the copy's alone: rank 0 holds them once, not twice. (A
    ``copy.deepcopy`` of a ``FusedEmbeddingBagCollection`` would also give parameters that no
    longer alias its FBGEMM kernel's weights.)
    """
    shared: dict[int, Any] = {id(m): m for m in collections}
    return copy.deepcopy((model, train_module), shared)


def _release(collections: list[nn.Module]) -> None:
    """Free the unsharded tables' memory on a rank that keeps no unsharded copy: something in
    TorchRec's sharding keeps the swapped-out modules alive, and with them the whole tables."""
    for collection in collections:
        for tensor in collection.state_dict().values():
            tensor.untyped_storage().resize_(0)


def _decay_through_shards(dmp: nn.Module, group: Any) -> None:
    """Hand every ``torchrec``-backend table set its local pieces, so its touched-row L2
    (``table_l2``) decays the rows the global batch touches in this rank's shards."""
    from hmoe.models.torchrec_tables import TorchRecIdTables

    for tables in dmp.modules():
        if not isinstance(tables, TorchRecIdTables):
            continue
        shards: dict[str, list[tuple[torch.Tensor, int]]] = {}
        for key, value in tables.collection.state_dict().items():
            name = key.removeprefix("embedding_bags.").removesuffix(".weight")
            if _is_sharded(value):
                pieces = _local_pieces(value)
            else:  # replicated: the whole table on every rank
                pieces = [(value, (slice(0, value.shape[0]),))]
            shards[name] = [(local, where[0].start) for local, where in pieces if local.numel()]
        tables.use_shards(shards, group)


class ShardedTraining:
    """``train_module`` sharded across the process group, plus rank 0's unsharded copy.

    ``train_module`` is sharded in place (TorchRec swaps its table collections for sharded
    ones); its initial weights are copied into the shards, so every world size starts from the
    weights the seed gave. Call on every rank, in the same order.

    Args:
        model: the bare model inside ``train_module``.
        train_module: ``TrainWrapper(model, loss)``.
        device: this rank's device.
        rank: this rank.
        constraints: per-table ``ParameterConstraints`` for the planner, over those of
            ``fused_table_constraints`` (``None``: the planner chooses within those).
    """

    def __init__(
        self,
        model: nn.Module,
        train_module: nn.Module,
        device: torch.device,
        rank: int,
        constraints: dict[str, Any] | None = None,
    ) -> None:
        import torch.distributed as dist
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
        from torchrec.distributed.sharding_plan import get_default_sharders

        from hmoe.models.torchrec_tables import place_fused_tables

        self.rank, self.device = rank, device
        self.local_model: nn.Module | None = None
        self.local_wrapper: nn.Module | None = None
        unsharded = _table_collections(train_module)  # rank 0's copy shares them
        if rank == 0:
            self.local_model, self.local_wrapper = _local_copy(model, train_module, unsharded)
            # rank 0 evaluates its copy where the batches are (its tables on FBGEMM's kernels
            # for that device)
            place_fused_tables(self.local_model, device)
            self.local_wrapper.to(device)
        # the initial weights by reference, not copied: DMP swaps the table modules for sharded
        # ones and leaves these tensors as they are (a copy would add the whole tables again)
        full = {k: v.detach() for k, v in train_module.state_dict().items()}
        world = dist.get_world_size()
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device=device.type),
            constraints=fused_table_constraints(train_module, device) | (constraints or {}),
        )
        sharders = get_default_sharders()
        self.plan = planner.collective_plan(train_module, sharders, dist.GroupMember.WORLD)
        self.dmp = DistributedModelParallel(
            train_module, device=device, plan=self.plan, sharders=sharders
        )
        load_full_state(self.dmp.state_dict(), full)
        del full
        if rank != 0:
            _release(unsharded)
        _decay_through_shards(self.dmp, dist.GroupMember.WORLD)

    def plan_json(self) -> str:
        """The plan, readable (``plan_summary`` as indented JSON)."""
        return json.dumps(plan_summary(self.plan), indent=2, sort_keys=True)

    def sync_local(self) -> None:
        """Gather the trained weights into rank 0's unsharded copy (a collective)."""
        local = self.local_wrapper.state_dict() if self.local_wrapper is not None else None
        gather_full_state(self.dmp.state_dict(), self.rank, self.device, into=local)

    def _sharded_state(self) -> dict[str, Any]:
        return {
            "model": self.dmp.state_dict(),
            "fused_optimizer": self.dmp.fused_optimizer.state_dict(),
        }

    def save(self, folder: Path) -> None:
        """Write this rank's shards (weights and fused optimizer state) under ``folder``."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._sharded_state(), storage_writer=dcp.FileSystemWriter(folder / SHARDS_FOLDER))

    def load(self, folder: Path) -> None:
        """Read this rank's shards back from a checkpoint ``save`` wrote (on every rank)."""
        import torch.distributed.checkpoint as dcp

        state = self._sharded_state()
        dcp.load(state, storage_reader=dcp.FileSystemReader(folder / SHARDS_FOLDER))
        self.dmp.load_state_dict(state["model"])
        self.dmp.fused_optimizer.load_state_dict(state["fused_optimizer"])
