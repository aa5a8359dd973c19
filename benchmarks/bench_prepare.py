"""Benchmark: ``hmoe data prepare`` (Ray Data) against a single-process pyarrow implementation of
the same encoding, on ``hmoe data synth`` logs; rows/s, median of several runs, peak memory.

Every measured command runs in its own subprocess (a fresh Ray for ``prepare``); a thread of
this process polls the subprocess tree every ``--poll`` seconds and records the peak of the sum of
its PSS (proportional set size: shared pages such as Ray's object store counted once). Runs
alternate between the two implementations so that a change in the machine's load hits both.

The baseline (``baseline_prepare``) reads the synth output with pyarrow in one process and
produces the same shards as ``prepare`` for the synth spec: validation, side-table joins, the
temporal split with its tie-break, train-fitted vocabularies, numeric casts, user-item cosine,
exposure counts and point-in-time click sequences with time deltas and cosines, rows grouped
into the same user shards, one zstd Parquet file per shard and split. ``--check`` verifies on a
small log that both write the same rows.

    python benchmarks/bench_prepare.py --rows 1000000 10000000 --repeats 3
    python benchmarks/bench_prepare.py --check                   # equality on 20k rows only
    python benchmarks/bench_prepare.py --rows 100000000 --repeats 1 --no-baseline
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hmoe.schema import SPLITS

ROW_BITS = 40  # row id = file index << ROW_BITS | row in file, as hmoe.platform.data.tables
ROW_GROUP_ROWS = 65_536
CATEGORICAL = ("user_id", "item_id", "category", "gender", "device")
NUMERIC = ("age", "price_level", "hour")
PAD, OOV, FIRST = 0, 1, 2


# ----------------------------------------------------------------------------- the baseline


def _read_log(folder: Path) -> pa.Table:
    files = sorted(p for p in (folder / "impressions").iterdir() if not p.name.startswith("."))
    parts = []
    for index, path in enumerate(files):
        table = pq.read_table(path)
        rows = (index << ROW_BITS) + np.arange(table.num_rows, dtype=np.int64)
        parts.append(table.append_column("__row", pa.array(rows)))
    return pa.concat_tables(parts)


def _side(path: Path, key: str, column: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys and their ``[n, dim]`` vectors (rows whose vector length is wrong: NaN)."""
    table = pq.read_table(path, columns=[key, column])
    keys = np.asarray(table.column(key), dtype=np.int64)
    lists = table.column(column).combine_chunks()
    ok = np.asarray(pc.equal(pc.list_value_length(lists), dim).fill_null(False))
    vectors = np.full((len(keys), dim), np.nan, dtype=np.float32)
    flat = np.asarray(pc.list_flatten(lists.filter(pa.array(ok))), dtype=np.float32)
    vectors[ok] = flat.reshape(-1, dim)
    order = np.argsort(keys, kind="stable")
    return keys[order], vectors[order]


def _lookup(keys: np.ndarray, table_keys: np.ndarray) -> np.ndarray:
    """Index of each key in the sorted ``table_keys``; -1 where absent."""
    pos = np.minimum(np.searchsorted(table_keys, keys), max(len(table_keys) - 1, 0))
    return np.where(table_keys[pos] == keys, pos, -1)


def _reasons(log: pa.Table, user_at: np.ndarray, item_at: np.ndarray, spec: dict) -> np.ndarray:
    """First failing check per row, in prepare's order (0 = valid)."""
    reason = np.zeros(log.num_rows, dtype=np.int8)

    def add(code: int, bad: np.ndarray) -> None:
        reason[(reason == 0) & bad] = code

    ts = np.asarray(log.column("timestamp").cast(pa.float64()).fill_null(np.nan))
    add(3, ~np.isfinite(ts) | (ts < 0) | (ts > 4102444800.0))  # bad_timestamp
    for name in CATEGORICAL:
        column = log.column(name)
        add(1, np.asarray(column.is_null()))  # missing_value
    for name in NUMERIC:
        values = np.asarray(log.column(name).cast(pa.float64()).fill_null(np.nan))
        add(1, np.asarray(log.column(name).is_null()))
        add(2, ~np.isfinite(values) & ~np.asarray(log.column(name).is_null()))
    add(1, (user_at < 0) | (item_at < 0))  # an embedding is missing
    for task in spec["tasks"]:
        labels = np.asarray(log.column(task).cast(pa.float64()).fill_null(np.nan))
        add(4, ~np.isin(labels, (0.0, 1.0)))  # bad_label
    return reason


