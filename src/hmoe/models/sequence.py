"""Behaviour-sequence encoders: TIM, DIN, DIN+, SASRec-style self-attention, mean pooling.

Every encoder reads behaviour embeddings ``[B, L, D]`` (built by the ``FeatureEncoder`` from the
same embedding set's item / category / similarity tables), the target embedding ``[B, D]`` built
the same way, the history lengths ``[B]`` and the behaviours' time before the target
``[B, L]``, and returns ``num_tokens`` tokens ``[B, T, D]`` plus attention weights ``[B, L]``
over the history (zero at padding; an all-padding history gives zero tokens, never NaN).

Tokens per kind (paper_spec §2.1): ``tim`` paper form ``[u]`` with
``u = sum_i alpha_i (e~_i * v~_t)``; ``tim`` code form ``[u, v~_t, u * v~_t]`` with
``u = Linear(BatchNorm(sum_i alpha_i e~_i))`` (the official TIN tower input); ``din`` ``[u]``;
``din_plus`` ``[u, u * v]`` (DIN + target-aware representation, the TIN repo's DIN+ tower input
without the target itself, which is already a token of its own); ``sasrec`` ``[u]``; ``mean``
``[u]``.

Legend for shape suffixes: ``B`` batch, ``L`` sequence, ``D`` dim, ``T`` tokens, ``H`` heads.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from hmoe.config import Config, ConfigError, config
from hmoe.models.attention import masked_softmax, target_attention
from hmoe.models.common import MLP, Dropout, MLPConfig, batch_norm_rows
from hmoe.models.embeddings import init_embedding_

__all__ = [
    "DINConfig",
    "SASRecConfig",
    "SequenceEncoder",
    "SequenceEncoderConfig",
    "TIMConfig",
    "TimeIntervalConfig",
    "masked_softmax",
    "valid_mask",
]

SequenceKind = Literal["tim", "din", "din_plus", "sasrec", "mean"]
_BLOCK_OF_KIND = {"tim": "tim", "din": "din", "din_plus": "din", "sasrec": "sasrec", "mean": None}
_BLOCKS = ("tim", "din", "sasrec")


@config
class TimeIntervalConfig(Config):
    """Log time-interval buckets for TIM's temporal encoding ([RECON], spec §2.1):
    ``bucket = min(num_buckets - 1, floor(log2(1 + dt / unit_seconds)))``."""

    num_buckets: int = 32  # log2 buckets of the time gap
    unit_seconds: float = 60.0  # the gap that bucket 1 starts at

    def __post_init__(self) -> None:
        if self.num_buckets < 1 or self.unit_seconds <= 0:
            raise ConfigError("TimeIntervalConfig needs num_buckets >= 1 and unit_seconds > 0")


@config
class TIMConfig(Config):
    """TIM: ``time_intervals=None`` encodes the relative position (official code: newest
    behaviour 1, target 0); otherwise log time-interval buckets (target 0, bucket k -> k + 1).
    ``form`` selects the paper's ``sum alpha (e~ * v~)`` or the official code's tokens (its
    BatchNorm, as in the code; a training batch of one sample uses the running statistics)."""

    time_intervals: TimeIntervalConfig | None = None
    form: Literal["paper", "code"] = "paper"


@config
class DINConfig(Config):
    """DIN's activation unit: ``MLP([e, v, e - v, e * v]) -> Linear -> score``;
    ``normalise="softmax"`` as in the DIN code, ``"none"`` as in the DIN paper (raw weights)."""

    attention: MLPConfig = MLPConfig(hidden_dims=(80, 40), activation="sigmoid")
    normalise: Literal["softmax", "none"] = "softmax"


@config
class SASRecConfig(Config):
    """Causal pre-LayerNorm self-attention blocks over the history with a learned position
    embedding (relative to the newest behaviour), then ``pooling``: the newest behaviour's
    output (``last``, SASRec's next-item state) or target-attentive pooling (``target``:
    ``softmax(<h_i, v>/sqrt(D))``-weighted sum of the outputs)."""

    num_layers: int = 2  # self-attention blocks
    num_heads: int = 1  # attention heads per block (divides D)
    ffn_multiplier: int = 1  # feed-forward width as a multiple of D
    dropout: float = 0.2  # in attention and feed-forward
    pooling: Literal["last", "target"] = "last"

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.num_heads < 1 or self.ffn_multiplier < 1:
            raise ConfigError("SASRecConfig needs num_layers, num_heads, ffn_multiplier >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@config
class SequenceEncoderConfig(Config):
    """Which sequence encoder, and what a behaviour's embedding is made of.

    A behaviour (and the target) is the item embedding, plus the category embedding when
    ``use_category`` and the schema has a category field, plus the bucketised similarity side
    embedding when ``use_similarity`` and the schema has per-behaviour similarities (the
    target's own side embedding is that of similarity 1, its cosine to itself).

    The block of the chosen ``kind`` (``tim``; ``din`` for ``din`` and ``din_plus``;
    ``sasrec``) is filled with defaults when left out; a block of another kind is an error
    (it would be an unwired knob).
    """

    kind: SequenceKind = "tim"
    use_category: bool = True
    use_similarity: bool = True
    tim: TIMConfig | None = None
    din: DINConfig | None = None
    sasrec: SASRecConfig | None = None

    def __post_init__(self) -> None:
        wanted = _BLOCK_OF_KIND[self.kind]
        for block in _BLOCKS:
            if block != wanted and getattr(self, block) is not None:
                raise ConfigError(
                    f"sequence kind {self.kind!r} does not use the {block!r} block; set it to null"
                )
        defaults = {"tim": TIMConfig, "din": DINConfig, "sasrec": SASRecConfig}
        if wanted is not None and getattr(self, wanted) is None:
            object.__setattr__(self, wanted, defaults[wanted]())


def valid_mask(lengths_B: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``[B, L]`` bool, True at the first ``length`` (real) positions."""
    positions_L = torch.arange(seq_len, device=lengths_B.device)
    return positions_L.unsqueeze(0) < lengths_B.unsqueeze(1)


class _TIM(nn.Module):
    """Target-aware temporal encoding + target-aware attention + target-aware representation."""

    def __init__(self, config: TIMConfig, dim: int, max_len: int, init_std: float) -> None:
        super().__init__()
        self.intervals = config.time_intervals
        rows = (self.intervals.num_buckets if self.intervals else max_len) + 1
        self.temporal = nn.Embedding(rows, dim)
        init_embedding_(self.temporal.weight, init_std, padding_row=None)
        self.form = config.form
        self.token_suffixes = ("",) if config.form == "paper" else ("", "target", "product")
        if config.form == "code":
            self.norm = nn.BatchNorm1d(dim)
            self.project = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def temporal_index(self, lengths_B: torch.Tensor, time_delta_BL: torch.Tensor) -> torch.Tensor:
        """``f(X_i)`` per behaviour ``[B, L]``; the target's index is 0."""
        rows = self.temporal.num_embeddings
        if self.intervals is None:
            positions_L = torch.arange(time_delta_BL.shape[1], device=lengths_B.device)
            index = lengths_B.unsqueeze(1) - positions_L.unsqueeze(0)  # newest -> 1
        else:
            delta = torch.nan_to_num(time_delta_BL.float(), nan=0.0).clamp(min=0.0)
            index = torch.floor(torch.log2(1.0 + delta / self.intervals.unit_seconds)).long() + 1
        return index.clamp(0, rows - 1)

    def forward(
        self, behaviours_BLD: Tensor, target_BD: Tensor, lengths_B: Tensor, time_delta_BL: Tensor
    ) -> tuple[Tensor, Tensor]:
        mask_BL = valid_mask(lengths_B, behaviours_BLD.shape[1])
        # the sum goes into the fresh lookup, not into a new [B, L, D] buffer
        e_BLD = self.temporal(self.temporal_index(lengths_B, time_delta_BL)).add_(behaviours_BLD)
        v_BD = target_BD + self.temporal.weight[0]
        pooled_BD, alpha_BL = target_attention(e_BLD, v_BD, mask_BL, self.scale)
        if self.form == "paper":
            # sum_i alpha_i (e~_i * v~) = (sum_i alpha_i e~_i) * v~: the product after the pooling
            # spares a [B, L, D] product and its backward (a third of the step at batch 4096)
            return (pooled_BD * v_BD).unsqueeze(1), alpha_BL
        u_BD = self.project(batch_norm_rows(self.norm, pooled_BD))
        return torch.stack([u_BD, v_BD, u_BD * v_BD], dim=1), alpha_BL


class _DIN(nn.Module):
    """DIN's local activation unit; ``plus`` adds the target-aware representation token."""

    def __init__(self, config: DINConfig, dim: int, plus: bool) -> None:
        super().__init__()
        self.mlp = MLP(4 * dim, config.attention)
        # a score bias cancels in the softmax: only the unnormalised form has one
        self.score = nn.Linear(self.mlp.output_dim, 1, bias=config.normalise == "none")
        self.normalise = config.normalise
        self.plus = plus
        self.token_suffixes = ("", "product") if plus else ("",)
        self.has_hidden = bool(config.attention.hidden_dims)
        first = self.mlp.layers[0] if self.has_hidden else self.score
        assert isinstance(first, nn.Linear), "MLP must start with its Linear layer"

    def _logits(self, e_BLD: Tensor, v_BD: Tensor) -> Tensor:
        """``score(MLP([e, v, e - v, e * v]))`` without building the ``4D`` input: the first
        layer's ``v`` terms are computed once per sample, not once per behaviour."""
        first = self.mlp.layers[0] if self.has_hidden else self.score
        w_e, w_v, w_d, w_p = first.weight.split(e_BLD.shape[-1], dim=1)
        per_behaviour = torch.nn.functional.linear(
            torch.cat([e_BLD, e_BLD * v_BD.unsqueeze(1)], dim=-1), torch.cat([w_e + w_d, w_p], 1)
        )
        per_sample = torch.nn.functional.linear(v_BD, w_v - w_d, first.bias)
        pre_BLX = per_behaviour + per_sample.unsqueeze(1)
        if not self.has_hidden:
            return pre_BLX.squeeze(-1)
        return self.score(self.mlp.layers[1:](pre_BLX)).squeeze(-1)

    def forward(
        self, behaviours_BLD: Tensor, target_BD: Tensor, lengths_B: Tensor, time_delta_BL: Tensor
    ) -> tuple[Tensor, Tensor]:
        mask_BL = valid_mask(lengths_B, behaviours_BLD.shape[1])
        logits_BL = self._logits(behaviours_BLD, target_BD)
        if self.normalise == "softmax":
            alpha_BL = masked_softmax(logits_BL, mask_BL)
        else:
            alpha_BL = logits_BL * mask_BL.to(logits_BL.dtype)
        u_BD = torch.einsum("bl,bld->bd", alpha_BL, behaviours_BLD)
        tokens = [u_BD, u_BD * target_BD] if self.plus else [u_BD]
        return torch.stack(tokens, dim=1), alpha_BL


class _Mean(nn.Module):
    """Mean of the real behaviours (zero for an empty history)."""

    token_suffixes = ("",)

    def forward(
        self, behaviours_BLD: Tensor, target_BD: Tensor, lengths_B: Tensor, time_delta_BL: Tensor
    ) -> tuple[Tensor, Tensor]:
        mask_BL = valid_mask(lengths_B, behaviours_BLD.shape[1]).to(behaviours_BLD.dtype)
        alpha_BL = mask_BL / mask_BL.sum(dim=1, keepdim=True).clamp(min=1.0)
        return torch.einsum("bl,bld->bd", alpha_BL, behaviours_BLD).unsqueeze(1), alpha_BL


class _SelfAttentionBlock(nn.Module):
    """Pre-LN causal multi-head self-attention + position-wise feed-forward, both residual."""

    def __init__(self, config: SASRecConfig, dim: int) -> None:
        super().__init__()
        if dim % config.num_heads:
            raise ValueError(f"SASRec: num_heads {config.num_heads} must divide dim {dim}")
        self.heads = config.num_heads
        self.norm_attention = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        hidden = config.ffn_multiplier * dim
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.dropout = Dropout(config.dropout)

    def forward(self, x_BLD: torch.Tensor, allowed_BLL: torch.Tensor) -> torch.Tensor:
        return self.attend(x_BLD, allowed_BLL)[0]

    def attend(
        self, x_BLD: torch.Tensor, allowed_BLL: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output ``[B, L, D]`` and its attention weights averaged over the heads
        ``[B, L, L]`` (row = query position; an all-masked row is zero)."""
        b, seq_len, dim = x_BLD.shape
        q, k, v = self.qkv(self.norm_attention(x_BLD)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, seq_len, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        logits_BHLL = q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads)
        weights_BHLL = masked_softmax(logits_BHLL, allowed_BLL.unsqueeze(1))
        attended_BLD = (weights_BHLL @ v).transpose(1, 2).reshape(b, seq_len, dim)
        x_BLD = x_BLD + self.dropout(self.out(attended_BLD))
        return x_BLD + self.dropout(self.ffn(self.norm_ffn(x_BLD))), weights_BHLL.mean(dim=1)


class _SASRec(nn.Module):
    """SASRec-style causal self-attention encoder with last-position or target pooling."""

    token_suffixes = ("",)

    def __init__(self, config: SASRecConfig, dim: int, max_len: int, init_std: float) -> None:
        super().__init__()
        self.position = nn.Embedding(max_len + 1, dim)
        init_embedding_(self.position.weight, init_std, padding_row=None)
        self.blocks = nn.ModuleList(
            _SelfAttentionBlock(config, dim) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.dropout = Dropout(config.dropout)
        self.pooling = config.pooling
        self.scale = 1.0 / math.sqrt(dim)

    def forward(
        self, behaviours_BLD: Tensor, target_BD: Tensor, lengths_B: Tensor, time_delta_BL: Tensor
    ) -> tuple[Tensor, Tensor]:
        pooled_B1D, alpha_BL, _ = self._encode(behaviours_BLD, target_BD, lengths_B)
        return pooled_B1D, alpha_BL

    def behaviour_weights(
        self, behaviours_BLD: Tensor, target_BD: Tensor, lengths_B: Tensor
    ) -> Tensor:
        """Each input behaviour's share of the pooled interest ``[B, L]`` by attention rollout
        (Abnar & Zuidema 2020): the pooling weights over the last block's outputs, carried back
        through every block's ``(A + I) / 2`` (the residual keeps half of a position's own
        input), so each row sums to 1 over the real behaviours."""
        _, weights_BL, maps = self._encode(behaviours_BLD, target_BD, lengths_B)
        eye_LL = torch.eye(weights_BL.shape[1], dtype=weights_BL.dtype, device=weights_BL.device)
        for attention_BLL in reversed(maps):
            weights_BL = torch.einsum("bq,bqk->bk", weights_BL, 0.5 * (attention_BLL + eye_LL))
        return weights_BL * valid_mask(lengths_B, weights_BL.shape[1]).to(weights_BL.dtype)

    def _encode(
        self, behaviours_BLD: Tensor, target_BD: Tensor, lengths_B: Tensor
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Pooled interest ``[B, 1, D]``, pooling weights ``[B, L]`` and every block's
        head-averaged attention ``[B, L, L]``."""
        seq_len = behaviours_BLD.shape[1]
        mask_BL = valid_mask(lengths_B, seq_len)
        positions_L = torch.arange(seq_len, device=lengths_B.device)
        index_BL = (lengths_B.unsqueeze(1) - positions_L).clamp(0, self.position.num_embeddings - 1)
        keep_BL1 = mask_BL.unsqueeze(-1).to(behaviours_BLD.dtype)
        x_BLD = self.dropout(behaviours_BLD + self.position(index_BL)) * keep_BL1
        causal_LL = torch.ones(seq_len, seq_len, dtype=torch.bool, device=x_BLD.device).tril()
        allowed_BLL = causal_LL.unsqueeze(0) & mask_BL.unsqueeze(1)
        maps = []
        for block in self.blocks:
            x_BLD, attention_BLL = block.attend(x_BLD, allowed_BLL)
            x_BLD = x_BLD * keep_BL1
            maps.append(attention_BLL)
        x_BLD = self.norm(x_BLD) * keep_BL1
        if self.pooling == "target":
            logits_BL = torch.einsum("bld,bd->bl", x_BLD, target_BD) * self.scale
            alpha_BL = masked_softmax(logits_BL, mask_BL)
        else:
            last_BL = positions_L.unsqueeze(0) == (lengths_B.unsqueeze(1) - 1)
            alpha_BL = (last_BL & mask_BL).to(x_BLD.dtype)
        return torch.einsum("bl,bld->bd", alpha_BL, x_BLD).unsqueeze(1), alpha_BL, maps


class SequenceEncoder(nn.Module):
    """One behaviour sequence -> ``num_tokens`` ``D``-dim tokens (see the module docstring).

    Args:
        config: the encoder kind and its block.
        dim: embedding dimension ``D`` of the behaviour and target embeddings.
        max_len: the schema's sequence length ``L`` (sizes position tables).
        init_std: standard deviation of the normal init of the encoder's own tables.

    Example:
        >>> enc = SequenceEncoder(SequenceEncoderConfig(kind="tim"), dim=8, max_len=5, init_std=0.1)
        >>> behaviours, target = torch.randn(2, 5, 8), torch.randn(2, 8)
        >>> lengths, delta = torch.tensor([0, 3]), torch.zeros(2, 5)
        >>> enc(behaviours, target, lengths, delta).shape
        torch.Size([2, 1, 8])
    """

    def __init__(
        self, config: SequenceEncoderConfig, dim: int, max_len: int, init_std: float
    ) -> None:
        super().__init__()
        self.kind = config.kind
        self.pool: nn.Module
        if config.kind == "tim":
            self.pool = _TIM(config.tim, dim, max_len, init_std)
        elif config.kind in ("din", "din_plus"):
            self.pool = _DIN(config.din, dim, plus=config.kind == "din_plus")
        elif config.kind == "sasrec":
            self.pool = _SASRec(config.sasrec, dim, max_len, init_std)
        else:
            self.pool = _Mean()
        # names of the tokens after the sequence's name ("" = the pooled interest itself)
        self.token_suffixes: tuple[str, ...] = self.pool.token_suffixes
        self.num_tokens: int = len(self.token_suffixes)

    def _run(
        self, behaviours_BLD: Tensor, target_BD: Tensor, lengths_B: Tensor, time_delta_BL: Tensor
    ) -> tuple[Tensor, Tensor]:
        seq_len = behaviours_BLD.shape[1]
        lengths_B = lengths_B.long().clamp(0, seq_len)
        return self.pool(behaviours_BLD, target_BD, lengths_B, time_delta_BL)

    def forward(
        self,
        behaviours_BLD: torch.Tensor,
        target_BD: torch.Tensor,
        lengths_B: torch.Tensor,
        time_delta_BL: torch.Tensor,
    ) -> torch.Tensor:
        """Behaviours ``[B, L, D]``, target ``[B, D]``, lengths ``[B]``, seconds before the
        target ``[B, L]`` -> tokens ``[B, num_tokens, D]``."""
        return self._run(behaviours_BLD, target_BD, lengths_B, time_delta_BL)[0]

    def attention_weights(
        self,
        behaviours_BLD: torch.Tensor,
        target_BD: torch.Tensor,
        lengths_B: torch.Tensor,
        time_delta_BL: torch.Tensor,
    ) -> torch.Tensor:
        """The pooling weights over the history ``[B, L]`` (TIM/DIN attention, SASRec's
        one-hot last position or target attention, mean's uniform weights); zero at padding."""
        return self._run(behaviours_BLD, target_BD, lengths_B, time_delta_BL)[1]

    def behaviour_weights(
        self,
        behaviours_BLD: torch.Tensor,
        target_BD: torch.Tensor,
        lengths_B: torch.Tensor,
        time_delta_BL: torch.Tensor,
    ) -> torch.Tensor:
        """Each input behaviour's share of the interest token ``[B, L]``: the pooling weights,
        except for SASRec, whose pooling weights are over its blocks' outputs (mixtures of
        behaviours) and are traced back to the inputs by attention rollout."""
        if isinstance(self.pool, _SASRec):
            seq_len = behaviours_BLD.shape[1]
            return self.pool.behaviour_weights(
                behaviours_BLD, target_BD, lengths_B.long().clamp(0, seq_len)
            )
        return self.attention_weights(behaviours_BLD, target_BD, lengths_B, time_delta_BL)

    def temporal_table(self) -> torch.Tensor | None:
        """TIM's temporal-encoding table ``[rows, D]`` (row 0 = the target), else ``None``."""
        return self.pool.temporal.weight if isinstance(self.pool, _TIM) else None
