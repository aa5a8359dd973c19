"""Heterogeneous interaction experts (paper §3.4–3.5): GwPFM, IPNN, DCN V2, FlatDNN and FM.

The DCN V2 cross network and its config live in ``hmoe.models.cross`` (re-exported here).

An expert is an explicit interaction over ONE embedding set's field tokens ``[B, F, D]`` followed
by its own MLP; extra dense inputs (e.g. a sequence encoder's output) are concatenated to the
interaction output before that MLP. An expert never mixes embedding sets: the caller hands it
the tokens of its own set. The mix is declared as counts per kind (``ExpertsConfig.counts``),
a fixed-size representation a search can vary.

Legend: ``B`` batch, ``F`` fields, ``D`` token dim, ``P`` field pairs, ``G`` field groups,
``X`` any width.
"""

from __future__ import annotations

import typing
from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from hmoe.config import Config, ConfigError, FrozenMap, config
from hmoe.models.common import MLP, MLPConfig
from hmoe.models.cross import CrossNetworkV2, DCNV2Config, FlatCross

__all__ = [
    "EXPERT_KINDS",
    "CrossNetworkV2",
    "DCNV2Config",
    "Expert",
    "ExpertKind",
    "ExpertsConfig",
    "FMConfig",
    "FMInteraction",
    "FlatConfig",
    "FlatInteraction",
    "GwPFMConfig",
    "GwPFMInteraction",
    "IPNNConfig",
    "InnerProductInteraction",
    "build_expert",
    "expand_counts",
    "expert_config",
    "group_indices",
    "required_embedding_dim",
]

# the kinds the models implement, in build order; as the key type of ``ExpertsConfig.counts``
# it fixes the paths ``apply_overrides`` takes (``model.experts.counts.fm`` whether or not the
# preset sets fm), so ``--set`` and a search space accept exactly the same keys
ExpertKind = Literal["gwpfm", "ipnn", "dcnv2", "mlp", "fm"]
EXPERT_KINDS: tuple[str, ...] = typing.get_args(ExpertKind)


@config
class GwPFMConfig(Config):
    """Group-weighted Part-aware FM: ``sum_{i<j} r[g(i), g(j)] * (v_{i, g(j)} * v_{j, g(i)})``.

    The expert's token dim must be ``d * G`` (``required_embedding_dim``): part ``g`` of field i
    is the ``d``-slice it uses when meeting a field of group ``g``.
    """

    mlp: MLPConfig = MLPConfig()
    pair_weight_init: float = 1.0  # r starts as plain FFM-style part-aware FM
    pair_weight_l2: float = 0.0  # L2 on r, added to the loss through regularization_loss()
    use_linear: bool = False  # FwFM-style linear term sum_f <w_f, v_f> appended as one feature


@config
class IPNNConfig(Config):
    """IPNN: the ``F (F - 1) / 2`` pairwise inner products (ME version), optionally + flat."""

    mlp: MLPConfig = MLPConfig()
    include_flat: bool = False  # also feed the flat field tokens to the MLP


@config
class FlatConfig(Config):
    """FlatDNN: the concatenated field tokens go straight into the MLP."""

    mlp: MLPConfig = MLPConfig()


@config
class FMConfig(Config):
    """FM's second-order vector ``0.5 * ((sum_f v_f)^2 - sum_f v_f^2)`` then the MLP (DeepFM)."""

    mlp: MLPConfig = MLPConfig()


ExpertKindConfig = GwPFMConfig | IPNNConfig | DCNV2Config | FlatConfig | FMConfig


@config
class ExpertsConfig(Config):
    """The expert mix: how many experts of each kind, and one template config per kind.

    ``counts`` keys are kinds from ``EXPERT_KINDS`` (``mlp`` is FlatDNN); missing kinds count 0.
    Experts are ordered by ``EXPERT_KINDS`` then by index (``expand_counts``).
    """

    counts: Mapping[ExpertKind, int] = FrozenMap({"gwpfm": 1, "ipnn": 1, "dcnv2": 1, "mlp": 1})
    gwpfm: GwPFMConfig = GwPFMConfig()
    ipnn: IPNNConfig = IPNNConfig()
    dcnv2: DCNV2Config = DCNV2Config()
    mlp: FlatConfig = FlatConfig()
    fm: FMConfig = FMConfig()

    def __post_init__(self) -> None:
        negative = {k: v for k, v in self.counts.items() if v < 0}
        if negative:
            raise ConfigError(f"counts: expert counts must be >= 0, got {negative}")
        if sum(self.counts.values()) == 0:
            raise ConfigError(
                f"counts: the mix has no expert at all ({dict(self.counts)}); "
                "give at least one kind a count >= 1"
            )