def _vocabulary(train_values: pa.Array) -> pa.Array:
    counts = pc.value_counts(train_values.cast(pa.string()).drop_null())
    table = pa.table({"value": counts.field("values"), "count": counts.field("counts")})
    order = pc.sort_indices(table, sort_keys=[("count", "descending"), ("value", "ascending")])
    return table.column("value").take(order).combine_chunks()


def _encode(values: pa.Array, vocab: pa.Array) -> np.ndarray:
    index = pc.index_in(values.cast(pa.string()), value_set=vocab)
    known = np.asarray(index.is_valid())
    return np.where(known, np.asarray(index.fill_null(0), dtype=np.int64) + FIRST, OOV)


def _split_ids(log: pa.Table, fractions: list[float]) -> np.ndarray:
    ts = np.asarray(log.column("timestamp").cast(pa.float64()))
    users = np.asarray(log.column("user_id"), dtype=np.int64)
    rows = np.asarray(log.column("__row"))
    order = np.lexsort((rows, users, ts))
    n = len(order)
    first, second = round(n * fractions[0]), round(n * (fractions[0] + fractions[1]))
    split = np.empty(n, dtype=np.int8)
    split[order[:first]], split[order[first:second]], split[order[second:]] = 0, 1, 2
    return split


def _shard_ids(users: pa.Array, num_shards: int) -> np.ndarray:
    encoded = users.cast(pa.string()).dictionary_encode()
    uniques = encoded.dictionary.to_pylist()
    hashes = np.array([zlib.crc32(u.encode()) % num_shards for u in uniques], dtype=np.int64)
    return hashes[np.asarray(encoded.indices, dtype=np.int64)]


