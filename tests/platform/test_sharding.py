"""TorchRec sharding on gloo (CPU): 2 sharded ranks train like 1 rank; sharded checkpoints restore.

The model is a tiny TorchRec one (a bag collection and a sequence collection plus an MLP), so
these checks need no Ray: two real processes in a gloo group, spawned by torch.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

torchrec = pytest.importorskip("torchrec")

STEPS = 4
GLOBAL_BATCH = 8
SAVE_AFTER = 2  # steps before the checkpoint
DIM = 8
# table -> (rows, allowed sharding types): every kind the CPU sharders offer appears once
BAG_TABLES = {
    "big": (400, ["table_wise"]),
    "wide": (300, ["column_wise"]),
    "small": (10, ["data_parallel"]),
}
SEQ_TABLES = {"item": (500, ["row_wise"])}
SEQ_LEN = 3


class TinyRanker(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from torchrec import (
            EmbeddingBagCollection,
            EmbeddingBagConfig,
            EmbeddingCollection,
            EmbeddingConfig,
        )

        self.bags = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(name=n, num_embeddings=v, embedding_dim=DIM, feature_names=[n])
                for n, (v, _) in BAG_TABLES.items()
            ]
        )
        self.seq = EmbeddingCollection(
            tables=[
                EmbeddingConfig(name=n, num_embeddings=v, embedding_dim=DIM, feature_names=[n])
                for n, (v, _) in SEQ_TABLES.items()
            ]
        )
        self.mlp = nn.Sequential(
            nn.Linear(DIM * (len(BAG_TABLES) + 1), 16), nn.ReLU(), nn.Linear(16, 1)
        )

    def forward(self, ids_BF: torch.Tensor, seq_BL: torch.Tensor) -> torch.Tensor:
        from torchrec import KeyedJaggedTensor

        B = ids_BF.shape[0]
        bags = KeyedJaggedTensor.from_lengths_sync(
            keys=list(BAG_TABLES),
            values=ids_BF.t().reshape(-1),
            lengths=torch.ones(B * len(BAG_TABLES), dtype=torch.int32),
        )
        seq = KeyedJaggedTensor.from_lengths_sync(
            keys=list(SEQ_TABLES),
            values=seq_BL.reshape(-1),
            lengths=torch.full((B,), SEQ_LEN, dtype=torch.int32),
        )
        seq_BD = self.seq(seq)["item"].values().view(B, SEQ_LEN, DIM).mean(dim=1)
        return self.mlp(torch.cat([self.bags(bags).values(), seq_BD], dim=1)).squeeze(-1)


class Wrapper(nn.Module):
    """The loss around the model, as ``TrainWrapper`` is in hmoe."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids_BF, seq_BL, y_B):
        return nn.functional.binary_cross_entropy_with_logits(self.model(ids_BF, seq_BL), y_B)


def _data():
    g = torch.Generator().manual_seed(7)
    ids = torch.stack(
        [torch.randint(0, v, (STEPS, GLOBAL_BATCH), generator=g) for v, _ in BAG_TABLES.values()],
        dim=-1,
    )
    seq = torch.randint(0, SEQ_TABLES["item"][0], (STEPS, GLOBAL_BATCH, SEQ_LEN), generator=g)
    y = torch.randint(0, 2, (STEPS, GLOBAL_BATCH), generator=g).float()
    return ids, seq, y


