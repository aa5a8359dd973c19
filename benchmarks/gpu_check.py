"""GPU check: the standalone training loop on CUDA with bf16, synthetic data, no Ray, no MLflow.

Runs ``hmoe.platform.training.train_loop.run_loop`` (the same loop Ray Train workers run) for each
preset on random, contract-valid batches of an ml-100k-shaped (or criteo-shaped) schema and prints
training samples/s (median over the epochs after the first, which pays for warm-up and CUDA
kernel selection) and the peak GPU memory. Everything it imports is torch, numpy and hmoe
(and TorchRec/FBGEMM for the ``torchrec`` part).

The ``torchrec`` part trains the same presets with ``model.embedding.backend=torchrec``: the
id tables on FBGEMM's CUDA kernels with each ``--table-optimizers`` entry fused into the
backward, the dense layers under the same bf16 autocast, and prints step time and peak memory
beside the ``torch`` backend's. It is left out, with one line, where TorchRec is missing.
Without a CUDA device (and no ``--device``) the check prints one line and exits 0.

    python benchmarks/gpu_check.py                          # CUDA, bf16, hmoe and dcnv2
    python benchmarks/gpu_check.py --schema criteo --table-optimizers rowwise_adagrad adam
    python benchmarks/gpu_check.py --device cpu --rows 2048 --batch-size 256 --epochs 2  # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from hmoe.config import ConfigError, apply_overrides
from hmoe.models.embeddings import CPU_TABLE_OPTIMIZERS, TABLE_OPTIMIZERS
from hmoe.models.losses import TrainWrapper
from hmoe.models.testing import criteo_like_schema, ml100k_like_schema, random_batch
from hmoe.models.zoo import PRESETS, build
from hmoe.platform.experiment import TrainConfig
from hmoe.platform.training.runtime import StandaloneRuntime
from hmoe.platform.training.train_loop import EvalData, run_loop

SCHEMAS = {"ml100k": ml100k_like_schema, "criteo": lambda: criteo_like_schema(max_vocab=100_000)}
VAL_FRACTION = 8  # validation rows = rows / VAL_FRACTION


def _data(schema, rows: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    batch = random_batch(schema, rows, torch.Generator().manual_seed(seed))
    return {k: v.to(device) for k, v in batch.items()}


def check(
    preset: str, args: argparse.Namespace, device: torch.device, table_optimizer: str | None = None
) -> dict[str, float]:
    """One preset's run; ``table_optimizer``: the ``torchrec`` backend with that fused optimizer
    (``None``: the ``torch`` backend)."""
    schema = SCHEMAS[args.schema]()
    made = PRESETS[preset]()
    config = made.model
    if table_optimizer is not None:
        changes = {"embedding.backend": "torchrec", "embedding.table_optimizer": table_optimizer}
        config = apply_overrides(config, changes)
    torch.manual_seed(0)
    model = build(config, schema)
    wrapper = TrainWrapper(model, made.loss, tasks=schema.tasks, embedding_l2_by_optimizer=True)
    train = _data(schema, args.rows, 1, device)
    val = _data(schema, max(args.rows // VAL_FRACTION, 2), 2, device)
    runtime = StandaloneRuntime(train, args.batch_size, 0, device)
    settings = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        weight_decay=0.0,
        optimizer="adam",
        lr_schedule="constant",
        warmup_steps=0,
        grad_clip_norm=10.0,
        early_stopping_metric="val_auc",
        early_stopping_patience=0,
        use_bf16=not args.no_bf16,
        seed=0,
        monitor=None,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    run_loop(
        model, wrapper, schema, runtime, EvalData(val=val), settings,
        eval_batch_size=args.batch_size, steps_per_epoch=max(1, args.rows // args.batch_size),
    )  # fmt: skip
    wall = time.perf_counter() - started
    rates = [r["train_samples_per_s"] for r in runtime.reports]
    steady = rates[1:] or rates
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    )
    return {
        "samples_per_s": statistics.median(steady),
        "ms_per_step": 1000.0 * args.batch_size / statistics.median(steady),
        "first_epoch_samples_per_s": rates[0],
        "peak_gpu_mib": peak,
        "val_auc": runtime.reports[-1]["val_auc"],
        "parameters": float(sum(p.numel() for p in model.parameters())),
        "wall_s": wall,
    }


def _torchrec_missing() -> str | None:
    """Why the ``torchrec`` part cannot run here (``None``: it can)."""
    from hmoe.models.torchrec_tables import require_torchrec

    try:
        require_torchrec()
    except ConfigError as err:
        return str(err)
    return None


def _torchrec_part(
    args: argparse.Namespace, device: torch.device
) -> dict[str, dict[str, dict[str, float]]]:
    """Per preset, per fused table optimizer: the ``torchrec`` backend's run (one line and
    nothing where it cannot run)."""
    missing = _torchrec_missing()
    if missing is not None:
        print(f"torchrec part skipped: {missing}")
        return {}
    optimizers = list(args.table_optimizers)
    if device.type != "cuda":  # FBGEMM's CPU build has no Adam
        skipped = [o for o in optimizers if o not in CPU_TABLE_OPTIMIZERS]
        optimizers = [o for o in optimizers if o in CPU_TABLE_OPTIMIZERS]
        if skipped:
            print(f"torchrec part: {', '.join(skipped)} left out (CUDA only)")
    return {p: {o: check(p, args, device, o) for o in optimizers} for p in args.presets}


def _print_side_by_side(
    results: dict[str, dict[str, float]], fused: dict[str, dict[str, dict[str, float]]]
) -> None:
    """Per preset: the ``torch`` backend's row, then each ``torchrec`` row with its ratios."""
    print(
        f"{'preset':<10}{'tables':<34}{'ms/step':>9}{'samples/s':>11}{'peak MiB':>10}"
        f"{'step x':>8}{'memory x':>10}"
    )
    for preset, base in results.items():
        rows = [("torch (dense Adam)", base)]
        rows += [(f"torchrec ({o}, fused)", r) for o, r in fused.get(preset, {}).items()]
        for label, r in rows:
            step = r["ms_per_step"] / base["ms_per_step"]
            memory = r["peak_gpu_mib"] / base["peak_gpu_mib"]
            print(
                f"{preset:<10}{label:<34}{r['ms_per_step']:>9.2f}{r['samples_per_s']:>11.0f}"
                f"{r['peak_gpu_mib']:>10.0f}{step:>8.2f}{memory:>10.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default cuda; without one: skipped")
    parser.add_argument("--presets", nargs="+", default=["hmoe", "dcnv2"])
    parser.add_argument("--schema", choices=sorted(SCHEMAS), default="ml100k")
    parser.add_argument("--rows", type=int, default=262_144)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-bf16", action="store_true", help="float32 on CUDA too")
    parser.add_argument(
        "--backends", nargs="+", choices=["torch", "torchrec"], default=["torch", "torchrec"]
    )
    parser.add_argument(
        "--table-optimizers",
        nargs="+",
        choices=TABLE_OPTIMIZERS,
        default=["rowwise_adagrad", "adam"],
        help="the torchrec part's fused table optimizers (adam: CUDA only)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.device is None and not torch.cuda.is_available():
        print(
            f"gpu_check skipped: no CUDA device (torch {torch.__version__}); --device cpu runs it"
        )
        return 0
    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available (use --device cpu for a smoke run)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    precision = "bf16 autocast" if device.type == "cuda" and not args.no_bf16 else "float32"
    print(f"device {name}, {precision}, torch {torch.__version__}, schema {args.schema}, "
          f"{args.rows} rows, batch {args.batch_size}, {args.epochs} epochs")  # fmt: skip
    results = {preset: check(preset, args, device) for preset in args.presets}
    print(f"{'preset':<10}{'samples/s':>12}{'1st epoch':>12}{'peak MiB':>10}{'params':>12}")
    for preset, r in results.items():
        print(f"{preset:<10}{r['samples_per_s']:>12.0f}{r['first_epoch_samples_per_s']:>12.0f}"
              f"{r['peak_gpu_mib']:>10.0f}{r['parameters']:>12.0f}")  # fmt: skip
    fused = _torchrec_part(args, device) if "torchrec" in args.backends else {}
    if fused:
        _print_side_by_side(results, fused)
    if args.out is not None:
        meta = {"device": name, "precision": precision, "torch": torch.__version__}
        out = {"meta": meta, "results": results, "torchrec": fused}
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
