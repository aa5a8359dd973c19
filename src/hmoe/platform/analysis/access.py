"""How the analyses reach into a model: only through the explicit methods the rankers expose
(``set_names``, ``encoders``, ``embedding_tables``, ``plan``), never by parsing module names.

Legend for shape suffixes: ``B`` batch, ``K`` tasks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hmoe.models.features import FeatureEncoder
from hmoe.models.losses import bce_per_task, fused_table_parameters
from hmoe.schema import LABELS

__all__ = [
    "embedding_sets",
    "feature_encoders",
    "parameter_groups",
    "shared_parameters",
    "task_losses",
    "unwrap",
]

TASK_SET_PREFIX = "task:"  # the set names STEM / STEM-AL give a task's own tables


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself under DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        else:
            return model


def _set_names(model: nn.Module, count: int) -> tuple[str, ...]:
    names = tuple(getattr(model, "set_names", ()))
    return names if len(names) == count else tuple(f"set{i}" for i in range(count))


def embedding_sets(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """``{set name: {field: table [V, D]}}`` of a ranker (a list per set, named by
    ``set_names``), or of any module whose ``embedding_tables()`` returns that mapping."""
    model = unwrap(model)
    if not callable(getattr(model, "embedding_tables", None)):
        raise ValueError(
            f"{type(model).__name__} does not expose embedding_tables(); the analysis needs "
            "each embedding set's field tables"
        )
    tables = model.embedding_tables()
    if isinstance(tables, Mapping):
        first = next(iter(tables.values()), None)
        if isinstance(first, Mapping) or first is None:
            return {str(k): dict(v) for k, v in tables.items()}
        return {"set0": dict(tables)}  # a single FeatureEncoder: {field: table}
    return {name: dict(t) for name, t in zip(_set_names(model, len(tables)), tables, strict=True)}


def feature_encoders(model: nn.Module) -> dict[str, FeatureEncoder]:
    """``{set name: FeatureEncoder}``: a ranker's ``encoders``, or the model itself when it is
    one encoder."""
    model = unwrap(model)
    if isinstance(model, FeatureEncoder):
        return {"set0": model}
    encoders = getattr(model, "encoders", None)
    if not isinstance(encoders, nn.ModuleList) or not all(
        isinstance(e, FeatureEncoder) for e in encoders
    ):
        raise ValueError(f"{type(model).__name__} exposes no FeatureEncoder per embedding set")
    return dict(zip(_set_names(model, len(encoders)), encoders, strict=True))


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters every task's loss reaches: the embedding sets not owned by one task
    (``task:*`` sets are STEM's / STEM-AL's per-task tables) and the experts with no owner.
    Towers and gates belong to one task each and are left out, and so are the ``torchrec``
    backend's fused id tables."""
    model = unwrap(model)
    encoders = feature_encoders(model)
    params = [
        p
        for name, encoder in encoders.items()
        if not name.startswith(TASK_SET_PREFIX)
        for p in encoder.parameters()
    ]
    plan = getattr(model, "plan", None)
    experts = getattr(model, "experts", None)
    if plan is not None and experts is not None:
        for expert, owner in zip(experts, plan.expert_owners, strict=True):
            if owner is None:
                params.extend(expert.parameters())
    # the torchrec backend's tables: FBGEMM applies their gradient inside the backward, so
    # none is ever materialised (and asking for one would update them); left out
    fused = {id(p) for p in fused_table_parameters(model)}
    return [p for p in params if p.requires_grad and id(p) not in fused]


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The parameters by the part of the model they belong to: ``table {set}/{field}`` (every
    categorical field's id table of every set; the ``torchrec`` backend's fused tables are left
    out, as in ``shared_parameters``) and ``expert {i} {kind} {owner}`` (the owning task, or
    ``shared`` for an expert no task owns)."""
    model = unwrap(model)
    fused = {id(p) for p in fused_table_parameters(model)}
    groups: dict[str, list[nn.Parameter]] = {}
    for set_name, encoder in feature_encoders(model).items():
        for field in encoder.schema.categorical:
            table = encoder.id_table(field.name)
            if isinstance(table, nn.Parameter) and id(table) not in fused:
                groups[f"table {set_name}/{field.name}"] = [table]
    plan = getattr(model, "plan", None)
    experts = getattr(model, "experts", None)
    if plan is not None and experts is not None:
        for i, (expert, kind, owner) in enumerate(
            zip(experts, plan.expert_kinds, plan.expert_owners, strict=True)
        ):
            groups[f"expert {i} {kind} {owner or 'shared'}"] = list(expert.parameters())
    return groups


def task_losses(wrapper: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each task's weighted BCE on ``batch`` with its graph (``TrainWrapper`` reports them
    detached), in the wrapper's task order."""
    model = wrapper.model
    logits_BK = model(batch)
    loss_K = bce_per_task(logits_BK, batch[LABELS], wrapper.sample_weights(batch))
    return {task: loss_K[k] for k, task in enumerate(wrapper.tasks)}
