"""``hmoe data synth``: realistic synthetic ad-impression logs, generated in parallel with Ray Data.

:func:`synthesize` writes, under ``out_dir``::

    impressions/part-NNNNN.parquet   the log: timestamp, user_id, item_id, category, price_level,
                                     hour, device, age, gender and one 0/1 column per task;
                                     with exposure_inflation > 0 also click_interest_prob and
                                     click_interest (the planted interest, synth_model docstring)
    users/part-NNNNN.parquet         user_id, age, gender, user_emb (pre-trained, noisy view)
    items.parquet                    item_id, category, price_level, item_emb
    spec.yaml                        the dataset spec: ``hmoe data prepare spec.yaml`` reads it
    planted_correlation.npy          [C, P] ground truth of the planted sequence effect
    planted_correlation.json         its definition and parameters
    synth.json                       seed, rows, config, realised rates, the blocks' biases

``planted_correlation.npy[c, p]`` is the additive click logit that one behaviour of category
``c`` at relative position ``p`` contributes to a target of category ``planted.target_category``,
where the behaviours are the user's earlier clicks (the spec's sequence: same user, strictly
earlier, ``only_positive_of: click``) and ``p = 0`` is the most recent one. It equals
``strength * decay**p`` for the target's own category, ``related * strength * decay**p`` for the
other categories of its semantic group (``c % category_groups`` equal), 0 otherwise and 0 for
``p >= positions``. Contributions of several behaviours add up (``synth_model`` docstring).

Each block owns a fixed share of the rows and a disjoint range of users, whose whole history it
generates in time order, so the sequences ``prepare`` derives from the log are exactly the ones
the clicks were sampled with; a block depends only on (seed, block index, config), so the output
is identical for a seed whatever the scheduling, and memory is bounded by ``block_rows``. Each
block calibrates its own task biases (on its own random numbers) so that its expected click,
conversion-given-click and like rates equal the configured ones: small logs then have the
configured rates too, not the rates of their few heaviest users.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmoe.platform.core import storage
from hmoe.platform.core.ray_start import start_ray
from hmoe.platform.data import synth_model as sm
from hmoe.platform.data.synth_model import KNOWN_TASKS, PlantedConfig, SynthConfig

__all__ = ["KNOWN_TASKS", "PlantedConfig", "SynthConfig", "SynthResult", "synthesize"]

SPEC_FILE = "spec.yaml"


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` wrote: the directory, its spec, and the realised label rates."""

    out_dir: Path | str  # a URI for an ``s3://`` output
    spec_path: Path | str
    rows: int
    users: int
    blocks: int
    rates: dict[str, float]
    biases: dict[str, dict[str, float]]  # per task: min / mean / max over the blocks


def synthesize(
    out_dir: str | Path,
    rows: int,
    seed: int,
    config: SynthConfig | None = None,
    *,
    overwrite: bool = False,
) -> SynthResult:
    """Generate ``rows`` impressions with Ray Data and write them, a spec and the ground truth.

    The output appears atomically: everything is written to a sibling staging directory that is
    renamed to ``out_dir`` at the end, so an interrupted run leaves no complete-looking output.

    Args:
        out_dir: the directory to create (must be absent or empty unless ``overwrite``).
        rows: number of impressions (>= 1).
        seed: the seed; the same seed and config give byte-identical Parquet files.
        config: the world and output settings (default ``SynthConfig()``).
        overwrite: replace an existing non-empty ``out_dir``.

    Example:
        >>> synthesize("/tmp/synth", rows=10_000, seed=0)  # doctest: +SKIP
    """
    cfg = config or SynthConfig()
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if storage.is_remote(out_dir):
        return _synthesize_remote(str(out_dir), rows, seed, cfg, overwrite)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite to replace it)")
    users = sm.resolved_users(rows, cfg)
    layouts = sm.plan_blocks(rows, users, cfg.block_rows)
    world = sm.build_world(seed, cfg)
    started = start_ray()  # a Ray of this process's own (shut down at the end), or RAY_ADDRESS's
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        return _write(out, staging, rows, users, layouts, world, seed, cfg)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # no half-written staging folder left behind
        raise
    finally:
        if started:
            import ray

            ray.shutdown()


