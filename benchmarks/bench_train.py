"""Platform overhead of ``hmoe train``: Ray Train vs the standalone loop, 2 workers vs 1, MLflow.

Same preset, same prepared data, same epochs and batch size in every variant; the number that
is compared is the training throughput of the LAST epoch (``train_samples_per_s``, measured
inside the loop around the train batches only, so worker start-up and evaluation are excluded)
plus the end-to-end wall time of each call.

* ``standalone``: ``train_standalone`` in this process, no tracking (the baseline).
* ``standalone+mlflow``: the same with per-epoch batched MLflow logging into a sqlite store
  (``tracking_seconds`` = time inside tracking calls; model logging reported separately).
* ``ray-1``: ``hmoe.train`` with 1 Ray Train worker (streamed shards, checkpoints, MLflow).
* ``ray-2``: ``hmoe.train`` with 2 DDP workers (gloo on CPU).

Torch threads: every variant uses ``--threads`` intra-op threads per worker (Ray gives each
worker ``cpus_per_worker`` threads), so ``ray-1`` and ``standalone`` do the same arithmetic.

    python benchmarks/bench_train.py --data /path/to/prepared/ml-100k --preset dcnv2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.early_stopping_patience": 0,
        "train.cpus_per_worker": float(args.threads),
        "tracking.log_model": not args.no_model,
        "tracking.model_format": "pickle",
        "data.materialize_train_max_mb": args.materialize_max_mb,
    }


def standalone(args: argparse.Namespace, work: Path, tracked: bool) -> dict[str, float]:
    import torch

    from hmoe.platform.analysis.monitor import epoch_end_hook
    from hmoe.platform.api import resolve
    from hmoe.platform.experiment import build_experiment, logged_params, run_name
    from hmoe.platform.tracking.runs import MlflowRun
    from hmoe.platform.training.trainer import train_standalone

    torch.set_num_threads(args.threads)
    cfg = resolve(build_experiment(args.preset, args.data, _overrides(args)), work)
    run_id = None
    if tracked:
        run = MlflowRun.create(cfg.tracking.uri, "bench", run_name(cfg), {})
        run.log_config(cfg.to_dict(), logged_params(cfg, {}))
        run_id = run.run_id
    started = time.perf_counter()
    outcome = train_standalone(cfg, run_id=run_id, epoch_end=epoch_end_hook(cfg.train.monitor))
    wall = time.perf_counter() - started
    last = outcome.history[-1]
    return {
        "samples_per_s": last["train_samples_per_s"],
        "wall_s": wall,
        "tracking_s": last.get("tracking_seconds", 0.0),
        "model_log_s": last.get("model_log_seconds", 0.0),
        "train_s": sum(h["train_seconds"] for h in outcome.history),
    }


def on_ray(args: argparse.Namespace, work: Path, workers: int) -> dict[str, float]:
    import hmoe

    os.chdir(work)
    started = time.perf_counter()
    result = hmoe.train(
        args.preset, args.data, _overrides(args), workers=workers, register=False,
        experiment="bench",
    )  # fmt: skip
    wall = time.perf_counter() - started
    history = result.history
    return {
        "samples_per_s": history[-1]["train_samples_per_s"],
        "wall_s": wall,
        "tracking_s": result.metrics.get("tracking_seconds", 0.0),
        "model_log_s": result.metrics.get("model_log_seconds", 0.0),
        "train_s": float("nan"),
    }


VARIANTS = ("standalone", "standalone+mlflow", "ray-1", "ray-2")


def run_variant(name: str, args: argparse.Namespace) -> dict[str, float]:
    # each variant's MLflow store and run folders are scratch: gone once its numbers are read
    with tempfile.TemporaryDirectory(prefix=f"bench-{name.replace('+', '-')}-") as folder:
        work = Path(folder)
        if name == "standalone":
            return standalone(args, work, tracked=False)
        if name == "standalone+mlflow":
            return standalone(args, work, tracked=True)
        return on_ray(args, work, workers=int(name.split("-")[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared dataset (e.g. ml-100k Q1)")
    parser.add_argument("--preset", default="dcnv2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--no-model", action="store_true", help="skip MLflow model logging")
    parser.add_argument("--materialize-max-mb", type=int, default=512,
                        help="data.materialize_train_max_mb (0: stream every epoch)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.data = str(Path(args.data).resolve())
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if any(v.startswith("ray") for v in args.variants):
        import ray

        # one local cluster for every variant, sized for 2 workers plus 1 CPU for Ray Data
        ray.init(num_cpus=max(os.cpu_count() or 1, 2 * args.threads + 1), include_dashboard=False)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for name in args.variants:  # interleaved, so load drift hits every variant alike
            results[name].append(run_variant(name, args))
            print(name, json.dumps(results[name][-1]), flush=True)
    load = os.getloadavg()
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, load average {load[0]:.1f}; "
          f"{args.preset}, batch {args.batch_size}, {args.epochs} epochs, {args.threads} "
          f"thread(s) per worker, median of {args.repeats}")  # fmt: skip
    base = statistics.median(r["samples_per_s"] for r in results.get("standalone", [])) if (
        "standalone" in results) else None  # fmt: skip
    print(f"{'variant':<20}{'samples/s':>11}{'vs standalone':>15}{'wall s':>9}{'tracking s':>12}"
          f"{'model log s':>13}")  # fmt: skip
    for name, runs in results.items():
        rate = statistics.median(r["samples_per_s"] for r in runs)
        ratio = f"{rate / base:.2f}x" if base else "-"
        wall = statistics.median(r["wall_s"] for r in runs)
        tracking = statistics.median(r["tracking_s"] for r in runs)
        model = statistics.median(r["model_log_s"] for r in runs)
        print(f"{name:<20}{rate:>11.0f}{ratio:>15}{wall:>9.1f}{tracking:>12.2f}{model:>13.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                        "results": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
