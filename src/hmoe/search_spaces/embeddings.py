"""The embedding sets: how many (through how experts map to sets) and their dimension."""

from __future__ import annotations

from typing import Any

EMBEDDING_DIMS = (8, 16, 32)
# per_expert: one set per expert (multi-embedding); per_kind: one per expert kind; shared: 1 set
SET_ASSIGNMENTS = ("per_expert", "per_kind", "shared")


def embeddings(trial: Any) -> None:
    """Number of embedding sets (via the expert -> set assignment) and the set dimension."""
    trial.suggest_categorical("model.embedding.assignment", list(SET_ASSIGNMENTS))
    trial.suggest_categorical("model.embedding.embedding_dim", list(EMBEDDING_DIMS))