def _synthesize_remote(
    out: str, rows: int, seed: int, cfg: SynthConfig, overwrite: bool
) -> SynthResult:
    """``synthesize`` into an ``s3://`` prefix: written locally, then uploaded with the spec
    last (the spec's relative paths resolve against the prefix it is read from)."""
    storage.check_reachable(out)
    if storage.list_names(out) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite to replace it)")
    local = Path(tempfile.mkdtemp(prefix="hmoe-synth-"))
    try:
        made = synthesize(local / "out", rows, seed, cfg)
        storage.upload_dir(Path(made.out_dir), out, SPEC_FILE)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return dataclasses.replace(made, out_dir=out, spec_path=storage.join(out, SPEC_FILE))


def _write(
    out: Path,
    staging: Path,
    rows: int,
    users: int,
    layouts: list[sm.BlockLayout],
    world: sm.World,
    seed: int,
    cfg: SynthConfig,
) -> SynthResult:
    (staging / "impressions").mkdir(parents=True)
    (staging / "users").mkdir()
    stats = _run_blocks(staging, layouts, seed, cfg)
    _write_items(staging / "items.parquet", world)
    totals = {task: sum(s[task] for s in stats) for task in cfg.tasks}
    rates = {task: totals[task] / rows for task in cfg.tasks}
    _write_ground_truth(staging, world, cfg)
    _write_spec(staging / SPEC_FILE, cfg)
    summary = {
        "seed": seed,
        "rows": rows,
        "users": users,
        "blocks": len(layouts),
        "config": cfg.to_dict(),
        "biases": {task: _spread([s[f"bias_{task}"] for s in stats]) for task in cfg.tasks},
        "rates": rates,
    }
    (staging / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return SynthResult(
        out_dir=out,
        spec_path=out / SPEC_FILE,
        rows=rows,
        users=users,
        blocks=len(layouts),
        rates=rates,
        biases=summary["biases"],
    )


class _BlockWriter:
    """Ray Data UDF: rebuilds the (seeded) world once per worker, then writes whole blocks."""

    def __init__(
        self, staging: str, layouts: list[sm.BlockLayout], seed: int, cfg: dict[str, Any]
    ) -> None:
        self.cfg = SynthConfig.from_dict(cfg)
        self.staging = Path(staging)
        self.layouts = layouts
        self.seed = seed
        self.world = sm.build_world(seed, self.cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[float]] = {"block": [], "rows": []}
        out.update({task: [] for task in self.cfg.tasks})
        out.update({f"bias_{task}": [] for task in self.cfg.tasks})
        for index in batch["id"]:
            layout = self.layouts[int(index)]
            block = sm.generate_block(self.world, layout, self.seed, self.cfg)
            name = f"part-{layout.index:05d}.parquet"
            _write_table(self.staging / "impressions" / name, block.impressions)
            _write_table(self.staging / "users" / name, block.users)
            out["block"].append(layout.index)
            out["rows"].append(layout.rows)
            for k, task in enumerate(self.cfg.tasks):
                out[task].append(int(block.impressions[task].sum()))
                out[f"bias_{task}"].append(float(block.biases[k]))
        return {key: np.asarray(values) for key, values in out.items()}


def _run_blocks(
    staging: Path, layouts: list[sm.BlockLayout], seed: int, cfg: SynthConfig
) -> list[dict[str, float]]:
    import ray

    workers = max(1, min(len(layouts), int(ray.cluster_resources().get("CPU", 1))))
    # from_items: the block indices live on the driver, so no read task competes with the
    # writer actors for the CPUs (a range() read would deadlock when the actors hold them all)
    items = [{"id": b} for b in range(len(layouts))]
    ds = ray.data.from_items(items, override_num_blocks=len(layouts)).map_batches(
        _BlockWriter,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={
            "staging": str(staging.absolute()),
            "layouts": layouts,
            "seed": seed,
            "cfg": cfg.to_dict(),
        },
    )
    stats = list(ds.iter_rows())
    if sorted(int(s["block"]) for s in stats) != list(range(len(layouts))):
        raise RuntimeError("synth: some blocks were not written")
    return [{k: float(v) if k.startswith("bias_") else int(v) for k, v in s.items()} for s in stats]


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}


