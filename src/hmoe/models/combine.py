"""Combination of E expert outputs into K mixtures (one per task or gate): mean, sum or gate.

One module serves the single-task model (K = 1) and the multi-task ones: STEM, AME, STEM-AL,
MMoE and PLE differ only in which experts a gate may use (``allowed``) and which enter a gate
through stop-gradient (``detached``, STEM's All-Forward-Task-specific-Backward). Gate weights are
exposed through ``gate_weights`` for analysis.

Legend: ``B`` batch, ``E`` experts, ``K`` gates (tasks), ``X`` any width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.models.common import MLP, MLPConfig

__all__ = ["CombineConfig", "MixtureCombiner"]


@config
class CombineConfig(Config):
    """How expert outputs are combined.

    ``method``: ``mean`` (ME repo), ``sum`` (with ``learnable_sum_weights``: a scalar per gate
    and expert, initialised to 1 so training starts from the plain sum) or ``gate`` (softmax).
    ``gate_source``: ``vector`` computes each gate's logits from one given vector per gate (or
    one shared by all gates), e.g. the concatenated tokens of all sets or STEM's ``x_t + x_s``;
    ``expert_inputs`` computes the logit of expert e from a vector of its own (e.g. the flattened
    tokens of that expert's set, as in the third-party HMoE code). ``gate_mlp`` runs before the
    final logit layer (``hidden_dims=()``: a linear gate). ``output_dim``: project each expert's
    output to this width first (needed when experts have different widths).
    """

    method: Literal["mean", "sum", "gate"] = "gate"
    learnable_sum_weights: bool = False
    gate_source: Literal["vector", "expert_inputs"] = "vector"
    gate_mlp: MLPConfig = MLPConfig(hidden_dims=())
    output_dim: int | None = None

    def __post_init__(self) -> None:
        if self.output_dim is not None and self.output_dim < 1:
            raise ConfigError(f"output_dim must be >= 1 or null, got {self.output_dim}")


def _mask(rows: Sequence[Sequence[bool]] | None, shape: tuple[int, int], default: bool, name: str):
    if rows is None:
        return torch.full(shape, default, dtype=torch.bool)
    mask = torch.tensor([list(r) for r in rows], dtype=torch.bool)
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must be {shape[0]} rows of {shape[1]} flags, got {list(rows)}")
    return mask


class MixtureCombiner(nn.Module):
    """Mix E expert outputs ``[B, X_e]`` into K mixtures ``[B, K, X]``.

    Args:
        config: the combination method and gate settings.
        expert_dims: the output width of each expert (E entries).
        num_gates: K, the number of mixtures (tasks).
        gate_input_dims: for ``gate`` with ``gate_source="vector"``: 1 width (shared input) or K
            widths (one input per gate); with ``"expert_inputs"``: E widths. Unused otherwise.
        allowed: ``[K][E]`` flags, the experts each gate may use (default: all). A gate with a
            single allowed expert has no parameters and weight 1.
        detached: ``[K][E]`` flags, experts that enter gate k through stop-gradient (STEM: the
            other tasks' specific experts). The gate weight itself still gets its gradient.

    Example:
        >>> comb = MixtureCombiner(CombineConfig(), (4, 4), num_gates=2, gate_input_dims=(6,))
        >>> comb([torch.randn(3, 4), torch.randn(3, 4)], [torch.randn(3, 6)]).shape
        torch.Size([3, 2, 4])
    """

    def __init__(
        self,
        config: CombineConfig,
        expert_dims: Sequence[int],
        *,
        num_gates: int = 1,
        gate_input_dims: Sequence[int] = (),
        allowed: Sequence[Sequence[bool]] | None = None,
        detached: Sequence[Sequence[bool]] | None = None,
    ) -> None:
        super().__init__()
        num_experts = len(expert_dims)
        if num_experts < 1 or num_gates < 1:
            raise ValueError(f"need >= 1 expert and gate, got E={num_experts}, K={num_gates}")
        self.method, self.gate_source = config.method, config.gate_source
        self.num_experts, self.num_gates = num_experts, num_gates
        allowed_KE = _mask(allowed, (num_gates, num_experts), True, "allowed")
        if not bool(allowed_KE.any(dim=1).all()):
            raise ValueError(f"every gate needs >= 1 allowed expert, got {allowed_KE.tolist()}")
        self.register_buffer("allowed_KE", allowed_KE, persistent=False)
        detached_KE = _mask(detached, (num_gates, num_experts), False, "detached") & allowed_KE
        self.register_buffer("detached_KE", detached_KE, persistent=False)
        # Python flags and index lists fixed here, so forward never branches on (or indexes
        # by) a tensor's values: torch.export cannot trace data-dependent control flow
        self.any_detached = bool(detached_KE.any())
        self._allowed_rows: tuple[tuple[int, ...], ...] = tuple(
            tuple(int(e) for e in row.nonzero().flatten().tolist()) for row in allowed_KE
        )
        self.projections = self._build_projections(config, expert_dims)
        self.output_dim = config.output_dim or expert_dims[0]
        self.sum_weights_KE = (
            nn.Parameter(torch.ones(num_gates, num_experts))
            if config.method == "sum" and config.learnable_sum_weights
            else None
        )
        self.gates = self._build_gates(config, gate_input_dims) if self.method == "gate" else None
        # one expert, one gate, fixed weight 1 (a single-expert mean or plain sum): the mixture
        # is that expert's output, so forward skips the weighting (the dcnv2 and dnn presets)
        self._passthrough = (
            self.method != "gate"
            and self.sum_weights_KE is None
            and num_experts == num_gates == 1
            and not self.any_detached
        )

    @staticmethod
    def _build_projections(config: CombineConfig, expert_dims: Sequence[int]) -> nn.ModuleList:
        if config.output_dim is not None:
            return nn.ModuleList(nn.Linear(d, config.output_dim) for d in expert_dims)
        if len(set(expert_dims)) != 1:
            raise ValueError(
                f"experts have different widths {list(expert_dims)}; set the combine "
                "output_dim to project them to one width"
            )
        return nn.ModuleList()

    def _build_gates(self, config: CombineConfig, input_dims: Sequence[int]) -> nn.ModuleList:
        if self.gate_source == "expert_inputs":
            if len(input_dims) != self.num_experts:
                raise ValueError(
                    f"gate_source='expert_inputs' needs {self.num_experts} gate input widths "
                    f"(one per expert), got {list(input_dims)}"
                )
            return nn.ModuleList(self._gate_net(d, config, self.num_gates) for d in input_dims)
        if len(input_dims) not in (1, self.num_gates):
            raise ValueError(
                f"gate_source='vector' needs 1 or {self.num_gates} gate input widths, "
                f"got {list(input_dims)}"
            )
        dims = list(input_dims) * (self.num_gates // len(input_dims))
        # gate k's A_k softmax weights land on its allowed experts through a one-hot [A_k, E]
        # placement (a matmul: no boolean-mask indexing, whose shape torch.export cannot know)
        for k, row in enumerate(self._allowed_rows):
            placement_AE = torch.zeros(len(row), self.num_experts)
            placement_AE[torch.arange(len(row)), torch.tensor(row)] = 1.0
            self.register_buffer(f"placement_{k}_AE", placement_AE, persistent=False)
        # a gate over a single expert has weight 1 and nothing to learn
        return nn.ModuleList(
            self._gate_net(d, config, len(row)) if len(row) > 1 else nn.Identity()
            for d, row in zip(dims, self._allowed_rows, strict=True)
        )

    @staticmethod
    def _gate_net(input_dim: int, config: CombineConfig, num_logits: int) -> nn.Sequential:
        mlp = MLP(input_dim, config.gate_mlp)
        return nn.Sequential(mlp, nn.Linear(mlp.output_dim, num_logits))

    def gate_weights(
        self, gate_inputs: Sequence[torch.Tensor] = (), *, batch_size: int | None = None
    ) -> torch.Tensor:
        """The mixture weights ``[B, K, E]`` (0 for experts a gate may not use).

        ``mean`` and ``sum`` do not depend on the input; they give ``[1, K, E]`` unless
        ``batch_size`` is given.
        """
        if self.method == "gate":
            return self._softmax_weights(gate_inputs)
        allowed = self.allowed_KE.to(torch.get_default_dtype())
        if self.method == "mean":
            weights_KE = allowed / allowed.sum(dim=1, keepdim=True)
        elif self.sum_weights_KE is not None:
            weights_KE = self.sum_weights_KE * allowed
        else:
            weights_KE = allowed
        weights_1KE = weights_KE.unsqueeze(0)
        return weights_1KE if batch_size is None else weights_1KE.expand(batch_size, -1, -1)

    def _softmax_weights(self, gate_inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        assert self.gates is not None
        expected = len(self.gates) if self.gate_source == "expert_inputs" else None
        if not gate_inputs or (expected is not None and len(gate_inputs) != expected):
            raise ValueError(
                f"gate needs {expected or f'1 or {self.num_gates}'} gate inputs, "
                f"got {len(gate_inputs)}"
            )
        if self.gate_source == "expert_inputs":
            logits_BKE = torch.stack(
                [g(x) for g, x in zip(self.gates, gate_inputs, strict=True)], 2
            )
            logits_BKE = logits_BKE.masked_fill(~self.allowed_KE, float("-inf"))
            return torch.softmax(logits_BKE, dim=2)
        inputs = list(gate_inputs) * (self.num_gates // len(gate_inputs))
        if len(inputs) != self.num_gates:
            raise ValueError(
                f"gate needs 1 or {self.num_gates} gate inputs, got {len(gate_inputs)}"
            )
        rows = []
        for k, (gate, x_BX) in enumerate(zip(self.gates, inputs, strict=True)):
            placement_AE = getattr(self, f"placement_{k}_AE")
            if isinstance(gate, nn.Identity):
                rows.append(placement_AE.sum(dim=0).to(x_BX.dtype).expand(x_BX.shape[0], -1))
                continue
            weights_BA = torch.softmax(gate(x_BX), dim=1)
            rows.append(weights_BA @ placement_AE.to(weights_BA.dtype))
        return torch.stack(rows, dim=1)

    def forward(
        self, expert_outputs: Sequence[torch.Tensor], gate_inputs: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        """Mix ``E`` tensors ``[B, X_e]`` into ``[B, K, X]``."""
        if len(expert_outputs) != self.num_experts:
            raise ValueError(
                f"expected {self.num_experts} expert outputs, got {len(expert_outputs)}"
            )
        if len(self.projections):
            expert_outputs = [p(o) for p, o in zip(self.projections, expert_outputs, strict=True)]
        if self.num_experts == 1:  # a view, not stack's copy
            outputs_BEX = expert_outputs[0].unsqueeze(1)
        else:
            outputs_BEX = torch.stack(list(expert_outputs), dim=1)
        if self.method == "gate":
            weights = self.gate_weights(gate_inputs).to(outputs_BEX.dtype)
            pattern = "bke,bex->bkx"
        else:
            if self._passthrough:
                return outputs_BEX
            # fixed weights [K, E]: one small matmul instead of a batch of [K, E] products
            weights = self.gate_weights()[0].to(outputs_BEX.dtype)
            pattern = "ke,bex->bkx"
        if not self.any_detached:
            return torch.einsum(pattern, weights, outputs_BEX)
        # the gate weight keeps its gradient; only the expert's output is cut for that gate
        detached = self.detached_KE.to(weights.dtype)
        live = torch.einsum(pattern, weights * (1.0 - detached), outputs_BEX)
        cut = torch.einsum(pattern, weights * detached, outputs_BEX.detach())
        return live + cut
