"""Where the training loop runs: standalone (one process, torch only) or a Ray Train worker.

The loop in ``train_loop`` is written once against the small ``Runtime`` interface below, so the
same function trains in a unit test, in ``benchmarks/gpu_check.py`` on a bare GPU machine, and
on every worker of a ``TorchTrainer`` (DDP, sharded streaming input, checkpoints, reports).
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from hmoe.platform.data.batches import Batch, iter_minibatches

__all__ = ["CHECKPOINT_FILE", "RayRuntime", "Runtime", "StandaloneRuntime", "gather_values"]

CHECKPOINT_FILE = "state.pt"
FAULT_INJECTION_DELAY_S = 10.0


class Runtime(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def train_batches(self, epoch: int) -> Iterator[Batch]: ...

    def prepare(self, module: nn.Module) -> nn.Module: ...

    def load_checkpoint(
        self, read_shards: Callable[[Path], None] | None = None
    ) -> dict[str, Any] | None: ...

    def report(
        self,
        metrics: Mapping[str, float],
        state: dict[str, Any] | None,
        write_shards: Callable[[Path], None] | None = None,
    ) -> None: ...

    def agree(self, flag: bool) -> bool: ...

    def gather(self, value: float) -> list[float]: ...

    def maybe_fail(self, step: int, fail_at_step: int | None, resumed: bool) -> None: ...


def gather_values(value: float, world_size: int) -> list[float]:
    """Every rank's ``value``, in rank order, on every rank of the default process group (a
    collective; without a group, ``[value]``)."""
    if world_size == 1 or not torch.distributed.is_initialized():
        return [value]
    values: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(values, value)
    return [float(v) for v in values]


class StandaloneRuntime:
    """One process, no Ray: in-memory train data, checkpoints in an optional local folder.

    Args:
        train_data: the whole train split as one Batch (shuffled per epoch by ``seed``).
        batch_size: rows per step.
        seed: shuffling seed (epoch ``e`` uses ``seed + e``).
        device: where the model and batches go.
        checkpoint_dir: keep the latest checkpoint here (``None``: no checkpoints).
        on_report: called with every epoch's metrics (progress printing, tests).
    """

    rank = 0
    world_size = 1

    def __init__(
        self,
        train_data: Batch,
        batch_size: int,
        seed: int,
        device: torch.device,
        checkpoint_dir: Path | None = None,
        on_report: Callable[[Mapping[str, float]], None] | None = None,
    ) -> None:
        self.train_data = train_data
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.on_report = on_report
        self.reports: list[dict[str, float]] = []

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        return iter_minibatches(self.train_data, self.batch_size, seed=self.seed + epoch)

    def prepare(self, module: nn.Module) -> nn.Module:
        return module.to(self.device)

    def load_checkpoint(
        self, read_shards: Callable[[Path], None] | None = None
    ) -> dict[str, Any] | None:
        del read_shards  # one process never shards its tables
        if self.checkpoint_dir is None or not (self.checkpoint_dir / CHECKPOINT_FILE).is_file():
            return None
        return torch.load(self.checkpoint_dir / CHECKPOINT_FILE, weights_only=False)

    def report(
        self,
        metrics: Mapping[str, float],
        state: dict[str, Any] | None,
        write_shards: Callable[[Path], None] | None = None,
    ) -> None:
        del write_shards  # one process never shards its tables
        self.reports.append(dict(metrics))
        if state is not None and self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint_dir / f".{CHECKPOINT_FILE}.tmp"
            torch.save(state, tmp)
            tmp.replace(self.checkpoint_dir / CHECKPOINT_FILE)
        if self.on_report is not None:
            self.on_report(metrics)

    def agree(self, flag: bool) -> bool:
        return flag

    def gather(self, value: float) -> list[float]:
        return [value]

    def maybe_fail(self, step: int, fail_at_step: int | None, resumed: bool) -> None:
        del step, fail_at_step, resumed  # fault injection targets Ray workers only


class RayRuntime:
    """A Ray Train V2 worker: sharded streaming train input, DDP, checkpoints via ``report``.

    Args:
        collate: turns an Arrow batch into a Batch (every column with its dtype).
        batch_size: rows per step on this worker.
        seed: local shuffle seed (epoch ``e`` uses ``seed + e``).
        shuffle_buffer_rows: rows in the local shuffle buffer (0: no shuffling).
    """

    def __init__(self, collate: Any, batch_size: int, seed: int, shuffle_buffer_rows: int) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.collate = collate
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self._shard = ray.train.get_dataset_shard("train")

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        shuffle = self.shuffle_buffer_rows > 0
        batches = self._shard.iter_torch_batches(
            batch_size=self.batch_size,
            collate_fn=self.collate,
            local_shuffle_buffer_size=self.shuffle_buffer_rows if shuffle else None,
            local_shuffle_seed=self.seed + epoch if shuffle else None,
            # every rank must take the same number of DDP steps
            drop_last=self.world_size > 1,
        )
        for batch in batches:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def prepare(self, module: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(module)

    def load_checkpoint(
        self, read_shards: Callable[[Path], None] | None = None
    ) -> dict[str, Any] | None:
        """Rank 0's state (every rank reads it) and, with ``read_shards``, this rank's shards."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            if read_shards is not None:
                read_shards(Path(folder))
            return torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)

    def report(
        self,
        metrics: Mapping[str, float],
        state: dict[str, Any] | None,
        write_shards: Callable[[Path], None] | None = None,
    ) -> None:
        """Report the epoch; rank 0 passes ``state``, and with sharded tables every rank passes
        ``write_shards`` (Ray Train gathers every rank's files into one checkpoint folder)."""
        import ray.train

        # a barrier: every rank reports once per epoch; only rank 0's metrics are kept
        if state is None and write_shards is None:
            ray.train.report(dict(metrics))
            return
        with tempfile.TemporaryDirectory() as folder:
            if state is not None:
                torch.save(state, Path(folder) / CHECKPOINT_FILE)
            if write_shards is not None:
                write_shards(Path(folder))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(dict(metrics), checkpoint=checkpoint)

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision (early stopping) for every rank."""
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return flag
        box = [flag]
        torch.distributed.broadcast_object_list(box, src=0)
        return bool(box[0])

    def gather(self, value: float) -> list[float]:
        """Every rank's ``value``, in rank order, on every rank."""
        return gather_values(value, self.world_size)

    def maybe_fail(self, step: int, fail_at_step: int | None, resumed: bool) -> None:
        """Fault injection: the last rank kills itself once, on a run not resumed yet."""
        if fail_at_step is None or resumed or self.rank != self.world_size - 1:
            return
        if step == fail_at_step:
            # Train V2's controller registers a reported checkpoint asynchronously; dying right
            # after a report can lose it (on a loaded box the restart then has nothing to
            # resume from), so the injected crash waits until the report has been picked up.
            time.sleep(FAULT_INJECTION_DELAY_S)
            os.kill(os.getpid(), signal.SIGKILL)