def _fixed(values_NL: np.ndarray, dtype: pa.DataType) -> pa.Array:
    flat = pa.array(values_NL.reshape(-1), type=dtype)
    return pa.FixedSizeListArray.from_arrays(flat, values_NL.shape[1])


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _shard_table(ctx: dict, rows: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """The encoded columns of one shard's rows (already sorted by row id), and their splits."""
    from hmoe.platform.data.sequences import cosine, earlier_exposures, sequence_entries

    spec = ctx["spec"]
    out: dict[str, pa.Array] = {name: pa.array(ctx["codes"][name][rows]) for name in CATEGORICAL}
    for name in NUMERIC:
        out[name] = pa.array(ctx["numeric"][name][rows].astype(np.float32))
    user_vec, item_vec = (
        ctx["user_vec"][ctx["user_at"][rows]],
        ctx["item_vec"][ctx["item_at"][rows]],
    )
    out["user_item_cos"] = pa.array(cosine(user_vec, item_vec).astype(np.float32))
    users, items, ts = ctx["users"][rows], ctx["items"][rows], ctx["ts"][rows]
    click = ctx["labels"]["click"][rows]
    keep = click == 1.0
    # the same sparse gather as prepare: only the real (row, slot) entries are computed
    entry_rows, slots, entry_events, length = sequence_entries(
        users, ts, users[keep], ts[keep], ctx["row_ids"][rows][keep], spec["max_len"]
    )
    source = np.flatnonzero(keep)[entry_events]
    shape_NL = (len(rows), spec["max_len"])

    def scatter(values: np.ndarray, dtype: type) -> np.ndarray:
        out_NL = np.full(shape_NL, PAD, dtype=dtype)
        out_NL[entry_rows, slots] = values
        return out_NL

    for part, codes in (("item", out["item_id"]), ("category", out["category"])):
        values = np.asarray(codes, dtype=np.int64)
        out[f"hist__{part}"] = _fixed(scatter(values[source], np.int64), pa.int64())
    delta = (ts[entry_rows] - ts[source]).astype(np.float32)
    out["hist__time_delta"] = _fixed(scatter(delta, np.float32), pa.float32())
    unit = _unit(item_vec)
    sim = np.clip(np.einsum("nd,nd->n", unit[entry_rows], unit[source]), -1.0, 1.0)
    out["hist__similarity"] = _fixed(scatter(sim, np.float32), pa.float32())
    out["hist__length"] = pa.array(length)
    for task in spec["tasks"]:
        out[f"label__{task}"] = pa.array(ctx["labels"][task][rows])
    out["weight"] = pa.array(np.ones(len(rows), dtype=np.float32))
    out["exposure"] = pa.array(earlier_exposures(users, items, ts).astype(np.float32))
    return pa.table(out), ctx["split"][rows]


def baseline_prepare(src: Path, out: Path, rows_per_shard: int = 1_000_000) -> dict:
    """Single-process pyarrow/numpy prepare of a synth output (see the module docstring)."""
    import yaml

    raw_spec = yaml.safe_load((src / "spec.yaml").read_text())
    dim = raw_spec["embeddings"][0]["dim"]
    spec = {
        "tasks": [label["task"] for label in raw_spec["labels"]],
        "max_len": raw_spec["sequences"][0]["max_len"],
        "fractions": raw_spec["split"]["fractions"],
    }
    log = _read_log(src)
    user_keys, user_vec = _side(src / "users", "user_id", "user_emb", dim)
    item_keys, item_vec = _side(src / "items.parquet", "item_id", "item_emb", dim)
    users = np.asarray(log.column("user_id"), dtype=np.int64)
    items = np.asarray(log.column("item_id"), dtype=np.int64)
    user_at, item_at = _lookup(users, user_keys), _lookup(items, item_keys)
    reason = _reasons(log, user_at, item_at, spec)
    if (reason > 0).any():  # quarantine, then drop
        out.joinpath("quarantine").mkdir(parents=True, exist_ok=True)
        bad = pa.array(reason > 0)
        pq.write_table(log.filter(bad), out / "quarantine" / "part-00000.parquet")
        log = log.filter(pc.invert(bad))
        users, items = users[reason == 0], items[reason == 0]
        user_at, item_at = user_at[reason == 0], item_at[reason == 0]
    split = _split_ids(log, spec["fractions"])
    train = pa.array(split == 0)
    codes = {}
    for name in CATEGORICAL:
        column = log.column(name).combine_chunks()
        codes[name] = _encode(column, _vocabulary(column.filter(train)))
    ctx = {
        "spec": spec,
        "codes": codes,
        "numeric": {n: np.asarray(log.column(n), dtype=np.float64) for n in NUMERIC},
        "labels": {t: np.asarray(log.column(t), dtype=np.float32) for t in spec["tasks"]},
        "user_vec": user_vec,
        "item_vec": item_vec,
        "user_at": user_at,
        "item_at": item_at,
        "users": users,
        "items": items,
        "ts": np.asarray(log.column("timestamp").cast(pa.float64())),
        "row_ids": np.asarray(log.column("__row")),
        "split": split,
    }
    num_shards = max(1, math.ceil(log.num_rows / rows_per_shard))
    shard = _shard_ids(log.column("user_id").combine_chunks(), num_shards)
    order = np.lexsort((ctx["row_ids"], shard))
    bounds = np.searchsorted(shard[order], np.arange(num_shards + 1))
    written = {s: 0 for s in SPLITS}
    for s in range(num_shards):
        rows = order[bounds[s] : bounds[s + 1]]
        if not len(rows):
            continue
        table, splits = _shard_table(ctx, rows)
        for split_id, name in enumerate(SPLITS):
            part = table.filter(pa.array(splits == split_id))
            if part.num_rows:
                (out / name).mkdir(parents=True, exist_ok=True)
                path = out / name / f"part-{s:05d}.parquet"
                pq.write_table(part, path, row_group_size=ROW_GROUP_ROWS, compression="zstd")
                written[name] += part.num_rows
    return {"read": len(reason), "quarantined": int((reason > 0).sum()), **written}


# ----------------------------------------------------------------------------- measuring


def _processes() -> tuple[dict[int, list[int]], dict[int, float]]:
    """Children of every process, and every process's CPU seconds so far (user + system)."""
    tree: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    return tree, cpu


def _tree_sample(root: int) -> tuple[int, dict[int, float]]:
    """Bytes of PSS summed over ``root`` and its descendants (RSS where PSS is unreadable), and
    the CPU seconds of each of them."""
    (tree, cpu), total, stack, seen = _processes(), 0, [root], {}
    while stack:
        pid = stack.pop()
        stack.extend(tree.get(pid, []))
        seen[pid] = cpu.get(pid, 0.0)
        for path, field in (
            (f"/proc/{pid}/smaps_rollup", "Pss:"),
            (f"/proc/{pid}/status", "VmRSS:"),
        ):
            try:
                with open(path) as f:
                    line = next((x for x in f if x.startswith(field)), None)
            except OSError:
                continue
            if line is not None:
                total += int(line.split()[1]) * 1024
                break
    return total, seen


def measure(argv: list[str], poll: float, log: Path, attempts: int = 3) -> dict:
    """``_measure_once``, retried when the worker fails (on an overloaded machine a local Ray
    can time out while starting); the result counts the attempts."""
    for attempt in range(1, attempts + 1):
        try:
            return {**_measure_once(argv, poll, log), "attempts": attempt}
        except RuntimeError as err:
            if attempt == attempts:
                raise
            print(f"# retrying after: {err}", flush=True)
    raise AssertionError("unreachable")


def _measure_once(argv: list[str], poll: float, log: Path) -> dict:
    """Run a worker subprocess; its JSON result plus wall seconds, peak tree PSS and the CPU
    seconds of the tree (as last polled: a process's final ``poll`` seconds can be missed)."""
    start = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    peak = [0]
    cpu: dict[int, float] = {}

    def watch() -> None:
        while proc.poll() is None:
            pss, seen = _tree_sample(proc.pid)
            peak[0] = max(peak[0], pss)
            for pid, seconds in seen.items():
                cpu[pid] = max(cpu.get(pid, 0.0), seconds)
            time.sleep(poll)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    stdout, _ = proc.communicate()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed with exit code {proc.returncode}; see {log}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(wall_s=time.perf_counter() - start, peak_bytes=peak[0], cpu_s=sum(cpu.values()))
    return result


def _worker(args: argparse.Namespace) -> None:
    """Inside a measured subprocess: do one thing, print one JSON line."""
    if args.worker == "baseline":
        shutil.rmtree(args.out, ignore_errors=True)
        start = time.perf_counter()
        counts = baseline_prepare(Path(args.src), Path(args.out))
        print(json.dumps({"seconds": time.perf_counter() - start, **counts}))
        return
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    store = int(args.object_store_gb * 2**30) if args.object_store_gb else None
    ray.init(num_cpus=args.cpus, object_store_memory=store, include_dashboard=False,
             log_to_driver=False, configure_logging=False)  # fmt: skip
    start = time.perf_counter()
    if args.worker == "synth":
        from hmoe.platform.data.synth import SynthConfig, synthesize

        cfg = SynthConfig(items=args.items) if args.items else SynthConfig()
        result = synthesize(args.out, args.rows[0], args.seed, cfg, overwrite=True)
        counts = {"rows": result.rows, "click_rate": result.rates["click"]}
    else:
        from hmoe.platform.data import prepare

        manifest = prepare(Path(args.src) / "spec.yaml", args.out)
        counts = {k: manifest["rows"][k] for k in ("read", "written", "quarantined")}
    print(json.dumps({"seconds": time.perf_counter() - start, **counts}))


def _canonical(folder: Path, split: str) -> list[tuple]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted((folder / split).glob("*.parquet")))
    columns = sorted(table.column_names)
    rows = []
    for record in table.select(columns).to_pylist():
        rows.append(tuple(tuple(v) if isinstance(v, list) else v for v in record.values()))
    return sorted(rows, key=repr)


