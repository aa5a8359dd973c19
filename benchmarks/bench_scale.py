"""End to end at ads scale: a synthetic log with id tables of N rows, trained by ``hmoe train``.

1. ``hmoe data synth --rows R --set rows_per_user=2`` (R / 2 users), then its spec with
   ``user_id`` and ``item_id`` hashed (``vocab.mode: hash``) into tables of 80% and 20% of
   ``--ids`` rows: id tables of N rows per embedding set, as an ads system sizes its hash tables
   above the ids it has seen;
2. ``hmoe data prepare`` of that spec (both cached under ``--work``);
3. ``hmoe train --workers W --set model.embedding.backend=B`` for every backend and worker
   count, one epoch each, in a fresh process (its own Ray), one after the other.

Each row: the epoch's ``train_samples_per_s`` (timed inside the loop around the train batches),
its ``worker_peak_rss_gb`` (the largest worker's peak resident memory), the machine's peak used
memory (``MemTotal - MemAvailable`` polled every second: driver, workers and object store
together), the wall time of the call and the best validation AUC; or why the run failed.

``--torch-rows``: the ``torch`` backend's rows come from a second, smaller log with the same
tables (its per-step cost is the whole-table update, whatever the rows), so that its epoch
does not take hours.

    python benchmarks/bench_scale.py --rows 10000000 --ids 50M --preset dcnv2 \\
        --backends torchrec torch --workers 1 2 --torch-rows 1000000
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from bench_embeddings import count
from repro.common import machine

USER_SHARE = 0.8  # of --ids: the user_id table; the rest is item_id's
ROWS_PER_USER = 2
POLL_S = 1.0
RUN_ID = re.compile(r"MLflow run id:\s*(\w+)")


def hmoe() -> str:
    return str(Path(sys.executable).with_name("hmoe"))


def prepared(work: Path, rows: int, ids: int, seed: int) -> Path:
    """The prepared log of ``rows`` rows with tables of ``ids`` rows (made once)."""
    raw = work / f"raw-{rows}-seed{seed}"
    out = work / f"prepared-{rows}-{ids}-seed{seed}"
    if (out / "manifest.json").exists():
        return out
    if not (raw / "spec.yaml").exists():
        synth = [hmoe(), "data", "synth", "--out", str(raw), "--rows", str(rows)]
        synth += ["--seed", str(seed), "--set", f"rows_per_user={ROWS_PER_USER}"]
        subprocess.run(synth, check=True)
    spec = hashed_spec(yaml.safe_load((raw / "spec.yaml").read_text()), rows, ids)
    hashed = raw / f"spec-{ids}.yaml"
    hashed.write_text(yaml.safe_dump(spec, sort_keys=False))
    subprocess.run([hmoe(), "data", "prepare", str(hashed), "--out", str(out)], check=True)
    return out


def hashed_spec(spec: dict[str, Any], rows: int, ids: int) -> dict[str, Any]:
    """``spec`` (a synth log's) with ``user_id`` and ``item_id`` hashed into tables of ``ids``
    rows in total (``USER_SHARE`` of them the users')."""
    sizes = {"user_id": round(USER_SHARE * ids), "item_id": ids - round(USER_SHARE * ids)}
    fields = [
        f | {"vocab": {"mode": "hash", "hash_size": sizes[f["name"]]}} if f["name"] in sizes else f
        for f in spec["categorical"]
    ]
    return spec | {"name": f"synth-{rows}-rows-{ids}-ids", "categorical": fields}


class MemoryPeak:
    """The machine's peak used memory while the ``with`` block runs (GiB)."""

    def __enter__(self) -> MemoryPeak:
        self.peak_gib, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            info = dict(
                line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()
            )
            used_kib = int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])
            self.peak_gib = max(self.peak_gib, used_kib / 2**20)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def train(args: argparse.Namespace, data: Path, backend: str, workers: int) -> dict[str, Any]:
    command = [
        hmoe(), "train", "--preset", args.preset, "--data", str(data),
        "--workers", str(workers), "--experiment", "bench-scale",
        "--tracking-uri", f"sqlite:///{args.work / 'mlflow.db'}",
        "--set", f"model.embedding.backend={backend}",
        "--set", "train.epochs=1",
        "--set", f"train.batch_size={args.batch_size}",
        "--set", "tracking.log_model=false",
    ]  # fmt: skip
    if backend == "torchrec" and args.table_lr is not None:
        command += ["--set", f"model.embedding.table_lr={args.table_lr}"]
    started = time.perf_counter()
    with MemoryPeak() as memory:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s)
        except subprocess.TimeoutExpired as err:
            # the child's Ray goes with it: subprocess.run killed it
            done = subprocess.CompletedProcess(command, -9, "", f"timed out after {err.timeout} s")
    manifest = json.loads((data / "manifest.json").read_text())
    row: dict[str, Any] = {
        "preset": args.preset,
        "backend": backend,
        "workers": workers,
        "rows": int(manifest["rows"]["train"]),
        "ids": int(sum(manifest["vocab_sizes"].values())),  # id table rows per set
        "wall_s": round(time.perf_counter() - started, 1),
        "machine_peak_used_gb": round(memory.peak_gib, 2),
    }
    found = RUN_ID.search(done.stdout)
    if done.returncode != 0 or found is None:
        row["error"] = _why(done.stdout + done.stderr)
        return row
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(f"sqlite:///{args.work / 'mlflow.db'}").get_run(found[1]).data.metrics
    for key in ("train_samples_per_s", "worker_peak_rss_gb", "val_auc"):
        row[key] = metrics.get(key)
    return row


