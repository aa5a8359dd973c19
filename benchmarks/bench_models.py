"""Training-step throughput of every preset vs DeepCTR-Torch's DIN and DCN, on the same tensors.

A step is forward + backward + Adam step over pre-made batches (``TrainWrapper`` loss for hmoe;
BCE + the library's own regularisation loss for DeepCTR-Torch, as its ``fit`` does). Inputs are
``hmoe.models.testing``'s ml-100k-shaped schema (sequence of 50, MNSE numerics, similarity) and
Criteo-shaped schema (26 categorical fields, ~1.07M ids, 13 numerics); the peers read the very
same batches converted to their column layout (numerics as dense inputs). Peer settings are the
../shared/docs/benchmarks.md Q1 (DIN: embedding 16, DNN (128, 64)) and Q2 (DCN: embedding 10, DNN
(400, 400, 400), dropout 0.2, 3 cross layers) ones.

deepctr-torch is installed only into this benchmark's own folder (``--peer-dir``, default
/tmp/hmoe-bench-peers) with ``pip install --target --no-deps`` (it needs nothing beyond torch,
numpy, scikit-learn and tqdm, which the project already has); it never enters the project's
environment.

    python benchmarks/bench_models.py                       # all presets, both shapes, 512/4096
    python benchmarks/bench_models.py --presets din dcnv2 hmoe \\
        --variants fused adam fused+sparse fused+compile --repeats 5
    python benchmarks/bench_models.py --presets dcnv2 --shapes criteo --dcnv2-ranks 64
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from hmoe.config import apply_overrides
from hmoe.models import PRESETS, TrainWrapper, build, get_preset
from hmoe.models.testing import criteo_like_schema, ml100k_like_schema, random_batch
from hmoe.schema import LABELS, FeatureSchema, seq_column

PEER_VERSION = "0.3.0"
#: the Q1 / Q2 peers; DCN-M is DeepCTR-Torch's DCN with the full-rank (matrix) cross of DCN V2,
#: the same arithmetic as our dcnv2 (its Q2 DCN has the cheaper vector cross of DCN V1)
PEERS = {"ml100k": ("DIN",), "criteo": ("DCN", "DCN-M")}
DEFAULT_THREADS = 2
LEARNING_RATE = 1e-3
NUM_DISTINCT_BATCHES = 3
PEER_LENGTH = "seq_length"  # DeepCTR's column of a history's true length
Batch = dict[str, torch.Tensor]


def schemas(multitask: bool) -> dict[str, FeatureSchema]:
    tasks = ["click", "like"] if multitask else ["click"]
    return {
        "ml100k": ml100k_like_schema(tasks=tuple(tasks)),
        "criteo": apply_overrides(criteo_like_schema(), {"tasks": tasks}),
    }


def make_batches(schema: FeatureSchema, batch_size: int, seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [random_batch(schema, batch_size, g) for _ in range(NUM_DISTINCT_BATCHES)]


def time_interleaved(
    runners: Mapping[str, tuple[Callable[[Batch], None], list[Batch]]],
    steps: int,
    repeats: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median samples/s of each runner over ``repeats`` rounds of ``steps`` steps.

    Every round times every runner once, so drifts of a shared machine hit all of them alike;
    ``warmup`` steps first (a compiled model compiles there). ``clock``: wall time, or this
    process's CPU time (``time.process_time``), which with one thread does not count the time
    the other sessions' load keeps us descheduled.
    """
    for step, batches in runners.values():
        for batch in batches[:warmup]:
            step(batch)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, (step, batches) in runners.items():
            size = batches[0][LABELS].shape[0]
            start = clock()
            for i in range(steps):
                step(batches[i % len(batches)])
            rates[name].append(steps * size / (clock() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


#: how our step is run: the optimiser (plain Adam as the platform and the peers use it, or the
#: fused CPU kernel), sparse id-table gradients with SparseAdam, torch.compile
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
VARIANTS = {
    "adam": dict(fused=False, sparse=False, compiled=False),
    "fused": dict(fused=True, sparse=False, compiled=False),
    "fused+sparse": dict(fused=True, sparse=True, compiled=False),
    "fused+compile": dict(fused=True, sparse=False, compiled=True),
}
# torch.compile and sparse id-table gradients exist only with the torch backend's tables (the
# model config refuses them with torchrec): those variants name it, so that they keep running
# whatever backend the presets default to
TORCH_TABLES = {"embedding.backend": "torch"}


def hmoe_step(
    name: str,
    schema: FeatureSchema,
    variant: str,
    model_overrides: Mapping[str, object] | None = None,
) -> Callable[[Batch], None]:
    preset = get_preset(name)
    how = VARIANTS[variant]
    overrides: dict[str, object] = {
        "use_compile": how["compiled"],
        "use_sparse_gradients": how["sparse"],
        **(TORCH_TABLES if how["compiled"] or how["sparse"] else {}),
        **(model_overrides or {}),
    }
    loss = preset.loss
    if how["sparse"]:
        # lazy SparseAdam moves only the looked-up rows: a whole-table L2 has no place there
        loss = dataclasses.replace(loss, embedding_l2=0.0)
    torch.manual_seed(0)
    model = build(apply_overrides(preset.model, overrides), schema)
    model.train()
    inner = getattr(model, "_orig_mod", model)  # the module under torch.compile
    sparse = inner.sparse_parameters()
    # as `hmoe train` does: Adam carries the embedding L2 (no sparse tables to exclude)
    wrapper = TrainWrapper(model, loss, tasks=schema.tasks, embedding_l2_by_optimizer=not sparse)
    dense = inner.dense_parameters() if sparse else wrapper.param_groups(0.0)
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.Adam(dense, lr=LEARNING_RATE, fused=how["fused"])
    ]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=LEARNING_RATE))

    def step(batch: Batch) -> None:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss, _ = wrapper(batch)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    return step


