"""The report's prepared datasets, each prepared once into ``ctx.work`` by ``hmoe data prepare``.

``ml-100k-q1`` is the shipped ml-100k spec with only the ``click`` label (the Q1 protocol is
single-task; the shipped spec also carries ``five_star`` for multi-task use); ``ml-100k-q1b`` is
the shipped ``ml-100k-returning`` spec (protocol Q1b: split per user in time) with the same
single label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


DERIVED = {"ml-100k-q1": _q1_spec, "ml-100k-q1b": _q1b_spec}
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
        spec_path.write_text(yaml.safe_dump(DERIVED[name](), sort_keys=False))
        prepare(spec_path, out, base_dir=SPECS_DIR)
    elif name in SHIPPED:
        prepare(SPECS_DIR / f"{name}.yaml", out)
    else:
        raise ValueError(f"unknown report dataset {name!r}; valid: {[*DERIVED, *SHIPPED]}")
    return out
