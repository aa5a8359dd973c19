"""Training step and peak memory of the ``torch`` / ``torchrec`` embedding backends as ids grow.

The criteo-like schema of ``hmoe.models.testing`` (26 categorical fields, 13 numerics) with its
vocabularies scaled so that they hold ``--ids`` ids in total; batch 4096, one thread. A step is
forward + backward + optimizer, exactly as ``bench_models.hmoe_step`` (fused variant) runs it:
the dense Adam carries the preset's embedding L2 over the whole tables (``torch``), or FBGEMM's
fused row-wise Adagrad updates the rows the batch touches with the same L2 on those rows
(``torchrec``, ``model.embedding.table_l2`` = the preset's ``loss.embedding_l2``).

Each row runs in its own process (same seeds, so the same tensors): its peak RSS is its own, and
one that runs out of memory (``--max-gb`` caps each process's address space) is reported as such
instead of ending the run. The achieved GFLOP/s is the model's matmul FLOPs per sample (forward
and backward, counted by ``torch.utils.flop_counter`` on the ``torch`` backend: the lookups do
no matmul) times samples/s, printed beside this machine's single-thread fp32 GEMM rate measured
in the same run.

    python benchmarks/bench_embeddings.py --ids 150000 1500000 15000000 \\
        --presets dcnv2 hmoe --backends torch torchrec --json /tmp/emb.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_models import (
    CLOCKS,
    hmoe_step,
    load_average,
    machine,
    make_batches,
    time_interleaved,
)
from hmoe.models import TrainWrapper, build, get_preset
from hmoe.models.testing import CRITEO_VOCABS, criteo_like_schema, random_batch
from hmoe.schema import FeatureSchema

BATCH = 4096
THREADS = 1
BACKENDS = ("torch", "torchrec")
GEMM_SIZE = 2048  # square fp32 GEMM: large enough to run at the machine's matmul rate
FLOP_BATCH = 256  # FLOPs scale with the batch; counted on a small one
FLOP_VOCAB = 1000  # FLOPs do not depend on the vocabulary
OUT_OF_MEMORY = "out of memory"


def scaled_schema(ids: int) -> FeatureSchema:
    """The criteo-like schema with every vocabulary scaled by ``ids / sum(CRITEO_VOCABS)``."""
    factor = ids / sum(CRITEO_VOCABS)
    schema = criteo_like_schema()
    categorical = tuple(
        dataclasses.replace(c, vocab_size=max(2, round(v * factor)))
        for c, v in zip(schema.categorical, CRITEO_VOCABS, strict=True)
    )
    return dataclasses.replace(schema, categorical=categorical)


def backend_overrides(preset: str, backend: str) -> dict[str, object]:
    if backend == "torch":
        return {}
    return {
        "embedding.backend": "torchrec",
        "embedding.table_l2": get_preset(preset).loss.embedding_l2,
    }


def run_row(preset: str, backend: str, ids: int, args: argparse.Namespace) -> dict[str, object]:
    """One combination, in this process: median ms/step and this process's peak RSS."""
    torch.set_num_threads(THREADS)
    schema = scaled_schema(ids)
    batches = make_batches(schema, BATCH, seed=0)
    step = hmoe_step(preset, schema, "fused", backend_overrides(preset, backend))
    steps = max(args.min_steps, args.samples // BATCH)
    clock = CLOCKS[args.clock]
    rate = time_interleaved({"row": (step, batches)}, steps, args.repeats, args.warmup, clock)
    samples_per_s = rate["row"]
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "preset": preset,
        "backend": backend,
        "ids": sum(c.vocab_size for c in schema.categorical),
        "ms_per_step": 1000.0 * BATCH / samples_per_s,
        "samples_per_s": samples_per_s,
        "peak_rss_gb": peak_kb / 1024**2,
    }


