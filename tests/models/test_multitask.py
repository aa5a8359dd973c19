"""STEM (AFTB stop-gradients), AME, STEM-AL, MMoE and PLE routing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hmoe.config import ConfigError, apply_overrides
from hmoe.models.losses import TrainWrapper
from hmoe.models.multitask import MultiTaskRanker, auxiliary_task_names
from hmoe.models.ranker import ModelConfig
from hmoe.models.testing import random_batch, tiny_schema
from hmoe.models.zoo import get_preset
from hmoe.schema import LABELS
from tests.models.learning import BACKENDS, backward_and_check_every_parameter_learns

BATCH = 6
TASKS = ("click", "like", "share")
SMALL = {
    "model.embedding.embedding_dim": 4,
    "model.experts.mlp.mlp.hidden_dims": [8],
    "model.experts.ipnn.mlp.hidden_dims": [8],
    "model.experts.dcnv2.mlp.hidden_dims": [8],
    "model.combine.gate_mlp.hidden_dims": [4],
    "model.tower.hidden_dims": [4],
}


def _model(preset: str, tasks=TASKS, **overrides) -> MultiTaskRanker:
    cfg = get_preset(preset)
    small = {k: v for k, v in SMALL.items() if preset != "hmoe_ame" or "embedding_dim" not in k}
    if cfg.model.shared_experts is not None:
        small.update({k.replace("experts", "shared_experts", 1): v for k, v in small.items()})
    cfg = apply_overrides(cfg, {**small, **overrides})
    torch.manual_seed(0)
    return MultiTaskRanker(cfg.model, tiny_schema(tasks=tasks))


def _batch(tasks=TASKS, seed: int = 0):
    return random_batch(tiny_schema(tasks=tasks), BATCH, torch.Generator().manual_seed(seed))


def _task_loss(model, batch, task: int) -> torch.Tensor:
    logits = model(batch)
    return F.binary_cross_entropy_with_logits(logits[:, task], batch[LABELS][:, task])


def _grad_norm(modules) -> float:
    total = 0.0
    for module in modules:
        for p in module.parameters():
            if p.grad is not None:
                total += float(p.grad.abs().sum())
    return total


def _experts_of(model, owner):
    return [e for e, o in zip(model.experts, model.plan.expert_owners, strict=True) if o == owner]


def _sets_named(model, prefix):
    return [enc for enc, n in zip(model.encoders, model.set_names, strict=True) if n == prefix]


def test_stem_layout():
    model = _model("hmoe_stem")
    assert model.set_names == ("shared", "task:click", "task:like", "task:share")
    shared = sum(model.config.shared_experts.counts.values())
    assert model.plan.expert_owners == (None,) * shared + ("click", "like", "share")
    assert model(_batch()).shape == (BATCH, 3)
    weights = model.gate_weights(_batch())
    assert weights.shape == (BATCH, 3, shared + 3)
    assert bool((weights > 0).all())  # All-Forward: every gate mixes every expert


def _id_tables(model, prefix) -> list[torch.Tensor]:
    """A copy of every id table of the sets named ``prefix``."""
    return [
        encoder.id_table(c.name).detach().clone()
        for encoder in _sets_named(model, prefix)
        for c in model.schema.categorical
    ]


def _tables_moved(model, before: dict[str, list[torch.Tensor]]) -> dict[str, bool]:
    return {
        prefix: any(
            not torch.equal(old, new)
            for old, new in zip(tables, _id_tables(model, prefix), strict=True)
        )
        for prefix, tables in before.items()
    }


def _tables_with_grad(model, prefixes) -> dict[str, bool]:
    """Per set, whether the backward left a non-zero gradient on one of its id tables."""
    return {
        prefix: any(
            table.grad is not None and bool(table.grad.any())
            for encoder in _sets_named(model, prefix)
            for table in (encoder.id_table(c.name) for c in model.schema.categorical)
        )
        for prefix in prefixes
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_stem_task_loss_leaves_other_tasks_untouched(backend):
    """The ``torch`` tables are parameters: the backward leaves their gradients. Fused
    (``torchrec``) tables have no ``.grad``, and the backward itself applies their update:
    for them, whether it moved their rows."""
    model = _model("hmoe_stem", **{"model.embedding.backend": backend})
    sets = ("shared", "task:click", "task:like", "task:share")
    before = {prefix: _id_tables(model, prefix) for prefix in sets}
    _task_loss(model, _batch(), task=0).backward()
    for other in ("like", "share"):
        assert _grad_norm(_sets_named(model, f"task:{other}")) == 0.0
        assert _grad_norm(_experts_of(model, other)) == 0.0
    assert _grad_norm(_sets_named(model, "shared")) > 0.0
    assert _grad_norm(_sets_named(model, "task:click")) > 0.0
    click_tables = {"shared": True, "task:click": True, "task:like": False, "task:share": False}
    if backend == "torchrec":
        assert _tables_moved(model, before) == click_tables
    else:
        assert _tables_with_grad(model, sets) == click_tables
    assert _grad_norm(_experts_of(model, "click")) > 0.0
    assert _grad_norm(_experts_of(model, None)) > 0.0


def test_stem_detach_does_not_change_the_forward_output():
    model = _model("hmoe_stem").eval()
    batch = _batch()
    with torch.no_grad():
        with_detach = model(batch)
        model.combiner.detached_KE.zero_()
        without_detach = model(batch)
    torch.testing.assert_close(with_detach, without_detach)


def test_stem_without_detach_leaks_gradient():
    """The check above can fail: with the stop-gradient removed task 1 reaches task 2."""
    model = _model("hmoe_stem")
    model.combiner.detached_KE.zero_()
    _task_loss(model, _batch(), task=0).backward()
    assert _grad_norm(_experts_of(model, "like")) > 0.0


def test_stem_single_task():
    model = _model("hmoe_stem", tasks=("click",))
    assert model.set_names == ("shared", "task:click")
    assert model(_batch(("click",))).shape == (BATCH, 1)


def test_stem_per_expert_sets_stay_within_a_task():
    model = _model("hmoe_stem", **{"model.embedding.assignment": "per_expert"})
    assert model.set_names[:4] == ("shared/0", "shared/1", "shared/2", "shared/3")
    assert model.set_names[4:] == ("task:click", "task:like", "task:share")
    _task_loss(model, _batch(), task=0).backward()
    assert _grad_norm(_sets_named(model, "task:like")) == 0.0


def test_ame_asymmetric_sets_and_no_stop_gradient():
    model = _model("hmoe_ame", **{"model.embedding.set_dims": [2, 4, 8]})
    assert [enc.embedding_dim for enc in model.encoders] == [2, 4, 8]
    assert not bool(model.combiner.detached_KE.any())
    weights = model.gate_weights(_batch())
    assert weights.shape == (BATCH, 3, 3) and bool((weights > 0).all())
    _task_loss(model, _batch(), task=1).backward()
    for encoder in model.encoders:
        assert _grad_norm([encoder]) > 0.0


def test_stem_al_routing_and_gradients():
    model = _model("hmoe_stem_al")
    assert auxiliary_task_names(model.config, TASKS) == ("like", "share")
    weights = model.gate_weights(_batch())
    own = torch.tensor([o == "like" for o in model.plan.expert_owners])
    assert bool((weights[:, 1, ~own] == 0).all())  # the auxiliary tower reads only its own
    assert bool((weights[:, 0] > 0).all())  # the main task reads everything
    _task_loss(model, _batch(), task=1).backward()  # an auxiliary loss
    assert _grad_norm(_sets_named(model, "task:click")) == 0.0
    assert _grad_norm(_experts_of(model, "click")) == 0.0
    assert _grad_norm(_sets_named(model, "task:like")) > 0.0
    model.zero_grad(set_to_none=True)
    _task_loss(model, _batch(), task=0).backward()  # the main loss: auxiliaries forward only
    assert _grad_norm(_sets_named(model, "task:like") + _experts_of(model, "like")) == 0.0
    assert _grad_norm(_sets_named(model, "task:click")) > 0.0


def test_stem_al_needs_a_main_and_an_auxiliary_task():
    with pytest.raises(ConfigError, match="needs a main"):
        _model("hmoe_stem_al", tasks=("click",))
    with pytest.raises(ConfigError, match="not tasks of the schema"):
        _model("hmoe_stem_al", **{"model.auxiliary_tasks": ["nope"]})
    with pytest.raises(ConfigError, match="at least one main"):
        _model("hmoe_stem_al", **{"model.auxiliary_tasks": list(TASKS)})
    named = _model("hmoe_stem_al", **{"model.auxiliary_tasks": ["click"]})
    read = torch.tensor([o in ("like", "click") for o in named.plan.expert_owners])
    like_gate = named.gate_weights(_batch())[:, 1]  # "like" is now a main task
    assert bool((like_gate[:, read] > 0).all()) and bool((like_gate[:, ~read] == 0).all())


def test_mmoe_every_gate_mixes_every_expert():
    model = _model("mmoe")
    assert model.num_sets == 1 and len(model.experts) == 8
    weights = model.gate_weights(_batch())
    assert weights.shape == (BATCH, 3, 8) and bool((weights > 0).all())
    assert not torch.allclose(weights[:, 0], weights[:, 1])  # one gate per task


def test_ple_task_gates_skip_other_tasks_specific_experts():
    model = _model("ple")
    weights = model.gate_weights(_batch())
    owners = model.plan.expert_owners
    for k, task in enumerate(TASKS):
        allowed = torch.tensor([o in (task, None) for o in owners])
        assert bool((weights[:, k, ~allowed] == 0).all())
        assert bool((weights[:, k, allowed] > 0).all())
    _task_loss(model, _batch(), task=0).backward()
    assert _grad_norm(_experts_of(model, "like")) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["hmoe_stem", "hmoe_ame", "hmoe_stem_al", "mmoe", "ple"])
def test_every_parameter_learns_from_a_step(preset, backend):
    model = _model(preset, **{"model.embedding.backend": backend})
    loss, outputs = TrainWrapper(model, get_preset(preset).loss)(_batch())
    assert outputs["logits"].shape == (BATCH, 3)
    backward_and_check_every_parameter_learns(model, loss)


def test_multitask_ranker_refuses_single_kind():
    with pytest.raises(ConfigError, match="not a multi-task kind"):
        MultiTaskRanker(ModelConfig(), tiny_schema())
