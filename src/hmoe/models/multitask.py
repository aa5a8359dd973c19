"""Multi-task heterogeneous multi-embedding MoE: STEM, AME, STEM-AL, MMoE and PLE (spec §4).

All five are ``HeteroMoERanker`` with another routing plan (one gate and one tower per task):

* ``stem`` (STEM-Net, §4.1): a shared set and one set per task; each task's specific experts
  read its set, the shared experts the shared set; task t's gate (input: its set and the shared
  set) mixes ALL experts, the other tasks' specific experts through stop-gradient
  (All-Forward-Task-specific-Backward), the shared ones never detached.
* ``ame`` (§4.2): sets of different dims (``embedding.set_dims``), each with its expert(s);
  every task gates over all experts from all sets; no stop-gradient.
* ``stem_al`` (§4.3): every task owns its set(s) and experts; a main task's gate mixes its own
  experts and the auxiliary tasks' experts through stop-gradient; an auxiliary task's tower
  reads only its own experts.
* ``mmoe``: one pool of experts (usually one shared set), a gate per task over all of them.
* ``ple`` (one extraction level): each task's specific experts plus shared experts; task t's
  gate mixes its own and the shared ones.

Legend for shape suffixes: ``B`` batch, ``S`` sets, ``E`` experts, ``G`` gates, ``K`` tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

from hmoe.config import ConfigError
from hmoe.models.experts import ExpertsConfig, expand_counts
from hmoe.models.ranker import (
    TASK_OWNED_SETS,
    HeteroMoERanker,
    ModelConfig,
    MoEPlan,
    assign_sets,
    set_base_dims,
)
from hmoe.schema import FeatureSchema

__all__ = ["MULTITASK_KINDS", "MultiTaskRanker", "auxiliary_task_names", "multitask_plan"]

MULTITASK_KINDS: tuple[str, ...] = ("stem", "ame", "stem_al", "mmoe", "ple")
SHARED = "shared"

# (owner task or None for shared, template, kinds in build order)
_Group = tuple[str | None, ExpertsConfig, tuple[str, ...]]


def auxiliary_task_names(config: ModelConfig, tasks: Sequence[str]) -> tuple[str, ...]:
    """STEM-AL's auxiliary tasks: ``config.auxiliary_tasks`` or, when empty, all but the first."""
    if len(tasks) < 2:
        raise ConfigError(f"STEM-AL needs a main and >= 1 auxiliary task, got tasks {list(tasks)}")
    auxiliary = config.auxiliary_tasks or tuple(tasks[1:])
    unknown = sorted(set(auxiliary) - set(tasks))
    if unknown:
        raise ConfigError(f"auxiliary_tasks {unknown} are not tasks of the schema {list(tasks)}")
    if set(auxiliary) == set(tasks):
        raise ConfigError("STEM-AL needs at least one main (non-auxiliary) task")
    return auxiliary


def _groups(config: ModelConfig, tasks: Sequence[str]) -> list[_Group]:
    """The expert groups: shared first (when the kind has one), then one per task."""
    groups: list[_Group] = []
    if config.shared_experts is not None:
        shared = config.shared_experts
        groups.append((None, shared, expand_counts(shared.counts)))
    if config.kind in ("mmoe", "ame"):
        groups.append((None, config.experts, expand_counts(config.experts.counts)))
    else:
        kinds = expand_counts(config.experts.counts)
        groups.extend((task, config.experts, kinds) for task in tasks)
    return groups


def _group_sets(config: ModelConfig, groups: list[_Group]) -> tuple[list[int], list[str]]:
    """The set of every expert (in group order) and the set names."""
    if config.kind not in TASK_OWNED_SETS:
        kinds = [k for _, _, group_kinds in groups for k in group_kinds]
        sets = list(assign_sets(kinds, config.embedding))
        return sets, [f"set{s}" for s in range(max(sets) + 1)]
    sets, names = [], []
    for owner, _, kinds in groups:
        local = assign_sets(kinds, config.embedding)
        base = f"task:{owner}" if owner is not None else SHARED
        count = max(local) + 1
        names.extend(base if count == 1 else f"{base}/{j}" for j in range(count))
        sets.extend(len(names) - count + s for s in local)
    return sets, names


