"""Every preset exports with ``torch.export`` (MLflow's ``pt2`` format) and the exported program
gives the eager outputs, at the example's batch size and at another one (dynamic batch dim).

The export mirrors what ``mlflow.pytorch.log_model(serialization_format="pt2")`` does with the
positional wrapper from ``hmoe.platform.tracking.registry``: one ``Dim.AUTO`` on dim 0 per input.
One preset runs in the fast set; the others (~3-25 s each on the shared 2-core box) are slow.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.export import Dim

from hmoe.config import apply_overrides
from hmoe.models.testing import random_batch, tiny_schema
from hmoe.models.zoo import PRESETS, build, get_preset
from hmoe.platform.data.batches import input_columns
from hmoe.platform.tracking.registry import _exportable, load_model, log_model, servable
from hmoe.platform.tracking.runs import MlflowRun
from hmoe.schema import FeatureSchema
from tests.models.learning import backend_param

TWO_TASKS = ("click", "like")
EXAMPLE_ROWS = 8  # what the train loop hands log_model: min(8, eval batch size) rows
OTHER_ROWS = 5
FAST = ("debug",)  # every technique of the spec on; the cheapest full coverage


def _model_and_schema(name: str, backend: str | None = None) -> tuple[nn.Module, FeatureSchema]:
    """The preset's model (``backend``: its embedding backend, ``None``: the preset's)."""
    preset = get_preset(name)
    if backend is not None:
        preset = apply_overrides(preset, {"model.embedding.backend": backend})
    schema = tiny_schema(tasks=("click",) if preset.model.kind == "single" else TWO_TASKS)
    torch.manual_seed(0)
    return build(preset.model, schema).eval(), schema


def _inputs(schema: FeatureSchema, rows: int, seed: int) -> tuple[list[str], dict]:
    batch = random_batch(schema, rows, torch.Generator().manual_seed(seed))
    return [n for n in input_columns(schema) if n in batch], batch


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        (n, "torch") if n in FAST else pytest.param(n, "torch", marks=pytest.mark.slow)
        for n in sorted(PRESETS)
    ]
    # the torchrec copy of every preset predicts as the fused model does:
    # test_embedding_backends.py; here the export of that copy, on the cheapest full coverage
    + [backend_param("torchrec", n) for n in FAST],
)
def test_preset_exports_and_matches_eager(name: str, backend: str) -> None:
    """What is exported is ``servable(model)`` (``torchrec`` tables as ``torch`` ones, as
    ``log_model`` exports them); it must predict what the trained model does."""
    model, schema = _model_and_schema(name, backend)
    names, example = _inputs(schema, EXAMPLE_ROWS, seed=0)
    args = tuple(example[n] for n in names)
    program = torch.export.export(
        _exportable(servable(model), names), args, dynamic_shapes=[{0: Dim.AUTO} for _ in args]
    )
    exported = program.module()
    _, other = _inputs(schema, OTHER_ROWS, seed=1)
    with torch.no_grad():
        for batch in (example, other):
            logits_BK = model(batch)
            assert logits_BK.shape == (batch[names[0]].shape[0], schema.num_tasks)
            torch.testing.assert_close(exported(*(batch[n] for n in names)), logits_BK)


CUDA_PARAM = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    ],
)


@pytest.mark.parametrize("device", ["cpu", CUDA_PARAM])
@pytest.mark.parametrize("backend", [backend_param("torch"), backend_param("torchrec")])
def test_servable_leaves_the_callers_model_as_it_was(backend: str, device: str) -> None:
    """``servable`` hands back a CPU, eval-mode copy; the caller's model keeps its training
    mode, its parameter objects, their device and their values (training may go on)."""
    from hmoe.models.torchrec_tables import place_fused_tables

    model, schema = _model_and_schema("debug", backend)
    model = model.to(device).train()
    place_fused_tables(model, torch.device(device))
    before = {n: (p, p.device, p.detach().clone()) for n, p in model.named_parameters()}
    served = servable(torch.compile(model))  # as use_compile hands it over
    assert model.training and all(m.training for m in model.modules())
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for name, (param, where, values) in before.items():
        assert after[name] is param and param.device == where, name
        torch.testing.assert_close(param.detach(), values, rtol=0, atol=0)
    assert not served.training
    assert {id(p) for p in served.parameters()}.isdisjoint(id(p) for p in model.parameters())
    assert all(p.device.type == "cpu" for p in served.parameters())
    _, batch = _inputs(schema, EXAMPLE_ROWS, seed=0)
    with torch.no_grad():
        expected = model.eval()({k: v.to(device) for k, v in batch.items()}).cpu()
        torch.testing.assert_close(served(batch), expected)


@pytest.mark.slow
def test_log_model_auto_picks_pt2_for_a_multi_task_preset_and_reloads(tmp_path) -> None:
    """End to end through MLflow (sqlite store): ``auto`` logs STEM (masked + detached gates)
    as ``pt2`` (given under ``torch.compile``'s wrapper, as ``use_compile`` builds it), and the
    reload predicts the eager logits on another batch size."""
    model, schema = _model_and_schema("hmoe_stem")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = MlflowRun.create(uri, "export", "hmoe_stem", {})
    _, example = _inputs(schema, EXAMPLE_ROWS, seed=0)
    compiled = torch.compile(model)  # lazy: nothing compiles unless it is called
    model_uri, fmt = log_model(run, compiled, example, input_columns(schema), "auto")
    assert fmt == "pt2"
    predict = load_model(uri, model_uri)
    _, other = _inputs(schema, OTHER_ROWS, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(predict(other), model(other))