def _write_table(path: Path, columns: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, values in columns.items():
        if values.ndim == 2:  # a vector column: list<float32>
            flat = pa.array(values.reshape(-1), type=pa.float32())
            offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
            arrays[name] = pa.ListArray.from_arrays(offsets, flat)
        elif values.dtype == object:
            arrays[name] = pa.array(values.tolist(), type=pa.string())
        else:
            arrays[name] = pa.array(values)
    pq.write_table(pa.table(arrays), path)


def _write_items(path: Path, world: sm.World) -> None:
    n = len(world.item_category)
    _write_table(
        path,
        {
            "item_id": np.arange(n, dtype=np.int64),
            "category": world.item_category,
            "price_level": world.item_price,
            "item_emb": world.item_embeddings,
        },
    )


def _write_ground_truth(staging: Path, world: sm.World, cfg: SynthConfig) -> None:
    p = cfg.planted
    matrix = world.planted[p.target_category, 1:, :]  # [C, P]
    np.save(staging / "planted_correlation.npy", matrix)
    meta = {
        "definition": (
            "matrix[c, p] = additive click logit of one earlier click (behaviour) of category c "
            "at relative position p (0 = most recent) for a target impression of category "
            "target_category; contributions of the behaviours add up"
        ),
        "shape": ["categories", "positions"],
        "target_category": p.target_category,
        "strength": p.strength,
        "decay": p.decay,
        "related": p.related,
        "positions": p.positions,
        "category_group": "category % category_groups",
        "category_groups": cfg.category_groups,
        "matrix": matrix.tolist(),
    }
    (staging / "planted_correlation.json").write_text(json.dumps(meta, indent=2) + "\n")


def spec_dict(cfg: SynthConfig) -> dict[str, Any]:
    """The dataset spec of a synth output (paths relative to the spec's directory)."""
    parquet = "parquet"
    return {
        "name": "synth",
        "log": {"paths": ["impressions"], "format": parquet},
        "side_tables": [
            {
                "table": {"paths": ["users"], "format": parquet},
                "key": "user_id",
                "join_on": "user_id",
                "columns": ["user_emb"],
            },
            {
                "table": {"paths": ["items.parquet"], "format": parquet},
                "key": "item_id",
                "join_on": "item_id",
                "columns": ["item_emb"],
            },
        ],
        "timestamp": {"column": "timestamp", "unit": "s"},
        "user_field": "user_id",
        "item_field": "item_id",
        "categorical": [
            {"name": "user_id", "group": "user"},
            {"name": "item_id", "group": "item"},
            {"name": "category", "group": "item"},
            {"name": "gender", "group": "user"},
            {"name": "device", "group": "context"},
        ],
        "numeric": [
            {"name": "age", "group": "user"},
            {"name": "price_level", "group": "item"},
            {"name": "hour", "group": "context"},
        ],
        "embeddings": [
            {"name": "user_emb", "dim": cfg.embedding_dim},
            {"name": "item_emb", "dim": cfg.embedding_dim},
        ],
        "similarity": [{"name": "user_item_cos", "left": "user_emb", "right": "item_emb"}],
        "labels": [{"task": task} for task in cfg.tasks],
        "sequences": [
            {
                "name": "hist",
                "max_len": cfg.sequence_max_len,
                "item_field": "item_id",
                "category_field": "category",
                "only_positive_of": "click",
                "similarity_embedding": "item_emb",
            },
        ],
        "count_exposures": True,
        "split": {"kind": "temporal", "fractions": list(cfg.split), "tie_break": ["user_id"]},
    }


def _write_spec(path: Path, cfg: SynthConfig) -> None:
    import yaml

    from hmoe.platform.data.spec import spec_from_dict

    data = spec_dict(cfg)
    spec_from_dict(data)  # the spec we write must be one prepare accepts
    header = "# written by `hmoe data synth`; run: hmoe data prepare spec.yaml --out DIR\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