def multitask_plan(config: ModelConfig, schema: FeatureSchema) -> MoEPlan:
    """The routing of a multi-task ``kind`` for the schema's tasks (see the module docstring)."""
    if config.kind not in MULTITASK_KINDS:
        raise ConfigError(f"not a multi-task kind: {config.kind!r}; valid: {MULTITASK_KINDS}")
    tasks = schema.tasks
    auxiliary = auxiliary_task_names(config, tasks) if config.kind == "stem_al" else ()
    groups = _groups(config, tasks)
    sets, set_names = _group_sets(config, groups)
    owners = [owner for owner, _, kinds in groups for _ in kinds]
    templates = [template for _, template, kinds in groups for _ in kinds]
    allowed, detached, gate_sets = [], [], []
    for task in tasks:
        row_allowed, row_detached = _gate_row(config.kind, task, owners, auxiliary)
        allowed.append(tuple(row_allowed))
        detached.append(tuple(row_detached))
        if config.kind in TASK_OWNED_SETS:
            own = {task, None} if config.kind == "stem" else {task}
            readable = {s for s, owner in zip(sets, owners, strict=True) if owner in own}
            gate_sets.append(tuple(sorted(readable)))
        else:
            gate_sets.append(tuple(range(len(set_names))))
    return MoEPlan(
        set_names=tuple(set_names),
        set_base_dims=set_base_dims(config.embedding, len(set_names)),
        expert_kinds=tuple(k for _, _, kinds in groups for k in kinds),
        expert_templates=tuple(templates),
        expert_sets=tuple(sets),
        expert_owners=tuple(owners),
        allowed=tuple(allowed),
        detached=tuple(detached),
        gate_sets=tuple(gate_sets),
        tower_gates=tuple(range(len(tasks))),
    )


def _gate_row(
    kind: str, task: str, owners: Sequence[str | None], auxiliary: Sequence[str]
) -> tuple[list[bool], list[bool]]:
    """Which experts task ``task``'s gate mixes, and which of them through stop-gradient."""
    if kind in ("mmoe", "ame"):
        return [True] * len(owners), [False] * len(owners)
    if kind == "ple":
        return [owner in (task, None) for owner in owners], [False] * len(owners)
    if kind == "stem":
        # AFTB: every expert forward, other tasks' specific experts cut backward
        return [True] * len(owners), [owner not in (task, None) for owner in owners]
    if task in auxiliary:
        return [owner == task for owner in owners], [False] * len(owners)
    allowed = [owner == task or owner in auxiliary for owner in owners]
    return allowed, [owner in auxiliary for owner in owners]


class MultiTaskRanker(HeteroMoERanker):
    """A multi-task heterogeneous multi-embedding MoE: STEM, AME, STEM-AL, MMoE or PLE.

    Same parts as ``HeteroMoERanker`` (sets -> experts -> per-task gates -> per-task towers);
    ``config.kind`` selects the routing (module docstring). ``gate_weights`` gives ``[B, K, E]``
    (one gate per task); ``plan.expert_owners`` and ``set_names`` say which task owns what.

    Args:
        config: the model configuration; ``kind`` one of ``MULTITASK_KINDS``.
        schema: the dataset's feature schema; one gate and tower per task in ``schema.tasks``.

    Example:
        >>> import torch
        >>> from hmoe.models.experts import ExpertsConfig
        >>> from hmoe.models.ranker import EmbeddingSetsConfig
        >>> from hmoe.models.testing import random_batch, tiny_schema
        >>> schema = tiny_schema(tasks=("click", "like"))
        >>> cfg = ModelConfig(
        ...     kind="stem",
        ...     embedding=EmbeddingSetsConfig(assignment="shared"),
        ...     shared_experts=ExpertsConfig(counts={"mlp": 1}),
        ... )
        >>> model = MultiTaskRanker(cfg, schema)
        >>> model.set_names
        ('shared', 'task:click', 'task:like')
        >>> model(random_batch(schema, 4, torch.Generator().manual_seed(0))).shape
        torch.Size([4, 2])
    """

    @staticmethod
    def make_plan(config: ModelConfig, schema: FeatureSchema) -> MoEPlan:
        return multitask_plan(config, schema)