# --- DeepCTR-Torch peers --------------------------------------------------------------------------


def install_peer(peer_dir: Path) -> None:
    if not (peer_dir / "deepctr_torch").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(peer_dir), f"deepctr-torch=={PEER_VERSION}"],
            check=True,
        )  # fmt: skip
    sys.path.insert(0, str(peer_dir))


def _peer_columns(schema: FeatureSchema, batch: Batch) -> dict[str, torch.Tensor]:
    """Our Batch as DeepCTR columns: ids, the first value of multi-valued ids, log1p numerics,
    similarities, histories and their lengths."""
    columns = {}
    for c in schema.categorical:
        ids = batch[c.name]
        columns[c.name] = ids[:, 0] if c.multi_valued else ids
    for n in schema.numeric:
        columns[n.name] = batch[n.name].clamp(min=0).log1p()  # counts and years, as dense inputs
    for s in schema.similarity:
        columns[s.name] = batch[s.name]
    for q in schema.sequences:
        columns[f"hist_{q.item_field}"] = batch[seq_column(q.name, "item")]
        if q.category_field is not None:
            columns[f"hist_{q.category_field}"] = batch[seq_column(q.name, "category")]
        columns[PEER_LENGTH] = batch[seq_column(q.name, "length")]
    return columns


def peer_features(schema: FeatureSchema, embedding_dim: int) -> list:
    """DeepCTR feature columns of ``schema``: its ids, its numerics and similarities as dense
    inputs, and each history (items, categories) sharing its field's embedding."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat

    features = [SparseFeat(c.name, c.vocab_size, embedding_dim) for c in schema.categorical]
    features += [DenseFeat(n.name, 1) for n in (*schema.numeric, *schema.similarity)]
    for q in schema.sequences:
        for field in (q.item_field, q.category_field):
            if field is None:
                continue
            vocab = schema.categorical_by_name(field).vocab_size
            sparse = SparseFeat(f"hist_{field}", vocab, embedding_dim, embedding_name=field)
            features.append(VarLenSparseFeat(sparse, q.max_len, length_name=PEER_LENGTH))
    return features


def peer_step(kind: str, schema: FeatureSchema) -> tuple[Callable[[Batch], None], Callable]:
    from deepctr_torch.models import DCN, DIN

    torch.manual_seed(0)
    if kind == "DIN":
        features = peer_features(schema, 16)
        history = [q.item_field for q in schema.sequences]
        history += [q.category_field for q in schema.sequences if q.category_field]
        model = DIN(features, history, dnn_hidden_units=(128, 64), device="cpu")
    else:
        features = peer_features(schema, 10)
        model = DCN(
            features, features, cross_num=3, dnn_hidden_units=(400, 400, 400),
            dnn_dropout=0.2, device="cpu",
            cross_parameterization="matrix" if kind == "DCN-M" else "vector",
        )  # fmt: skip
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    index = model.feature_index

    def convert(batch: Batch) -> Batch:
        columns = _peer_columns(schema, batch)
        size = batch[LABELS].shape[0]
        x = torch.zeros(size, max(end for _, end in index.values()))
        for name, (start, end) in index.items():
            x[:, start:end] = columns[name].float().reshape(size, end - start)
        return {"x": x, LABELS: batch[LABELS][:, :1]}

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        prediction = model(batch["x"])
        loss = F.binary_cross_entropy(prediction, batch[LABELS], reduction="mean")
        (loss + model.get_regularization_loss() + model.aux_loss).backward()
        optimizer.step()

    return step, convert


# --- the run ------------------------------------------------------------------------------------


def machine(threads: int) -> str:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    return f"{cpu}, torch {torch.__version__}, {threads} thread(s)"


def load_average() -> str:
    """The 1-minute load average (the machine is shared: every printed table names it)."""
    path = Path("/proc/loadavg")
    return path.read_text().split()[0] if path.is_file() else "?"


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for shape in args.shapes:
        for batch_size in args.batches:
            steps = max(args.min_steps, args.samples // batch_size)
            data = {
                multitask: make_batches(schemas(multitask)[shape], batch_size, seed=batch_size)
                for multitask in (False, True)
            }
            runners = {}
            for kind in PEERS[shape] if args.peers else ():
                step, convert = peer_step(kind, schemas(False)[shape])
                converted = [convert(b) for b in data[False]]
                runners[(f"DeepCTR-Torch {kind}", "adam")] = (step, converted)
            for name in args.presets:
                multitask = get_preset(name).model.kind != "single"
                variants = args.variants if name in args.variant_presets else [args.variants[0]]
                for variant in variants:
                    step = hmoe_step(name, schemas(multitask)[shape], variant)
                    runners[(name, variant)] = (step, data[multitask])
                    if name != "dcnv2":
                        continue
                    for rank in args.dcnv2_ranks:  # the low-rank cross beside the full-rank one
                        overrides = {"experts.dcnv2.rank": rank}
                        step = hmoe_step(name, schemas(False)[shape], variant, overrides)
                        runners[(f"dcnv2 rank {rank}", variant)] = (step, data[False])
            clock = CLOCKS[args.clock]
            rates = time_interleaved(runners, steps, args.repeats, args.warmup, clock)
            for (model, variant), rate in rates.items():
                rows.append(dict(shape=shape, batch=batch_size, model=model, variant=variant,
                                 rate=rate))  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    """Markdown: samples/s per model, variant, shape and batch; ratios to the peer (plain Adam)
    and cost per sample relative to ``dcnv2`` in the same variant."""
    rate = {(r["model"], r["variant"], r["shape"], r["batch"]): float(r["rate"]) for r in rows}  # type: ignore[arg-type]
    lines = ["| shape | batch | model | step | samples/s | vs peer | cost vs dcnv2 |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        shape, batch, model, variant = r["shape"], r["batch"], r["model"], r["variant"]
        peer = rate.get(("DeepCTR-Torch DIN" if shape == "ml100k" else "DeepCTR-Torch DCN",
                         "adam", shape, batch))  # fmt: skip
        dcn = rate.get(("dcnv2", variant, shape, batch))
        value = rate[(model, variant, shape, batch)]
        is_peer = str(model).startswith("DeepCTR")
        vs_peer = f"{value / peer:.2f}x" if peer and not is_peer else ""
        cost = f"{dcn / value:.2f}x" if dcn and not is_peer else ""
        lines.append(f"| {shape} | {batch} | {model} | {variant} | {value:,.0f} | {vs_peer} "
                     f"| {cost} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--shapes", nargs="+", default=["ml100k", "criteo"])
    parser.add_argument("--batches", nargs="+", type=int, default=[512, 4096])
    parser.add_argument("--samples", type=int, default=8192, help="samples per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["fused"],
        choices=list(VARIANTS),
        help="step variants; presets outside --variant-presets get the first",
    )
    parser.add_argument("--variant-presets", nargs="+", default=["din", "dcnv2", "hmoe"])
    parser.add_argument(
        "--dcnv2-ranks",
        nargs="*",
        type=int,
        default=[],
        help="also time dcnv2 with a low-rank cross of these ranks (model.experts.dcnv2.rank)",
    )
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="intra-op threads; on an oversubscribed machine 1 avoids OpenMP barrier stalls",
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="cpu: samples per CPU second of this process (use with --threads 1 on a busy box)",
    )
    parser.add_argument("--peer-dir", type=Path, default=Path("/tmp/hmoe-bench-peers"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.peers:
        install_peer(args.peer_dir)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load_average()
    rows = run(args)
    print(f"\n{machine(args.threads)}; load average {load_start} at the start, "
          f"{load_average()} at the end; {started}; "
          f"{args.clock} clock; median of {args.repeats} rounds of >= {args.samples} samples "
          "per model "
          "(forward + backward + optimizer step)\n")  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
