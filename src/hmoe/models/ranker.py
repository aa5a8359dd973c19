"""The top-level ``ModelConfig`` and the single-task heterogeneous multi-embedding MoE (spec §1.1).

Every model of the zoo is the same composition of named parts, differing only in its routing
``MoEPlan``: S embedding sets (one ``FeatureEncoder`` each, dims may differ) -> E experts, each
reading the tokens of exactly ONE set (an expert never mixes sets) -> a ``MixtureCombiner`` with
one mixture per gate (mean / sum / softmax gate; allowed and stop-gradient masks) -> one tower per
task -> logits ``[B, K]``. The single-task plan (this file) has one mixture read by every task's
tower; ``hmoe.models.multitask`` builds the STEM / AME / STEM-AL / MMoE / PLE plans.

Legend for shape suffixes: ``B`` batch, ``F`` fields, ``S`` embedding sets, ``D`` dim,
``E`` experts, ``G`` gates (mixtures), ``K`` tasks, ``X`` any width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.models.combine import CombineConfig, MixtureCombiner
from hmoe.models.common import MLP, MLPConfig
from hmoe.models.embeddings import (
    TABLE_OPTIMIZERS,
    EmbeddingBackend,
    FieldEmbedding,
    FusedTableSettings,
    TableOptimizer,
)
from hmoe.models.experts import (
    ExpertsConfig,
    build_expert,
    expand_counts,
    required_embedding_dim,
)
from hmoe.models.features import FeatureEncoder, FeatureEncoderConfig
from hmoe.schema import FeatureSchema

__all__ = [
    "MODEL_KINDS",
    "EmbeddingSetsConfig",
    "HeteroMoERanker",
    "MoEPlan",
    "ModelConfig",
    "assign_sets",
    "schema_groups",
    "set_base_dims",
    "single_task_plan",
    "token_dims",
]

ModelKind = Literal["single", "stem", "ame", "stem_al", "mmoe", "ple"]
MODEL_KINDS: tuple[str, ...] = ("single", "stem", "ame", "stem_al", "mmoe", "ple")
SetAssignment = Literal["per_expert", "per_kind", "by_interaction", "shared", "explicit"]
# by_interaction: experts that interact field pairs share one set, flat-input experts another
PAIRWISE_KINDS: tuple[str, ...] = ("gwpfm", "ipnn", "fm")
# kinds whose sets belong to a task (or to the shared group): assignment applies within a group
TASK_OWNED_SETS: tuple[str, ...] = ("stem", "stem_al")
# kinds whose experts come in per-task groups plus a shared group
WITH_SHARED_EXPERTS: tuple[str, ...] = ("stem", "ple")


@config
class EmbeddingSetsConfig(Config):
    """The embedding sets and which experts read which set (spec §1.1, §3.4, §4.2).

    ``embedding_dim`` is the base (per-part) dim of every set; ``set_dims`` overrides it per set
    (AME's asymmetric tables; empty: all ``embedding_dim``). A set read by a GwPFM expert gets
    ``dim * G`` (one part per field group). ``assignment`` maps experts (in ``expand_counts``
    order) to sets: ``per_expert`` one set each (the multi-embedding default), ``per_kind`` one
    set per expert kind (an "expert group" sharing a table), ``by_interaction`` two groups as in
    the third-party HMoE code (the field-pair experts GwPFM / IPNN / FM share one set, the
    flat-input DCN V2 / FlatDNN another; stays valid when a search varies the counts),
    ``shared`` one set for all (the single-embedding baseline), ``explicit`` the set index of
    each expert in ``expert_sets``.
    For STEM / STEM-AL the assignment applies within each task's (and the shared) group.

    ``backend`` holds the id tables (one per categorical field and set): ``torch``
    (``nn.Embedding``, trained by the dense optimizer with the whole-table ``loss.embedding_l2``)
    or ``torchrec`` (one TorchRec/FBGEMM table-batched collection per set, see
    ``hmoe.models.torchrec_tables``). Only ``torchrec`` reads the ``table_*`` knobs: the
    optimizer fused into the backward (``rowwise_adagrad``, ``sgd`` or ``adagrad``; ``adam``
    needs CUDA), its ``table_lr`` and ``table_eps``, and ``table_l2``, an L2
    ``table_l2 * |w_r|^2`` on each row a batch touches (``loss.embedding_l2`` then covers only
    the other tables: MNSE digits, similarity buckets, positions).
    """

    embedding_dim: int = 16
    set_dims: tuple[int, ...] = ()
    assignment: SetAssignment = "per_expert"
    expert_sets: tuple[int, ...] = ()
    # where the id tables live: torch (nn.Embedding) or torchrec (fused FBGEMM tables)
    backend: EmbeddingBackend = "torch"
    # torchrec only: the optimizer fused into the backward (adam needs CUDA)
    table_optimizer: TableOptimizer = "rowwise_adagrad"
    # torchrec only: the tables' learning rate (constant; the train schedule does not move it)
    table_lr: float = 0.01
    # torchrec only: L2 table_l2 * |w_r|^2 on each row a batch touches, once per step
    table_l2: float = 0.0
    # torchrec only: the optimizer's epsilon
    table_eps: float = 1e-8

    def fused_tables(self) -> FusedTableSettings | None:
        """The ``torchrec`` backend's table settings (``None`` for ``torch``)."""
        if self.backend == "torch":
            return None
        return FusedTableSettings(
            optimizer=self.table_optimizer, lr=self.table_lr, l2=self.table_l2, eps=self.table_eps
        )

    def __post_init__(self) -> None:
        if self.table_optimizer not in TABLE_OPTIMIZERS:
            raise ConfigError(
                f"unknown table_optimizer {self.table_optimizer!r}; valid: {list(TABLE_OPTIMIZERS)}"
            )
        if not (self.table_lr > 0.0 and self.table_eps > 0.0 and self.table_l2 >= 0.0):
            raise ConfigError("table_lr and table_eps must be > 0 and table_l2 >= 0")
        if 2.0 * self.table_lr * self.table_l2 >= 1.0:
            # the L2 step shrinks a touched row by 1 - 2 lr l2: at 1 it would zero or flip it
            raise ConfigError(
                f"2 * table_lr * table_l2 must be < 1, got {2.0 * self.table_lr * self.table_l2}"
            )
        defaults = EmbeddingSetsConfig.__dataclass_fields__
        changed = [
            name
            for name in ("table_optimizer", "table_lr", "table_l2", "table_eps")
            if getattr(self, name) != defaults[name].default
        ]
        if self.backend == "torch" and changed:
            raise ConfigError(
                f"embedding.{', embedding.'.join(changed)} is read only with "
                "embedding.backend='torchrec'"
            )
        if self.embedding_dim < 1 or any(d < 1 for d in self.set_dims):
            raise ConfigError("embedding_dim and every set_dims entry must be >= 1")
        if (self.assignment == "explicit") != bool(self.expert_sets):
            raise ConfigError(
                "expert_sets is read only with assignment='explicit', and that needs it non-empty"
            )
        used = sorted(set(self.expert_sets))
        if used and used != list(range(len(used))):
            raise ConfigError(
                f"expert_sets must use every set 0..S-1, got {list(self.expert_sets)}"
            )


@config
class ModelConfig(Config):
    """The whole model: ``build(ModelConfig, FeatureSchema)`` in ``hmoe.models.zoo`` reads it.

    ``kind``: ``single`` (heterogeneous multi-embedding MoE; with several tasks in the schema,
    one tower per task on the shared mixture = shared-bottom), ``stem`` (a shared and a set per
    task, All-Forward-Task-specific-Backward gates), ``ame`` (asymmetric multi-embedding: sets of
    different dims, one gate per task over all experts), ``stem_al`` (auxiliary tasks' experts
    read by the main tasks through stop-gradient), ``mmoe``, ``ple`` (one level).

    ``experts`` is the mix of the single model, MMoE and AME, and of EACH task's specific experts
    in STEM, STEM-AL and PLE; ``shared_experts`` is the shared mix of STEM and PLE (null
    elsewhere). ``auxiliary_tasks`` (STEM-AL only): the auxiliary task names (empty: every task
    but the first). ``combine`` mixes the experts for each gate; ``tower`` is each task's MLP
    before its logit. ``use_compile`` wraps the built model in ``torch.compile``.
    ``use_sparse_gradients`` makes the id tables (the big ones) produce sparse gradients: train
    ``sparse_parameters()`` with ``torch.optim.SparseAdam`` (lazy Adam: only the rows in the
    batch move) and the rest with Adam; it skips the whole-table zero-fill, gradient and Adam
    update per step, and cannot be combined with a whole-table ``loss.embedding_l2``. Only
    callers that build that optimizer pair use it (``benchmarks/bench_models.py``); ``hmoe
    train`` refuses it (``ExperimentConfig``).
    """

    kind: ModelKind = "single"
    encoder: FeatureEncoderConfig = FeatureEncoderConfig()
    embedding: EmbeddingSetsConfig = EmbeddingSetsConfig()
    experts: ExpertsConfig = ExpertsConfig()
    shared_experts: ExpertsConfig | None = None
    auxiliary_tasks: tuple[str, ...] = ()
    combine: CombineConfig = CombineConfig()
    tower: MLPConfig = MLPConfig()
    use_compile: bool = False
    use_sparse_gradients: bool = False

    def __post_init__(self) -> None:
        if (self.kind in WITH_SHARED_EXPERTS) != (self.shared_experts is not None):
            raise ConfigError(
                f"shared_experts is required by kinds {list(WITH_SHARED_EXPERTS)} and must be "
                f"null for the others (kind={self.kind!r})"
            )
        if self.auxiliary_tasks and self.kind != "stem_al":
            raise ConfigError(f"auxiliary_tasks is read only by kind 'stem_al', not {self.kind!r}")
        if self.kind in TASK_OWNED_SETS and self.embedding.assignment == "explicit":
            raise ConfigError(
                f"kind {self.kind!r} gives every task its own set(s); assignment 'explicit' "
                "would let a set cross tasks (use per_expert, per_kind or shared)"
            )
        if self.kind in TASK_OWNED_SETS and self.combine.gate_source == "expert_inputs":
            raise ConfigError(
                f"kind {self.kind!r} needs combine.gate_source='vector': a gate fed by another "
                "task's set would send this task's gradient into that set"
            )
        refused = [o for o in _TORCH_TABLE_OPTIONS if getattr(self, o)]
        if self.embedding.backend == "torchrec" and refused:
            raise ConfigError(
                f"model.{refused[0]}=true needs model.embedding.backend='torch': with 'torchrec' "
                f"{_TORCH_TABLE_OPTIONS[refused[0]]}; set model.embedding.backend=torch or "
                f"model.{refused[0]}=false"
            )
        if self.kind == "ame" and self.embedding.assignment == "shared":
            raise ConfigError("AME needs several embedding sets (assignment != 'shared')")


# options of the torch backend's tables, and why the torchrec backend cannot offer them
_TORCH_TABLE_OPTIONS: dict[str, str] = {
    "use_compile": "torch.compile around FBGEMM's fused tables (updated inside the backward) "
    "is not supported",
    "use_sparse_gradients": "the tables produce no gradient at all: FBGEMM already updates only "
    "the rows a batch touches, inside the backward",
}


@dataclasses.dataclass(frozen=True)
class MoEPlan:
    """The routing of one model (internal; built from a ``ModelConfig`` and the schema).

    Attributes:
        set_names: a name per embedding set (``set0``, ``shared``, ``task:click`` ...).
        set_base_dims: the base dim of each set (before GwPFM's ``* G``).
        expert_kinds: the kind of each expert.
        expert_templates: the ``ExpertsConfig`` each expert takes its template from.
        expert_sets: the set each expert reads.
        expert_owners: the task owning each expert (``None``: shared).
        allowed: ``[G][E]`` which experts each gate mixes.
        detached: ``[G][E]`` which experts enter a gate through stop-gradient.
        gate_sets: per gate, the sets whose flattened tokens form its input.
        tower_gates: per task, the gate (mixture) its tower reads.
    """

    set_names: tuple[str, ...]
    set_base_dims: tuple[int, ...]
    expert_kinds: tuple[str, ...]
    expert_templates: tuple[ExpertsConfig, ...]
    expert_sets: tuple[int, ...]
    expert_owners: tuple[str | None, ...]
    allowed: tuple[tuple[bool, ...], ...]
    detached: tuple[tuple[bool, ...], ...]
    gate_sets: tuple[tuple[int, ...], ...]
    tower_gates: tuple[int, ...]


def assign_sets(kinds: Sequence[str], embedding: EmbeddingSetsConfig) -> tuple[int, ...]:
    """The set index of each expert (``kinds`` in build order) under ``embedding.assignment``."""
    if embedding.assignment == "per_expert":
        return tuple(range(len(kinds)))
    if embedding.assignment == "shared":
        return (0,) * len(kinds)
    if embedding.assignment in ("per_kind", "by_interaction"):
        if embedding.assignment == "per_kind":
            keys = list(kinds)
        else:
            keys = ["pairwise" if k in PAIRWISE_KINDS else "flat" for k in kinds]
        order = list(dict.fromkeys(keys))
        return tuple(order.index(k) for k in keys)
    if len(embedding.expert_sets) != len(kinds):
        raise ConfigError(
            f"embedding.expert_sets has {len(embedding.expert_sets)} entries for "
            f"{len(kinds)} experts {list(kinds)}"
        )
    return embedding.expert_sets


def schema_groups(schema: FeatureSchema) -> tuple[str, ...]:
    """The distinct field groups of the schema, in first-appearance order (GwPFM's ``G``)."""
    fields = (*schema.categorical, *schema.numeric, *schema.similarity, *schema.sequences)
    return tuple(dict.fromkeys(f.group for f in fields))


def set_base_dims(embedding: EmbeddingSetsConfig, num_sets: int) -> tuple[int, ...]:
    """Each set's base dim: ``set_dims`` when given (one per set), else ``embedding_dim``."""
    if not embedding.set_dims:
        return (embedding.embedding_dim,) * num_sets
    if len(embedding.set_dims) != num_sets:
        raise ConfigError(
            f"embedding.set_dims has {len(embedding.set_dims)} entries but the model has "
            f"{num_sets} embedding sets"
        )
    return embedding.set_dims


def single_task_plan(config: ModelConfig, schema: FeatureSchema) -> MoEPlan:
    """One pool of sets and experts, one mixture read by every task's tower."""
    kinds = expand_counts(config.experts.counts)
    sets = assign_sets(kinds, config.embedding)
    num_sets = max(sets) + 1
    num_experts = len(kinds)
    return MoEPlan(
        set_names=tuple(f"set{s}" for s in range(num_sets)),
        set_base_dims=set_base_dims(config.embedding, num_sets),
        expert_kinds=kinds,
        expert_templates=(config.experts,) * num_experts,
        expert_sets=sets,
        expert_owners=(None,) * num_experts,
        allowed=((True,) * num_experts,),
        detached=((False,) * num_experts,),
        gate_sets=(tuple(range(num_sets)),),
        tower_gates=(0,) * schema.num_tasks,
    )


def token_dims(plan: MoEPlan, schema: FeatureSchema) -> list[int]:
    """Each set's token dim: its base dim, or ``base * G`` when a GwPFM expert reads it."""
    groups = schema_groups(schema)
    dims = []
    for index, base in enumerate(plan.set_base_dims):
        kinds = [k for k, s in zip(plan.expert_kinds, plan.expert_sets, strict=True) if s == index]
        dims.append(max([base] + [required_embedding_dim(k, base, groups) for k in kinds]))
    return dims


def _make_id_tables_sparse(encoders: nn.ModuleList) -> None:
    """Id tables emit sparse gradients (only the looked-up rows), see ``use_sparse_gradients``."""
    for encoder in encoders:
        for module in encoder.modules():
            if isinstance(module, FieldEmbedding):
                module.table.sparse = True


class HeteroMoERanker(nn.Module):
    """Heterogeneous multi-embedding MoE ranker: sets -> experts -> mixture(s) -> towers.

    The single-task model of the paper (spec §1.1): every feature is looked up in S independent
    embedding sets, each expert (GwPFM / IPNN / DCN V2 / FlatDNN / FM, then its MLP) interacts
    the tokens of its own set only, the experts are combined by mean, sum or a softmax gate, and
    each task's tower maps the mixture to a logit. Subclasses change only ``make_plan``.

    Args:
        config: the model configuration (``kind`` must match the class, see ``zoo.build``).
        schema: the dataset's feature schema; tasks are its ``tasks``, in order.

    Example:
        >>> from hmoe.models.testing import random_batch, tiny_schema
        >>> schema = tiny_schema()
        >>> model = HeteroMoERanker(ModelConfig(), schema)
        >>> batch = random_batch(schema, 4, torch.Generator().manual_seed(0))
        >>> model(batch).shape
        torch.Size([4, 1])
    """

    def __init__(self, config: ModelConfig, schema: FeatureSchema) -> None:
        super().__init__()
        self.config, self.schema = config, schema
        self.tasks: tuple[str, ...] = schema.tasks
        plan = self.make_plan(config, schema)
        self.plan = plan
        set_dims = token_dims(plan, schema)
        fused_tables = config.embedding.fused_tables()
        self.encoders = nn.ModuleList(
            FeatureEncoder(config.encoder, schema, dim, fused_tables) for dim in set_dims
        )
        if config.use_sparse_gradients:
            _make_id_tables_sparse(self.encoders)
        first = self.encoders[0]
        self.field_names: tuple[str, ...] = first.field_names
        self.experts = nn.ModuleList(
            build_expert(kind, template, first.num_fields, set_dims[s], first.field_groups)
            for kind, template, s in zip(
                plan.expert_kinds, plan.expert_templates, plan.expert_sets, strict=True
            )
        )
        self._gate_inputs_shared = len(set(plan.gate_sets)) == 1
        self.combiner = self._build_combiner(
            config.combine, [first.num_fields * d for d in set_dims]
        )
        self.towers = nn.ModuleList(
            _tower(self.combiner.output_dim, config.tower) for _ in self.tasks
        )

    def _build_combiner(self, config: CombineConfig, flat_dims: list[int]) -> MixtureCombiner:
        """The mixtures, with gate inputs sized from each set's flattened tokens."""
        plan = self.plan
        if config.gate_source == "expert_inputs":
            gate_input_dims = [flat_dims[s] for s in plan.expert_sets]
        else:
            gate_sets = plan.gate_sets[:1] if self._gate_inputs_shared else plan.gate_sets
            gate_input_dims = [sum(flat_dims[s] for s in sets) for sets in gate_sets]
        return MixtureCombiner(
            config,
            [expert.output_dim for expert in self.experts],
            num_gates=len(plan.allowed),
            gate_input_dims=gate_input_dims,
            allowed=plan.allowed,
            detached=plan.detached,
        )

    @staticmethod
    def make_plan(config: ModelConfig, schema: FeatureSchema) -> MoEPlan:
        """The routing of this model class (the single-task plan here)."""
        if config.kind != "single":
            raise ConfigError(
                f"HeteroMoERanker builds kind 'single', got {config.kind!r} (use zoo.build)"
            )
        return single_task_plan(config, schema)

    # --- parts of the forward pass, public for the analysis tools -------------------------------

    @property
    def num_sets(self) -> int:
        return len(self.encoders)

    @property
    def set_names(self) -> tuple[str, ...]:
        return self.plan.set_names

    @property
    def expert_kinds(self) -> tuple[str, ...]:
        return self.plan.expert_kinds

    @property
    def expert_sets(self) -> tuple[int, ...]:
        return self.plan.expert_sets

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The id tables whose gradients are sparse (empty unless ``use_sparse_gradients``)."""
        return [
            module.weight
            for module in self.modules()
            if isinstance(module, nn.Embedding) and module.sparse
        ]

    def fused_table_parameters(self) -> list[nn.Parameter]:
        """The ``torchrec`` backend's id tables: FBGEMM updates them in the backward, so no
        other optimizer may hold them (empty with the ``torch`` backend)."""
        return [
            p
            for encoder in self.encoders
            if encoder.id_tables is not None
            for p in encoder.id_tables.parameters()
        ]

    def fused_optimizers(self) -> list[Any]:
        """Per set with fused tables, its TorchRec ``KeyedOptimizer`` (lr, state, state_dict)."""
        return [e.id_tables.fused_optimizer() for e in self.encoders if e.id_tables is not None]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (train these with a dense optimizer): neither sparse nor fused."""
        skip = {id(p) for p in (*self.sparse_parameters(), *self.fused_table_parameters())}
        return [p for p in self.parameters() if id(p) not in skip]

    def set_tokens(self, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The tokens of every embedding set: S tensors ``[B, F, D_s]``."""
        return [encoder(batch) for encoder in self.encoders]

    def expert_outputs(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each expert on its own set's tokens: E tensors ``[B, X_e]``."""
        return [
            expert(tokens[s]) for expert, s in zip(self.experts, self.plan.expert_sets, strict=True)
        ]

    def gate_inputs(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The combiner's gate inputs (empty unless ``combine.method == 'gate'``)."""
        if self.combiner.method != "gate":
            return []
        flat = [t.flatten(1) for t in tokens]
        if self.config.combine.gate_source == "expert_inputs":
            return [flat[s] for s in self.plan.expert_sets]
        gate_sets = self.plan.gate_sets[:1] if self._gate_inputs_shared else self.plan.gate_sets
        return [
            flat[sets[0]] if len(sets) == 1 else torch.cat([flat[s] for s in sets], dim=1)
            for sets in gate_sets
        ]

    def gate_weights(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The mixture weights ``[B, G, E]`` (G = 1 for the single-task model, else per task)."""
        tokens = self.set_tokens(batch)
        batch_size = tokens[0].shape[0]
        return self.combiner.gate_weights(self.gate_inputs(tokens), batch_size=batch_size)

    def attention_weights(self, batch: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per set, per sequence feature, the pooling weights over the history ``[B, L]``."""
        return [encoder.attention_weights(batch) for encoder in self.encoders]

    def embedding_tables(self) -> list[dict[str, torch.Tensor]]:
        """Per set, the detached token matrix of every value of each one-token field."""
        return [encoder.embedding_tables() for encoder in self.encoders]

    def temporal_tables(self) -> list[dict[str, torch.Tensor]]:
        """Per set, each TIM sequence's detached temporal-encoding table."""
        return [encoder.temporal_tables() for encoder in self.encoders]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """A Batch (see ``hmoe.schema``) -> logits ``[B, K]`` in ``schema.tasks`` order."""
        tokens = self.set_tokens(batch)
        mixtures_BGX = self.combiner(self.expert_outputs(tokens), self.gate_inputs(tokens))
        # unbind, not indexing: each index's backward zero-fills a whole [B, G, X]
        per_gate = mixtures_BGX.unbind(1)
        logits = [
            tower(per_gate[gate])
            for tower, gate in zip(self.towers, self.plan.tower_gates, strict=True)
        ]
        return torch.cat(logits, dim=1)


def _tower(input_dim: int, config: MLPConfig) -> nn.Sequential:
    """A task's tower: its MLP, then one logit."""
    mlp = MLP(input_dim, config)
    return nn.Sequential(mlp, nn.Linear(mlp.output_dim, 1))