def _build(seed: int) -> tuple[nn.Module, nn.Module]:
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    torch.manual_seed(seed)
    model = TinyRanker()
    wrapper = Wrapper(model)
    tables = [*model.bags.parameters(), *model.seq.parameters()]
    apply_optimizer_in_backward(RowWiseAdagrad, tables, {"lr": 0.1})
    return model, wrapper


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from hmoe.platform.training.sharding import ShardedTraining

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    constraints = {
        n: ParameterConstraints(sharding_types=t, min_partition=DIM // 2)
        for n, (_, t) in (BAG_TABLES | SEQ_TABLES).items()
    }

    def start(seed: int):
        model, wrapper = _build(seed)
        sharded = ShardedTraining(model, wrapper, torch.device("cpu"), rank, constraints)
        dense = [p for _, p in in_backward_optimizer_filter(sharded.dmp.named_parameters())]
        return sharded, torch.optim.SGD(dense, lr=0.1)

    def step(sharded, optimizer, s: int) -> float:
        lo, hi = rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world
        loss = sharded.dmp(ids[s, lo:hi], seq[s, lo:hi], y[s, lo:hi])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        return float(mean) / world

    from hmoe.platform.training.runtime import gather_values

    gathered = gather_values(rank + 0.5, world)  # the per-worker peak memory's collective
    ids, seq, y = _data()
    sharded, optimizer = start(seed=0)
    losses = [step(sharded, optimizer, s) for s in range(SAVE_AFTER)]
    folder = Path(out) / "checkpoint"
    sharded.save(folder)  # in real runs: every rank's own folder, merged by Ray Train
    dense_state = optimizer.state_dict()
    losses += [step(sharded, optimizer, s) for s in range(SAVE_AFTER, STEPS)]
    sharded.sync_local()
    # a fresh group of shards from another seed, restored from the checkpoint
    restored, restored_optimizer = start(seed=1)
    restored.load(folder)
    restored_optimizer.load_state_dict(dense_state)
    resumed = [step(restored, restored_optimizer, s) for s in range(SAVE_AFTER, STEPS)]
    restored.sync_local()
    if rank == 0:
        torch.save(
            {
                "losses": losses,
                "resumed": resumed,
                "state": sharded.local_wrapper.state_dict(),
                "restored_state": restored.local_wrapper.state_dict(),
                "plan": sharded.plan_json(),
                "gathered": gathered,
            },
            Path(out) / f"world{world}.pt",
        )
    dist.barrier()  # no rank closes its gloo pairs while another still uses them
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, out: Path) -> dict:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, _free_port(), str(out)), nprocs=world)
    return torch.load(out / f"world{world}.pt", weights_only=False)


def test_two_sharded_ranks_train_like_one_and_checkpoints_restore(tmp_path):
    import json

    two = _run(2, tmp_path / "two")
    one = _run(1, tmp_path / "one")
    assert two["gathered"] == [0.5, 1.5] and one["gathered"] == [0.5]
    plan = json.loads(two["plan"])
    kinds = {t: p["sharding_type"] for tables in plan.values() for t, p in tables.items()}
    assert kinds == {t: c[0] for t, (_, c) in (BAG_TABLES | SEQ_TABLES).items()}
    assert len(plan["model.seq"]["item"]["shards"]) == 2  # the rows split over the 2 ranks
    assert len(plan["model.bags"]["wide"]["shards"]) == 2  # the columns too
    # the same global batches: the same losses and weights as one unsharded rank
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    for key, value in one["state"].items():
        torch.testing.assert_close(two["state"][key], value, rtol=1e-5, atol=1e-6)
    # resuming from the sharded checkpoint retraces the uninterrupted run exactly
    assert two["resumed"] == two["losses"][SAVE_AFTER:]
    for key, value in two["state"].items():
        torch.testing.assert_close(two["restored_state"][key], value, rtol=0, atol=0)


HMOE_STEPS = 3
TABLE_L2 = 0.5  # with the default table_lr 0.01: a decay factor of 0.99


def _hmoe(seed: int):
    """The ``hmoe`` preset on the tiny schema with the ``torchrec`` backend, its wrapper, the
    loop's dense optimizer (built after sharding) and the global batches."""
    import dataclasses

    from hmoe.models.losses import LossConfig, TrainWrapper
    from hmoe.models.testing import random_batch, tiny_schema
    from hmoe.models.torchrec_tables import TorchRecIdTables
    from hmoe.models.zoo import build, get_preset

    schema = tiny_schema()
    cfg = get_preset("hmoe").model
    # a strong touched-row L2 (each touched row shrinks by 1% a step): the ranks must decay
    # the rows the whole global batch touches, in their own shards
    embedding = dataclasses.replace(cfg.embedding, backend="torchrec", table_l2=TABLE_L2)
    cfg = dataclasses.replace(cfg, embedding=embedding)
    torch.manual_seed(seed)
    model = build(cfg, schema)
    # eval mode: no dropout, whose random masks differ between 2 processes and 1; the tables
    # in training mode, the only one in which their L2 applies
    wrapper = TrainWrapper(model, LossConfig(), tasks=schema.tasks).eval()
    for tables in model.modules():
        if isinstance(tables, TorchRecIdTables):
            tables.train()
    g = torch.Generator().manual_seed(3)
    batches = [random_batch(schema, GLOBAL_BATCH, g) for _ in range(HMOE_STEPS)]
    return model, wrapper, batches