def _machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        model = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), model)
    with open("/proc/meminfo") as f:
        mem_kb = int(next(x for x in f if x.startswith("MemTotal")).split()[1])
    load = os.getloadavg()
    return (
        f"{model}, {os.cpu_count()} cores, {mem_kb / 2**20:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"pyarrow {pa.__version__}; load average at start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _fmt_gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def _worker_argv(args: argparse.Namespace, worker: str, **paths: str | int) -> list[str]:
    argv = [sys.executable, __file__, "--worker", worker, "--cpus", str(args.cpus)]
    if args.object_store_gb:
        argv += ["--object-store-gb", str(args.object_store_gb)]
    if args.items:
        argv += ["--items", str(args.items)]
    for key, value in paths.items():
        argv += [f"--{key}", str(value)]
    return argv


def _io(args: argparse.Namespace) -> tuple[float, Path]:
    return args.poll, Path(args.work) / "last-worker.log"


def _synth(args: argparse.Namespace, rows: int) -> tuple[Path, dict | None]:
    """The synth log for ``rows`` (re-used when already there), with its measurement."""
    src = Path(args.work) / f"synth-{rows}-seed{args.seed}"
    summary = src / "synth.json"
    if summary.is_file() and json.loads(summary.read_text())["rows"] == rows:
        return src, None
    run = measure(_worker_argv(args, "synth", out=src, rows=rows, seed=args.seed), *_io(args))
    return src, run


def _check(args: argparse.Namespace) -> None:
    src, _ = _synth(args, args.check_rows)
    out = Path(args.work) / "check"
    for impl in ("prepare", "baseline"):
        measure(_worker_argv(args, impl, src=src, out=out / impl), *_io(args))
    for split in SPLITS:
        same = _canonical(out / "prepare", split) == _canonical(out / "baseline", split)
        print(f"check {args.check_rows:,} rows, {split}: identical rows = {same}")
        if not same:
            raise SystemExit(f"baseline and prepare disagree on {split}")


def _bench(args: argparse.Namespace, rows: int) -> list[dict]:
    src, synth = _synth(args, rows)
    results = []
    if synth is not None:
        results.append({"rows": rows, "impl": "synth", **synth})
        print(f"synth {rows:,}: {synth['seconds']:.1f} s, peak {_fmt_gb(synth['peak_bytes'])} GiB")
    impls = ["prepare"] if args.no_baseline else ["prepare", "baseline"]
    for repeat in range(args.repeats):
        for impl in impls if repeat % 2 == 0 else impls[::-1]:
            out = Path(args.work) / f"out-{impl}"
            run = measure(_worker_argv(args, impl, src=src, out=out), *_io(args))
            shutil.rmtree(out, ignore_errors=True)
            load = os.getloadavg()[0]
            results.append({"rows": rows, "impl": impl, "repeat": repeat, "load1": load, **run})
            print(
                f"{impl:<8} {rows:>11,} run {repeat}: {run['seconds']:.1f} s "
                f"(process {run['wall_s']:.1f} s, CPU {run['cpu_s']:.1f} s), "
                f"peak {_fmt_gb(run['peak_bytes'])} GiB, "
                f"load {load:.1f}",
                flush=True,
            )
    return results


def _table(results: list[dict]) -> str:
    lines = [
        "| rows | implementation | runs | median s | rows/s | speed-up | process s (median) "
        "| CPU s (median) | peak PSS GiB (max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_key: dict[tuple[int, str], list[dict]] = {}
    for r in results:
        by_key.setdefault((r["rows"], r["impl"]), []).append(r)
    for (rows, impl), runs in sorted(by_key.items()):
        median = statistics.median(r["seconds"] for r in runs)
        base = by_key.get((rows, "baseline"))
        speedup = ""
        if impl == "prepare" and base:
            speedup = f"{statistics.median(r['seconds'] for r in base) / median:.2f}x"
        wall = statistics.median(r["wall_s"] for r in runs)
        peak = max(r["peak_bytes"] for r in runs)
        cpu = statistics.median(r.get("cpu_s", float("nan")) for r in runs)
        lines.append(
            f"| {rows:,} | {impl} | {len(runs)} | {median:.1f} | {rows / median:,.0f} | "
            f"{speedup} | {wall:.1f} | {cpu:.1f} | {_fmt_gb(peak)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="*", type=int, default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="/tmp/hmoe-bench-prepare", help="scratch directory")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--items", type=int, default=None, help="SynthConfig.items")
    parser.add_argument("--object-store-gb", type=float, default=None)
    parser.add_argument("--poll", type=float, default=0.5, help="memory polling interval (s)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--check", action="store_true", help="only check baseline == prepare")
    parser.add_argument("--check-rows", type=int, default=20_000)
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument(
        "--worker", choices=["synth", "prepare", "baseline"], help=argparse.SUPPRESS
    )
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    print(f"# bench_prepare {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {_machine()}")
    print(f"# hmoe commit {_git_commit()}")
    print(f"# Ray CPUs {args.cpus}, object store {args.object_store_gb or 'default'} GB")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.check:
        _check(args)
        return
    results = [r for rows in args.rows for r in _bench(args, rows)]
    print(_table(results))
    print(f"# load average at end {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
