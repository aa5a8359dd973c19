"""What "every parameter learns from a step" means under either embedding backend.

The ``torch`` backend's id tables are ordinary parameters: the backward leaves a ``.grad`` on
each. The ``torchrec`` backend's tables are fused: FBGEMM applies their update inside the
backward and never writes a ``.grad`` (by design, ``hmoe.models.torchrec_tables``), so what is
true of them is that the backward moved rows of each table and left them finite.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from hmoe.models.embeddings import EMBEDDING_BACKENDS
from hmoe.models.losses import fused_table_parameters


def backend_param(backend: str, *values: object) -> object:
    """``(*values, backend)`` as a test parameter, skipped where ``torchrec`` is needed and
    not installed."""
    missing = backend == "torchrec" and importlib.util.find_spec("torchrec") is None
    reason = "TorchRec/FBGEMM not installed (make venv installs the CPU pair)"
    return pytest.param(*values, backend, marks=pytest.mark.skipif(missing, reason=reason))


#: every embedding backend as a test parameter
BACKENDS = [backend_param(backend) for backend in EMBEDDING_BACKENDS]


def backward_and_check_every_parameter_learns(model: nn.Module, loss: torch.Tensor) -> None:
    """Run ``loss.backward()`` (``loss``: a forward of ``model`` not yet differentiated), then
    check every parameter: a finite ``.grad`` on the ones a dense optimizer trains; on the fused
    tables, no ``.grad`` and finite rows, some of them moved by this backward."""
    fused = {id(p) for p in fused_table_parameters(model)}
    before = {name: p.detach().clone() for name, p in model.named_parameters() if id(p) in fused}
    loss.backward()
    for name, parameter in model.named_parameters():
        if id(parameter) not in fused:
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
            continue
        assert parameter.grad is None, name
        assert torch.isfinite(parameter).all(), name
        assert not torch.equal(parameter.detach(), before[name]), f"{name}: no row moved"
