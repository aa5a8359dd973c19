"""hmoe: a Ray-based experimentation platform for heterogeneous multi-embedding MoE ads rankers.

Importing the package is cheap: torch, Ray and MLflow load only when a submodule needs them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
