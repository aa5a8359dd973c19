"""hmoe: a Ray-based experimentation platform for heterogeneous multi-embedding MoE ads rankers.

Importing the package is cheap: torch, Ray and MLflow load only when a submodule needs them.
``hmoe.train(...)`` and ``hmoe.tune(...)`` are loaded on first use.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "train", "tune"]

_LAZY = {"train": "hmoe.platform.api", "tune": "hmoe.platform.search.tune"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hmoe' has no attribute {name!r}")