def flops_per_sample(preset: str) -> float:
    """Matmul FLOPs of one sample's forward and backward (the ``torch`` backend)."""
    schema = criteo_like_schema(max_vocab=FLOP_VOCAB)
    torch.manual_seed(0)
    model = build(get_preset(preset).model, schema).train()
    wrapper = TrainWrapper(model, get_preset(preset).loss, tasks=schema.tasks)
    batch = random_batch(schema, FLOP_BATCH, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        loss, _ = wrapper(batch)
        loss.backward()
    return counter.get_total_flops() / FLOP_BATCH


def gemm_gflops(repeats: int, clock_name: str) -> float:
    """This machine's single-thread fp32 GEMM rate (median of ``repeats``)."""
    torch.set_num_threads(THREADS)
    a, b = torch.randn(GEMM_SIZE, GEMM_SIZE), torch.randn(GEMM_SIZE, GEMM_SIZE)
    torch.mm(a, b)  # warm-up
    clock, rates = CLOCKS[clock_name], []
    for _ in range(repeats):
        start = clock()
        torch.mm(a, b)
        rates.append(2 * GEMM_SIZE**3 / (clock() - start) / 1e9)
    return statistics.median(rates)


def _limit_memory(max_gb: float) -> None:
    limit = int(max_gb * 1024**3)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def spawn_row(preset: str, backend: str, ids: int, args: argparse.Namespace) -> dict[str, object]:
    """Run one row in a child process capped at ``--max-gb``; an OOM there is a row, not a crash."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--row", preset, backend, str(ids)]
    argv += ["--samples", str(args.samples), "--repeats", str(args.repeats)]
    argv += [
        "--warmup",
        str(args.warmup),
        "--clock",
        args.clock,
        "--min-steps",
        str(args.min_steps),
    ]
    out = subprocess.run(
        argv, capture_output=True, text=True, preexec_fn=lambda: _limit_memory(args.max_gb)
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode == 0 and lines:
        return json.loads(lines[-1])
    oom = out.returncode in (-9, 137) or any(
        s in out.stderr for s in ("MemoryError", "can't allocate memory", "std::bad_alloc")
    )
    tail = out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]
    return {
        "preset": preset,
        "backend": backend,
        "ids": sum(c.vocab_size for c in scaled_schema(ids).categorical),
        "ms_per_step": None,
        "samples_per_s": None,
        "peak_rss_gb": None,
        "error": f"{OUT_OF_MEMORY} (> {args.max_gb:g} GB)" if oom else tail[0],
    }


def table(rows: list[dict[str, object]], gemm: float) -> str:
    lines = [
        "| ids | preset | backend | ms/step | samples/s | peak RSS | GFLOP/s | of GEMM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ids = f"{float(r['ids']) / 1e6:.2f}M"  # type: ignore[arg-type]
        if r.get("error"):
            lines.append(f"| {ids} | {r['preset']} | {r['backend']} | {r['error']} | | | | |")
            continue
        gflops = float(r["gflops"])  # type: ignore[arg-type]
        lines.append(
            f"| {ids} | {r['preset']} | {r['backend']} | {float(r['ms_per_step']):,.0f} "  # type: ignore[arg-type]
            f"| {float(r['samples_per_s']):,.0f} | {float(r['peak_rss_gb']):.2f} GB "  # type: ignore[arg-type]
            f"| {gflops:.1f} | {gflops / gemm:.0%} |"
        )
    return "\n".join(lines)


def count(text: str) -> int:
    """``150000``, ``150k``, ``1.5M``."""
    scale = {"k": 1e3, "m": 1e6}.get(text[-1].lower(), 1.0)
    return int(float(text[:-1] if scale != 1.0 else text) * scale)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", nargs="+", type=count, default=[150_000, 1_500_000])
    parser.add_argument("--presets", nargs="+", default=["dcnv2", "hmoe"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument("--samples", type=int, default=8192, help="samples per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--clock", choices=list(CLOCKS), default="cpu")
    parser.add_argument("--max-gb", type=float, default=12.0, help="address-space cap per row")
    parser.add_argument("--row", nargs=3, metavar=("PRESET", "BACKEND", "IDS"), help="internal")
    args = parser.parse_args(argv)
    if args.row:
        preset, backend, ids = args.row
        print(json.dumps(run_row(preset, backend, int(ids), args)), flush=True)
        return
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load_average()
    gemm = gemm_gflops(args.repeats, args.clock)
    flops = {preset: flops_per_sample(preset) for preset in args.presets}
    rows = []
    for ids in args.ids:
        for preset in args.presets:
            for backend in args.backends:
                row = spawn_row(preset, backend, ids, args)
                rate = row.get("samples_per_s")
                row["gflops"] = None if rate is None else flops[preset] * float(rate) / 1e9
                row["gemm_gflops"] = gemm
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(
        f"\n{machine(THREADS)}; load average {load_start} at the start, {load_average()} at "
        f"the end; {started}; {args.clock} clock; batch {BATCH}; median of {args.repeats} "
        f"rounds of >= {args.samples} samples (forward + backward + optimizer); "
        f"single-thread fp32 GEMM {gemm:.1f} GFLOP/s; matmul MFLOP per sample: "
        + ", ".join(f"{p} {f / 1e6:.2f}" for p, f in flops.items())
        + "\n"
    )
    print(table(rows, gemm))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