def _hmoe_steps(module, optimizer, batches, rank: int, world: int) -> list[float]:
    import torch.distributed as dist

    losses = []
    lo, hi = rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world
    for batch in batches:
        loss, _ = module({k: v[lo:hi] for k, v in batch.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
        losses.append(float(mean) / world)
    return losses


def _hmoe_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from hmoe.platform.training.sharding import ShardedTraining
    from hmoe.platform.training.train_loop import _make_optimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, wrapper, batches = _hmoe(seed=0)
    unsharded = [m for m in model.modules() if type(m).__name__ == "FusedEmbeddingBagCollection"]
    sharded = ShardedTraining(model, wrapper, torch.device("cpu"), rank)
    # the whole tables once at most: rank 0's copy holds the unsharded ones, the others none
    if rank == 0:
        kept = [m for m in sharded.local_model.modules() if m in unsharded]
        assert len(kept) == len(unsharded) > 0
    else:
        sizes = [t.untyped_storage().size() for m in unsharded for t in m.state_dict().values()]
        assert sizes and not any(sizes)
    optimizer = _make_optimizer(sharded.dmp.module, _SETTINGS)
    losses = _hmoe_steps(sharded.dmp, optimizer, batches, rank, world)
    sharded.sync_local()
    if rank == 0:
        with torch.no_grad():  # rank 0's copy computes with the gathered tables
            logits = sharded.local_model(batches[0])
        result = {
            "losses": losses,
            "state": sharded.local_model.state_dict(),
            "plan": sharded.plan_json(),
            "logits": logits,
        }
        torch.save(result, Path(out) / "hmoe.pt")
    dist.barrier()  # no rank closes its gloo pairs while another still uses them
    dist.destroy_process_group()


def _settings():
    from hmoe.platform.experiment import TrainConfig

    return TrainConfig(
        epochs=1, lr=0.01, weight_decay=0.0, optimizer="adam", lr_schedule="constant",
        warmup_steps=0, grad_clip_norm=None, early_stopping_metric="val_auc",
        early_stopping_patience=0, use_bf16=False, seed=0, monitor=None,
    )  # fmt: skip


_SETTINGS = _settings()


def test_sharded_hmoe_model_on_two_ranks_trains_like_the_unsharded_one(tmp_path):
    """The ``hmoe`` preset with ``torchrec`` tables (FusedEmbeddingBagCollection): 2 sharded
    gloo ranks, half the global batch each, against one process without TorchRec's sharding."""
    import torch.multiprocessing as mp

    from hmoe.platform.training.train_loop import _make_optimizer

    mp.spawn(_hmoe_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    two = torch.load(tmp_path / "hmoe.pt", weights_only=False)
    model, wrapper, batches = _hmoe(seed=0)
    one = _hmoe_steps(wrapper, _make_optimizer(wrapper, _SETTINGS), batches, 0, 1)
    assert "table_wise" in two["plan"] or "column_wise" in two["plan"]
    assert "data_parallel" not in two["plan"]  # see sharding.fused_table_constraints
    torch.testing.assert_close(two["losses"], one, rtol=1e-5, atol=1e-6)
    assert two["losses"][0] != two["losses"][-1]  # it did train
    # Adam turns the all-reduce's last-bit differences of near-zero gradients into ~1e-6 moves
    for key, value in model.state_dict().items():
        torch.testing.assert_close(two["state"][key], value, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(two["logits"], model(batches[0]), rtol=1e-4, atol=1e-5)