def expand_counts(counts: Mapping[str, int]) -> tuple[str, ...]:
    """The expert kinds in build order, e.g. ``{"mlp": 2, "gwpfm": 1}`` -> gwpfm, mlp, mlp."""
    return tuple(kind for kind in EXPERT_KINDS for _ in range(counts.get(kind, 0)))


def expert_config(experts: ExpertsConfig, kind: str) -> ExpertKindConfig:
    """The template config of one kind."""
    if kind not in EXPERT_KINDS:
        raise ConfigError(f"unknown expert kind {kind!r}; valid: {EXPERT_KINDS}")
    return getattr(experts, kind)


def group_indices(field_groups: Sequence[Hashable]) -> tuple[int, ...]:
    """Map per-field group labels to ``0..G-1`` in order of first appearance."""
    index: dict[Hashable, int] = {}
    return tuple(index.setdefault(g, len(index)) for g in field_groups)


def required_embedding_dim(kind: str, base_dim: int, field_groups: Sequence[Hashable]) -> int:
    """The token dim an expert of ``kind`` needs when its part/field dim is ``base_dim``."""
    if kind not in EXPERT_KINDS:
        raise ConfigError(f"unknown expert kind {kind!r}; valid: {EXPERT_KINDS}")
    if kind == "gwpfm":
        return base_dim * len(set(field_groups))
    return base_dim