def _why(output: str) -> str:
    if "memory" in output.lower() and ("killed" in output.lower() or "oom" in output.lower()):
        return "out of memory (a worker was killed)"
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "failed with no output"


def _print(rows: list[dict[str, Any]]) -> None:
    print("| preset | backend | workers | train rows | id rows | samples/s | worker peak RSS "
          "| machine peak used | wall s | val AUC |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = (
            f"| {r['preset']} | {r['backend']} | {r['workers']} | {r['rows']:,} | "
            f"{r['ids'] / 1e6:.1f}M |"
        )
        if "error" in r:
            print(f"{head} {r['error']} | | {r['machine_peak_used_gb']:.1f} GB | {r['wall_s']} | |")
            continue
        print(
            f"{head} {_shown(r['train_samples_per_s'], ',.0f')} | "
            f"{_shown(r['worker_peak_rss_gb'], '.2f')} GB | "
            f"{r['machine_peak_used_gb']:.1f} GB | {r['wall_s']} | {_shown(r['val_auc'], '.4f')} |"
        )


def _shown(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=count, default=count("10M"))
    parser.add_argument("--ids", type=count, default=count("50M"), help="id table rows per set")
    parser.add_argument("--preset", default="dcnv2")
    parser.add_argument("--backends", nargs="+", default=["torchrec", "torch"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--torch-rows", type=count, default=None,
                        help="rows of the torch backend's log (default: --rows)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=4096, help="per worker")
    parser.add_argument("--table-lr", type=float, default=None, help="torchrec tables' lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=4 * 3600)
    parser.add_argument("--work", type=Path, default=Path("bench-scale"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} · {machine()} · {platform.node()}", flush=True)
    rows = []
    for backend in args.backends:
        n = args.torch_rows if backend == "torch" and args.torch_rows else args.rows
        data = prepared(args.work, n, args.ids, args.seed)
        for workers in args.workers:
            rows.append(train(args, data, backend, workers))
            print(json.dumps(rows[-1]), flush=True)
        if args.json is not None:  # after every run: a later failure loses nothing
            args.json.write_text(json.dumps(rows, indent=2))
    _print(rows)


if __name__ == "__main__":
    main()
