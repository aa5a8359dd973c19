"""The report's prepared datasets, each prepared once into ``ctx.work`` by ``hmoe data prepare``.

``ml-100k-q1`` is the shipped ml-100k spec with only the ``click`` label (the Q1 protocol is
single-task; the shipped spec also carries ``five_star`` for multi-task use); ``ml-100k-q1b`` is
the shipped ``ml-100k-returning`` spec (protocol Q1b: split per user in time) with the same
single label. ``ml-100k-20k`` is Q1 on 20,000 ratings of ml-100k drawn uniformly without
replacement (seed 0, file order kept; the side tables whole): the small-data check of the
``hmoe`` preset. The draw is written into ``ctx.work`` before preparing, so the same rows come
back on every machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from repro.common import Context

SPECS_DIR = Path(__file__).resolve().parents[2] / "src" / "hmoe" / "platform" / "data" / "specs"


def _spec_dict(name: str) -> dict[str, Any]:
    return yaml.safe_load((SPECS_DIR / f"{name}.yaml").read_text())


def _click_only(shipped: str, name: str) -> dict[str, Any]:
    spec = _spec_dict(shipped)
    spec["name"] = name
    spec["labels"] = [label for label in spec["labels"] if label["task"] == "click"]
    return spec


def _q1_spec() -> dict[str, Any]:
    return _click_only("ml-100k", "ml-100k-q1")


def _q1b_spec() -> dict[str, Any]:
    return _click_only("ml-100k-returning", "ml-100k-q1b")


SMALL = "ml-100k-20k"
SMALL_ROWS = 20_000
SMALL_SEED = 0


def write_sample(source: Path, target: Path, *, rows: int, seed: int) -> None:
    """``rows`` data lines of the delimited file ``source`` (header kept), drawn uniformly
    without replacement with ``seed`` and kept in file order, written to ``target``."""
    header, *lines = source.read_text().splitlines()
    if rows > len(lines):
        raise ValueError(f"{source} has {len(lines)} rows, fewer than the {rows} asked for")
    keep = np.sort(np.random.default_rng(seed).choice(len(lines), size=rows, replace=False))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join([header, *(lines[i] for i in keep)]) + "\n")


def _small_spec(ctx: Context) -> dict[str, Any]:
    spec = _q1_spec()
    spec["name"] = SMALL
    (log,) = spec["log"]["paths"]
    source = Path(log.replace("${HMOE_DATA_ROOT}", str(Path(ctx.data_root).resolve())))
    target = ctx.work / "samples" / SMALL / source.name
    write_sample(source, target, rows=SMALL_ROWS, seed=SMALL_SEED)
    spec["log"]["paths"] = [str(target)]
    return spec


DERIVED = {
    "ml-100k-q1": lambda ctx: _q1_spec(),
    "ml-100k-q1b": lambda ctx: _q1b_spec(),
    SMALL: _small_spec,
}
SHIPPED = ("ml-100k", "criteo_deeplight_tiny", "adult", "open_bandit_small")


def prepared(ctx: Context, name: str) -> Path:
    """The prepared directory of ``name`` (a shipped spec or a derived one), made if missing
    (a ``cached_only`` context only renders stored runs: it gets the path, nothing is made)."""
    from hmoe.platform.data import prepare

    out = ctx.work / "data" / name
    if ctx.cached_only or (out / "manifest.json").exists():
        return out
    ctx.log(f"preparing {name} -> {out}")
    if name in DERIVED:
        spec_path = ctx.work / "specs" / f"{name}.yaml"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(yaml.safe_dump(DERIVED[name](ctx), sort_keys=False))
        prepare(spec_path, out, base_dir=SPECS_DIR)
    elif name in SHIPPED:
        prepare(SPECS_DIR / f"{name}.yaml", out)
    else:
        raise ValueError(f"unknown report dataset {name!r}; valid: {[*DERIVED, *SHIPPED]}")
    return out