def _pair_indices(num_fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.triu_indices(num_fields, num_fields, offset=1)
    return i, j


class FlatInteraction(nn.Module):
    """``[B, F, D] -> [B, F * D]``."""

    def __init__(self, num_fields: int, embedding_dim: int) -> None:
        super().__init__()
        self.output_dim = num_fields * embedding_dim

    def forward(self, tokens_BFD: torch.Tensor) -> torch.Tensor:
        return tokens_BFD.flatten(1)


class FMInteraction(nn.Module):
    """FM second-order vector ``[B, F, D] -> [B, D]``."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.output_dim = embedding_dim

    def forward(self, tokens_BFD: torch.Tensor) -> torch.Tensor:
        square_of_sum = tokens_BFD.sum(dim=1).square()
        sum_of_square = tokens_BFD.square().sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square)


class InnerProductInteraction(nn.Module):
    """All pairwise inner products ``<v_i, v_j>, i < j``: ``[B, F, D] -> [B, P (+ F * D)]``."""

    def __init__(self, num_fields: int, embedding_dim: int, include_flat: bool) -> None:
        super().__init__()
        left, right = _pair_indices(num_fields)
        self.register_buffer("pair_index", left * num_fields + right, persistent=False)
        self.include_flat = include_flat
        num_pairs = num_fields * (num_fields - 1) // 2
        self.output_dim = num_pairs + (num_fields * embedding_dim if include_flat else 0)
        if self.output_dim == 0:
            raise ValueError("IPNN needs >= 2 fields (or include_flat) to have any output")

    def forward(self, tokens_BFD: torch.Tensor) -> torch.Tensor:
        # one batched Gram matrix beats gathering P token pairs (P ~ F^2 / 2) by ~10x on CPU
        gram_BFF = torch.bmm(tokens_BFD, tokens_BFD.transpose(1, 2))
        products_BP = gram_BFF.flatten(1)[:, self.pair_index]
        if not self.include_flat:
            return products_BP
        return torch.cat([products_BP, tokens_BFD.flatten(1)], dim=1)


class GwPFMInteraction(nn.Module):
    """Group-weighted part-aware FM vector ``[B, F, G * d] -> [B, d (+ 1)]``.

    Fields i < j interact through ``v_{i, g(j)} * v_{j, g(i)}`` (the part of each reserved for the
    other's group), scaled by a learnable strength per unordered group pair ``r[g(i), g(j)]``.
    Only group pairs that occur among the fields get a weight, so every weight gets a gradient.

    Args:
        field_groups: one group label per field (any hashable; mapped by ``group_indices``).
        embedding_dim: the token dim ``G * d``.
        config: the GwPFM settings.

    Example:
        >>> gw = GwPFMInteraction(("user", "item", "item"), 8, GwPFMConfig())
        >>> gw(torch.randn(4, 3, 8)).shape
        torch.Size([4, 4])
    """

    def __init__(
        self, field_groups: Sequence[Hashable], embedding_dim: int, config: GwPFMConfig
    ) -> None:
        super().__init__()
        groups = group_indices(field_groups)
        num_fields, num_groups = len(groups), len(set(groups))
        if num_fields < 2:
            raise ValueError(f"GwPFM needs >= 2 fields, got {num_fields}")
        if embedding_dim % num_groups:
            raise ValueError(
                f"GwPFM token dim {embedding_dim} is not a multiple of the {num_groups} field "
                "groups; size the set with required_embedding_dim"
            )
        self.num_groups, self.part_dim = num_groups, embedding_dim // num_groups
        left, right = _pair_indices(num_fields)
        group_F = torch.tensor(groups)
        low = torch.minimum(group_F[left], group_F[right])
        high = torch.maximum(group_F[left], group_F[right])
        present = torch.unique(low * num_groups + high)
        self.register_buffer("present_pairs", present, persistent=False)
        membership_GF = nn.functional.one_hot(group_F, num_groups).T.to(torch.get_default_dtype())
        self.register_buffer("membership_GF", membership_GF, persistent=False)
        self.pair_weight = nn.Parameter(torch.full((len(present),), config.pair_weight_init))
        self.pair_weight_l2 = config.pair_weight_l2
        self.linear_FD = (
            nn.Parameter(torch.zeros(num_fields, embedding_dim)) if config.use_linear else None
        )
        self.output_dim = self.part_dim + (1 if config.use_linear else 0)

    def forward(self, tokens_BFD: torch.Tensor) -> torch.Tensor:
        # Grouped form of the pair sum, O(F G d) instead of O(F^2 d): with
        # S[a, c] = sum_{i in group a} v_{i, c}, the pairs across groups a != c sum to
        # S[a, c] * S[c, a], and those inside group a to 0.5 * (S[a, a]^2 - sum_i v_{i, a}^2).
        batch, num_fields, _ = tokens_BFD.shape
        parts_BFGd = tokens_BFD.reshape(batch, num_fields, self.num_groups, self.part_dim)
        sums_BGGd = torch.einsum("gf,bfhd->bghd", self.membership_GF, parts_BFGd)
        squares_BGd = torch.einsum("gf,bfgd->bgd", self.membership_GF, parts_BFGd.square())
        cross_BGGd = sums_BGGd * sums_BGGd.transpose(1, 2)
        r_GG = self._pair_matrix()
        phi_Bd = 0.5 * (
            torch.einsum("ac,bacd->bd", r_GG, cross_BGGd)
            - torch.einsum("a,bad->bd", r_GG.diagonal(), squares_BGd)
        )
        if self.linear_FD is None:
            return phi_Bd
        linear_B1 = (tokens_BFD * self.linear_FD).sum(dim=(1, 2)).unsqueeze(1)
        return torch.cat([phi_Bd, linear_B1], dim=1)

    def regularization_loss(self) -> torch.Tensor:
        """``pair_weight_l2 * ||r||^2``; the train wrapper adds it to the loss."""
        return self.pair_weight_l2 * self.pair_weight.square().sum()

    def _pair_matrix(self) -> torch.Tensor:
        """The symmetric ``[G, G]`` strengths built from the learnable present pairs."""
        size = self.num_groups * self.num_groups
        upper = self.pair_weight.new_zeros(size).index_put((self.present_pairs,), self.pair_weight)
        upper_GG = upper.view(self.num_groups, self.num_groups)
        return upper_GG + upper_GG.T - torch.diag(upper_GG.diagonal())

    def group_pair_weights(self) -> torch.Tensor:
        """The symmetric ``[G, G]`` strengths ``r`` (0 where no field pair has those groups)."""
        return self._pair_matrix().detach()


class Expert(nn.Module):
    """An interaction over one embedding set's tokens followed by its own MLP.

    ``stacked``: ``MLP(cat(interaction(tokens), extra))``. ``parallel`` (DCN V2 only):
    ``cat(interaction(tokens), MLP(cat(flatten(tokens), extra)))``.

    Args:
        kind: the expert kind (one of ``EXPERT_KINDS``), kept for reporting.
        interaction: a module ``[B, F, D] -> [B, X]`` with an ``output_dim``.
        mlp_config: the expert's MLP.
        flat_dim: ``F * D`` (the parallel MLP's input without extras).
        extra_dim: width of the extra dense input (0: none is accepted).
        parallel: the parallel structure described above.

    Example:
        >>> expert = build_expert("mlp", ExpertsConfig(), 3, 4, None, extra_dim=2)
        >>> expert(torch.randn(5, 3, 4), torch.randn(5, 2)).shape[1] == expert.output_dim
        True
    """

    def __init__(
        self,
        kind: str,
        interaction: nn.Module,
        mlp_config: MLPConfig,
        *,
        flat_dim: int,
        extra_dim: int = 0,
        parallel: bool = False,
    ) -> None:
        super().__init__()
        if extra_dim < 0:
            raise ValueError(f"extra_dim must be >= 0, got {extra_dim}")
        self.kind, self.interaction = kind, interaction
        self.extra_dim, self.parallel = extra_dim, parallel
        mlp_input = (flat_dim if parallel else interaction.output_dim) + extra_dim
        self.mlp = MLP(mlp_input, mlp_config)
        self.output_dim = self.mlp.output_dim + (interaction.output_dim if parallel else 0)

    def forward(
        self, tokens_BFD: torch.Tensor, extra_BX: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check_extra(extra_BX)
        z_BX = self.interaction(tokens_BFD)
        mlp_in = tokens_BFD.flatten(1) if self.parallel else z_BX
        if extra_BX is not None:
            mlp_in = torch.cat([mlp_in, extra_BX], dim=1)
        out_BX = self.mlp(mlp_in)
        return torch.cat([z_BX, out_BX], dim=1) if self.parallel else out_BX

    def _check_extra(self, extra_BX: torch.Tensor | None) -> None:
        given = 0 if extra_BX is None else extra_BX.shape[-1]
        if given != self.extra_dim:
            raise ValueError(
                f"{self.kind} expert was built for extra_dim={self.extra_dim}, got an extra "
                f"input of width {given}"
            )


def build_expert(
    kind: str,
    config: ExpertsConfig | ExpertKindConfig,
    num_fields: int,
    embedding_dim: int,
    field_groups: Sequence[Hashable] | None = None,
    *,
    extra_dim: int = 0,
) -> Expert:
    """Build one expert of ``kind`` over ``num_fields`` tokens of width ``embedding_dim``.

    Args:
        kind: one of ``EXPERT_KINDS``.
        config: the ``ExpertsConfig`` (its template for ``kind`` is used) or that template.
        num_fields: ``F``.
        embedding_dim: ``D`` of this expert's embedding set (GwPFM: ``d * G``).
        field_groups: one group label per field, read by GwPFM (None: a single group).
        extra_dim: width of the extra dense input concatenated before the MLP.
    """
    cfg = expert_config(config, kind) if isinstance(config, ExpertsConfig) else config
    expected = type(expert_config(ExpertsConfig(), kind))
    if not isinstance(cfg, expected):
        raise ConfigError(f"{kind} expert needs a {expected.__name__}, got {type(cfg).__name__}")
    if num_fields < 1 or embedding_dim < 1:
        raise ValueError(f"need >= 1 field and dim, got F={num_fields}, D={embedding_dim}")
    groups = tuple(field_groups) if field_groups is not None else ("all",) * num_fields
    if len(groups) != num_fields:
        raise ValueError(f"field_groups has {len(groups)} labels for {num_fields} fields")
    flat_dim = num_fields * embedding_dim
    parallel = False
    if isinstance(cfg, GwPFMConfig):
        interaction: nn.Module = GwPFMInteraction(groups, embedding_dim, cfg)
    elif isinstance(cfg, IPNNConfig):
        interaction = InnerProductInteraction(num_fields, embedding_dim, cfg.include_flat)
    elif isinstance(cfg, DCNV2Config):
        interaction = FlatCross(num_fields, embedding_dim, cfg.num_layers, cfg.rank)
        parallel = cfg.structure == "parallel"
    elif isinstance(cfg, FMConfig):
        interaction = FMInteraction(embedding_dim)
    else:
        interaction = FlatInteraction(num_fields, embedding_dim)
    return Expert(
        kind, interaction, cfg.mlp, flat_dim=flat_dim, extra_dim=extra_dim, parallel=parallel
    )
