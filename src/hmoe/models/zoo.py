"""The model zoo: named presets (model + loss) and ``build(model_config, schema)``.

``PRESETS`` is a plain dict of functions returning a ``Preset``; each function's docstring says
what it reproduces. Presets never name a dataset's columns, so every preset builds on every
schema (the multi-task ones need the schema's task list; STEM-AL needs >= 2 tasks). A search or
the CLI varies a preset only through ``hmoe.config.apply_overrides`` on its dotted paths, e.g.
``{"model.experts.counts.dcnv2": 2, "loss.ranking.alpha": 0.7}``.

Sizes: the paper's production sizes are not public; the baselines follow the peer settings of
the shared benchmarks.md (Q1: embedding 16, DNN (128, 64) for the sequence models; Q2: embedding 10,
DNN (400, 400, 400), dropout 0.2, 3 cross layers for the Criteo models) and the STEM repository
(embedding 16, experts (512, 512, 512), towers (128, 128)) for the multi-task baselines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from hmoe.config import Config, ConfigError, config
from hmoe.models.combine import CombineConfig
from hmoe.models.common import MLPConfig
from hmoe.models.embeddings import EmbeddingBackend
from hmoe.models.experts import (
    DCNV2Config,
    ExpertsConfig,
    FlatConfig,
    FMConfig,
    GwPFMConfig,
    IPNNConfig,
)
from hmoe.models.features import FeatureEncoderConfig
from hmoe.models.losses import IPWConfig, LossConfig, RankingLossConfig
from hmoe.models.mnse import NumericEncoderConfig
from hmoe.models.multitask import MultiTaskRanker
from hmoe.models.ranker import EmbeddingSetsConfig, HeteroMoERanker, ModelConfig
from hmoe.models.sequence import (
    DINConfig,
    SASRecConfig,
    SequenceEncoderConfig,
    TIMConfig,
    TimeIntervalConfig,
)
from hmoe.models.similarity import SimilarityEncoderConfig
from hmoe.schema import FeatureSchema

__all__ = ["PRESETS", "Preset", "build", "get_preset", "with_embedding_backend"]


@config
class Preset(Config):
    """A named starting point: the model, its training objective and what it reproduces."""

    model: ModelConfig
    loss: LossConfig = LossConfig()
    description: str


def build(model_config: ModelConfig, schema: FeatureSchema) -> nn.Module:
    """Build the model ``model_config.kind`` selects for ``schema``.

    Returns a module whose ``forward(batch)`` gives logits ``[B, K]`` (``K = schema.num_tasks``,
    in ``schema.tasks`` order), wrapped in ``torch.compile`` when ``use_compile`` is set (the
    compiled module forwards attribute access, so the analysis methods stay reachable).
    """
    if not isinstance(schema, FeatureSchema):
        raise TypeError(f"build needs a FeatureSchema, got {type(schema).__name__}")
    if model_config.kind == "single":
        model: nn.Module = HeteroMoERanker(model_config, schema)
    else:
        model = MultiTaskRanker(model_config, schema)
    return torch.compile(model) if model_config.use_compile else model


def with_embedding_backend(model: nn.Module, backend: EmbeddingBackend) -> HeteroMoERanker:
    """A copy of ``model`` (a ``build`` result) whose id tables use ``backend``, every weight
    copied, in eval mode: the same outputs. ``torch`` is the export form (no TorchRec needed
    to load or run it); ``torchrec`` moves a model onto the fused tables.

    The copy's ``table_*`` knobs are the defaults when converting to ``torch`` (that backend
    does not read them) and the source's otherwise.
    """
    if not isinstance(model, HeteroMoERanker):
        raise TypeError(f"expected a model from zoo.build, got {type(model).__name__}")
    defaults = EmbeddingSetsConfig()
    source = model.config.embedding
    fused = {f: getattr(defaults if backend == "torch" else source, f) for f in _TABLE_KNOBS}
    embedding = dataclasses.replace(source, backend=backend, **fused)
    copy = build(dataclasses.replace(model.config, embedding=embedding), model.schema)
    assert isinstance(copy, HeteroMoERanker)  # torchrec excludes use_compile; torch keeps it
    state = {k: v for k, v in model.state_dict().items() if not _is_id_table(k)}
    missing, unexpected = copy.load_state_dict(state, strict=False)
    if unexpected or not all(_is_id_table(k) for k in missing):
        raise RuntimeError(f"backend copy: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for source_encoder, target_encoder in zip(model.encoders, copy.encoders, strict=True):
            for c in model.schema.categorical:
                target_encoder.id_table(c.name).copy_(source_encoder.id_table(c.name))
    return copy.eval()


_TABLE_KNOBS = ("table_optimizer", "table_lr", "table_l2", "table_eps")


def _is_id_table(key: str) -> bool:
    """State-dict key of an id table in either backend."""
    return ".id_tables." in key or (".categorical." in key and key.endswith(".table.weight"))


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a ``ConfigError`` listing the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name]()


# --- shared building blocks ---------------------------------------------------------------------

#: the paper's encoders: TIM with log time-interval buckets, MNSE numerics, similarity buckets
#: (as fields and as a per-behaviour side embedding)
HMOE_ENCODER = FeatureEncoderConfig(
    numeric=NumericEncoderConfig(kind="mnse", bases=(2, 3)),
    sequence=SequenceEncoderConfig(
        kind="tim", tim=TIMConfig(time_intervals=TimeIntervalConfig(), form="paper")
    ),
)
#: plain baselines: numerics as one bucket table, history mean-pooled, no similarity side input
PLAIN_ENCODER = FeatureEncoderConfig(
    numeric=NumericEncoderConfig(kind="bucket"),
    sequence=SequenceEncoderConfig(kind="mean", use_similarity=False),
)
#: DeepCTR-Torch's DIN defaults: attention MLP (64, 16) with Dice, no softmax normalisation
DIN_ATTENTION = DINConfig(
    attention=MLPConfig(hidden_dims=(64, 16), activation="dice"), normalise="none"
)
HMOE_LOSS = LossConfig(ranking=RankingLossConfig(enabled=True, alpha=0.9))
#: whole-table embedding L2 of the single-task ``hmoe`` preset: without it the id tables overfit
#: by epoch 2 (criteo-tiny: 9k train rows for 15M parameters); 1e-3 had the best validation AUC
#: of {0, 1e-5, 1e-4, 3e-4, 1e-3} on criteo-tiny Q2, beyond 2 seed stds (docs/results.md,
#: "chosen on validation"), and the ``full`` search, also on validation, chose it on ml-100k Q1
HMOE_EMBEDDING_L2 = 1e-3
#: ... and of ``hmoe_stem`` / ``hmoe_ame``: on the report's synthetic two-task log their mean
#: validation AUC went 0.670 -> 0.690 -> 0.700 (STEM) and 0.667 -> 0.693 -> 0.703 (AME) for
#: 0 -> 3e-4 -> 1e-3; on adult all three are equal within noise (docs/results.md)
MULTITASK_EMBEDDING_L2 = 1e-3
MULTITASK_LOSS = dataclasses.replace(HMOE_LOSS, embedding_l2=MULTITASK_EMBEDDING_L2)
STEM_EXPERT = MLPConfig(hidden_dims=(512, 512, 512))
STEM_TOWER = MLPConfig(hidden_dims=(128, 128))


def _mlp(*dims: int, dropout: float = 0.0) -> MLPConfig:
    return MLPConfig(hidden_dims=dims, dropout=dropout)


def _hetero_experts(counts: dict[str, int], mlp: MLPConfig) -> ExpertsConfig:
    """Every kind's template with the same MLP (so the mixtures need no projection)."""
    return ExpertsConfig(
        counts=counts,
        gwpfm=GwPFMConfig(mlp=mlp),
        ipnn=IPNNConfig(mlp=mlp),
        dcnv2=DCNV2Config(mlp=mlp, num_layers=2),
        mlp=FlatConfig(mlp=mlp),
        fm=FMConfig(mlp=mlp),
    )


def _sequence_baseline(kind: str, sequence: SequenceEncoderConfig) -> Preset:
    model = ModelConfig(
        encoder=FeatureEncoderConfig(
            numeric=NumericEncoderConfig(kind="bucket"), sequence=sequence
        ),
        embedding=EmbeddingSetsConfig(embedding_dim=16, assignment="shared"),
        experts=ExpertsConfig(counts={"mlp": 1}, mlp=FlatConfig(mlp=_mlp(128, 64))),
        combine=CombineConfig(method="mean"),
        tower=_mlp(),
    )
    return Preset(model=model, description=f"{kind} baseline (ml-100k Q1 peer sizes)")


# --- presets ------------------------------------------------------------------------------------


def debug() -> Preset:
    """Tiny, every technique switched on (for tests): TIM with time buckets, MNSE, similarity,
    five embedding sets with one expert of every kind, each expert projected to 8 units (so a
    search may vary one expert's width), a softmax gate with a hidden layer, Combined-Pair, IPW
    (clipping active) and embedding L2."""
    mlp = _mlp(8)
    experts = ExpertsConfig(
        counts={"gwpfm": 1, "ipnn": 1, "dcnv2": 1, "mlp": 1, "fm": 1},
        gwpfm=GwPFMConfig(mlp=mlp, pair_weight_l2=0.01),
        ipnn=IPNNConfig(mlp=mlp),
        dcnv2=DCNV2Config(mlp=mlp, num_layers=2),
        mlp=FlatConfig(mlp=mlp),
        fm=FMConfig(mlp=mlp),
    )
    encoder = FeatureEncoderConfig(
        init_std=0.1,
        numeric=NumericEncoderConfig(num_levels=64, bases=(2, 3)),
        similarity=SimilarityEncoderConfig(num_levels=5),
        sequence=SequenceEncoderConfig(
            kind="tim",
            tim=TIMConfig(time_intervals=TimeIntervalConfig(num_buckets=8, unit_seconds=86400.0)),
        ),
    )
    model = ModelConfig(
        encoder=encoder,
        embedding=EmbeddingSetsConfig(embedding_dim=4),
        experts=experts,
        combine=CombineConfig(method="gate", gate_mlp=_mlp(4), output_dim=8),
        tower=_mlp(8),
    )
    loss = LossConfig(
        ranking=RankingLossConfig(enabled=True, alpha=0.8),
        ipw=IPWConfig(enabled=True, exponent=0.5, min_weight=0.5),
        embedding_l2=1e-4,
    )
    return Preset(model=model, loss=loss, description="tiny model for tests, every technique on")


def hmoe() -> Preset:
    """The paper's single-task model (KDD'24 Fig. 1, spec §1.1): TIM (log time-interval buckets, the
    paper's ``sum alpha (e~ * v~)``; ``model.encoder.sequence.tim.form=code`` gives the official
    code's tokens, which validation AUC did not prefer on ml-100k Q1 and which overfit sparse
    histories on small logs, docs/results.md), MNSE (bases 2, 3) of numerics and similarities,
    heterogeneous experts GwPFM / IPNN / DCN V2 (2 cross layers) / FlatDNN each with a 256-unit
    layer, in two expert groups (the third-party HMoE code's grouping,
    ``assignment="by_interaction"``: GwPFM + IPNN share embedding set 0, with one 16-dim part per
    field group, DCN V2 + FlatDNN share set 1), a softmax gate with one logit per expert from that
    expert's set, a 128-unit tower, and Combined-Pair (alpha 0.9). Two sets rather than one per
    expert keep the step within 3x of ``dcnv2``'s cost (docs/performance.md);
    ``model.embedding.assignment=per_expert`` gives one set per expert. Whole-table embedding L2
    (``HMOE_EMBEDDING_L2``) keeps the id tables from overfitting on small logs."""
    model = ModelConfig(
        encoder=HMOE_ENCODER,
        embedding=EmbeddingSetsConfig(embedding_dim=16, assignment="by_interaction"),
        experts=_hetero_experts({"gwpfm": 1, "ipnn": 1, "dcnv2": 1, "mlp": 1}, _mlp(256)),
        combine=CombineConfig(method="gate", gate_source="expert_inputs"),
        tower=_mlp(128),
    )
    loss = dataclasses.replace(HMOE_LOSS, embedding_l2=HMOE_EMBEDDING_L2)
    return Preset(model=model, loss=loss, description="HMoE single-task (KDD'24)")


def hmoe_stem() -> Preset:
    """STEM-Net (AAAI'24, official code's routing, spec §4.1) inside HMoE: a shared and one
    embedding set per task (dim 16), one FlatDNN expert per task, heterogeneous shared experts
    (IPNN, DCN V2, 2 FlatDNN), gate MLP (128, 64) per task over all experts with
    All-Forward-Task-specific-Backward, towers (128, 64), HMoE encoders, Combined-Pair, whole-table
    embedding L2 (``MULTITASK_EMBEDDING_L2``)."""
    model = ModelConfig(
        kind="stem",
        encoder=HMOE_ENCODER,
        embedding=EmbeddingSetsConfig(embedding_dim=16, assignment="shared"),
        experts=_hetero_experts({"mlp": 1}, _mlp(256, 128)),
        shared_experts=_hetero_experts({"ipnn": 1, "dcnv2": 1, "mlp": 2}, _mlp(256, 128)),
        combine=CombineConfig(method="gate", gate_mlp=_mlp(128, 64)),
        tower=_mlp(128, 64),
    )
    return Preset(model=model, loss=MULTITASK_LOSS, description="HMoE + STEM (multi-task)")


def hmoe_ame() -> Preset:
    """Asymmetric Multi-Embedding (KDD'24, spec §4.2): three embedding sets of dims 16 / 32 / 64,
    each with its own FlatDNN expert (256, 128); every task's softmax gate (input: all sets)
    mixes all three, no stop-gradient; towers (128, 64); HMoE encoders; Combined-Pair;
    whole-table embedding L2 (``MULTITASK_EMBEDDING_L2``)."""
    model = ModelConfig(
        kind="ame",
        encoder=HMOE_ENCODER,
        embedding=EmbeddingSetsConfig(set_dims=(16, 32, 64), assignment="per_expert"),
        experts=_hetero_experts({"mlp": 3}, _mlp(256, 128)),
        combine=CombineConfig(method="gate"),
        tower=_mlp(128, 64),
    )
    return Preset(model=model, loss=MULTITASK_LOSS, description="HMoE + AME (multi-task)")


def hmoe_stem_al() -> Preset:
    """STEM for auxiliary learning (KDD'24, spec §4.3): every task owns one embedding set (dim
    16) with an IPNN and a FlatDNN expert (256, 128); the main task (the schema's first) mixes
    its own and the auxiliary experts, the latter through stop-gradient; auxiliary towers read
    only their own experts; towers (128, 64); HMoE encoders; Combined-Pair."""
    model = ModelConfig(
        kind="stem_al",
        encoder=HMOE_ENCODER,
        embedding=EmbeddingSetsConfig(embedding_dim=16, assignment="shared"),
        experts=_hetero_experts({"ipnn": 1, "mlp": 1}, _mlp(256, 128)),
        combine=CombineConfig(method="gate"),
        tower=_mlp(128, 64),
    )
    return Preset(model=model, loss=HMOE_LOSS, description="HMoE + STEM-AL (main + auxiliary)")


def dnn() -> Preset:
    """Plain DNN (Q2 peer sizes): one embedding set of dim 10, the flattened fields through
    MLP (400, 400, 400) with dropout 0.2, a linear logit; numerics bucketised, history mean."""
    model = ModelConfig(
        encoder=PLAIN_ENCODER,
        embedding=EmbeddingSetsConfig(embedding_dim=10, assignment="shared"),
        experts=ExpertsConfig(
            counts={"mlp": 1}, mlp=FlatConfig(mlp=_mlp(400, 400, 400, dropout=0.2))
        ),
        combine=CombineConfig(method="mean"),
        tower=_mlp(),
    )
    return Preset(model=model, description="DNN baseline (criteo Q2 peer sizes)")


def deepfm() -> Preset:
    """DeepFM (Guo et al. 2017, Q2 peer sizes) without the first-order term: one embedding set
    of dim 10 shared by an FM expert and a DNN expert (400, 400, 400, dropout 0.2), each
    projected to one unit and summed (the FM projection generalises FM's all-ones sum)."""
    model = ModelConfig(
        encoder=PLAIN_ENCODER,
        embedding=EmbeddingSetsConfig(embedding_dim=10, assignment="shared"),
        experts=ExpertsConfig(
            counts={"fm": 1, "mlp": 1},
            fm=FMConfig(mlp=_mlp()),
            mlp=FlatConfig(mlp=_mlp(400, 400, 400, dropout=0.2)),
        ),
        combine=CombineConfig(method="sum", output_dim=1),
        tower=_mlp(),
    )
    return Preset(model=model, description="DeepFM baseline (criteo Q2 peer sizes)")


def dcnv2() -> Preset:
    """DCN V2 (Wang et al. 2021) in the ranking-loss repo's parallel structure with the Q2 peer
    sizes: embedding 10, 3 full-rank cross layers beside a DNN (400, 400, 400, dropout 0.2),
    both concatenated into a linear logit; one embedding set."""
    model = ModelConfig(
        encoder=PLAIN_ENCODER,
        embedding=EmbeddingSetsConfig(embedding_dim=10, assignment="shared"),
        experts=ExpertsConfig(
            counts={"dcnv2": 1},
            dcnv2=DCNV2Config(
                mlp=_mlp(400, 400, 400, dropout=0.2), num_layers=3, structure="parallel"
            ),
        ),
        combine=CombineConfig(method="mean"),
        tower=_mlp(),
    )
    return Preset(model=model, description="DCN V2 baseline (criteo Q2 peer sizes)")


def din() -> Preset:
    """DIN (Zhou et al. 2018) as DeepCTR-Torch configures it (the Q1 peer): embedding 16,
    activation unit (64, 16) with Dice and unnormalised weights, DNN (128, 64)."""
    sequence = SequenceEncoderConfig(kind="din", use_similarity=False, din=DIN_ATTENTION)
    return _sequence_baseline("DIN", sequence)


def din_plus() -> Preset:
    """DIN+ (TIN repo): DIN plus the target-aware representation token ``u * v``; else as
    ``din``."""
    sequence = SequenceEncoderConfig(kind="din_plus", use_similarity=False, din=DIN_ATTENTION)
    return _sequence_baseline("DIN+", sequence)


def sasrec() -> Preset:
    """SASRec-style encoder (Kang & McAuley 2018): 2 causal self-attention blocks, 1 head,
    dropout 0.2, the newest behaviour's state as the interest token; DNN (128, 64)."""
    sequence = SequenceEncoderConfig(kind="sasrec", use_similarity=False, sasrec=SASRecConfig())
    return _sequence_baseline("SASRec", sequence)


def shared_bottom() -> Preset:
    """Shared-bottom multi-task baseline (STEM repo settings): one embedding set of dim 16, a
    shared MLP (512, 512, 512), one tower (128, 128) per task."""
    model = ModelConfig(
        encoder=PLAIN_ENCODER,
        embedding=EmbeddingSetsConfig(embedding_dim=16, assignment="shared"),
        experts=ExpertsConfig(counts={"mlp": 1}, mlp=FlatConfig(mlp=STEM_EXPERT)),
        combine=CombineConfig(method="mean"),
        tower=STEM_TOWER,
    )
    return Preset(model=model, description="Shared-bottom baseline (STEM repo)")


def mmoe() -> Preset:
    """MMoE (Ma et al. 2018; STEM repo settings): one embedding set of dim 16, 8 MLP experts
    (512, 512, 512), a linear softmax gate per task, towers (128, 128)."""
    model = ModelConfig(
        kind="mmoe",
        encoder=PLAIN_ENCODER,
        embedding=EmbeddingSetsConfig(embedding_dim=16, assignment="shared"),
        experts=ExpertsConfig(counts={"mlp": 8}, mlp=FlatConfig(mlp=STEM_EXPERT)),
        combine=CombineConfig(method="gate"),
        tower=STEM_TOWER,
    )
    return Preset(model=model, description="MMoE baseline (STEM repo)")


def ple() -> Preset:
    """PLE with one extraction level (Tang et al. 2020; STEM repo settings): one embedding set
    of dim 16, 1 specific MLP expert per task and 8 shared (512, 512, 512), task t's linear
    softmax gate over its own and the shared experts, towers (128, 128)."""
    model = ModelConfig(
        kind="ple",
        encoder=PLAIN_ENCODER,
        embedding=EmbeddingSetsConfig(embedding_dim=16, assignment="shared"),
        experts=ExpertsConfig(counts={"mlp": 1}, mlp=FlatConfig(mlp=STEM_EXPERT)),
        shared_experts=ExpertsConfig(counts={"mlp": 8}, mlp=FlatConfig(mlp=STEM_EXPERT)),
        combine=CombineConfig(method="gate"),
        tower=STEM_TOWER,
    )
    return Preset(model=model, description="PLE baseline (STEM repo)")


PRESETS: dict[str, Callable[[], Preset]] = {
    "debug": debug,
    "hmoe": hmoe,
    "hmoe_stem": hmoe_stem,
    "hmoe_ame": hmoe_ame,
    "hmoe_stem_al": hmoe_stem_al,
    "dnn": dnn,
    "deepfm": deepfm,
    "dcnv2": dcnv2,
    "din": din,
    "din_plus": din_plus,
    "sasrec": sasrec,
    "shared_bottom": shared_bottom,
    "mmoe": mmoe,
    "ple": ple,
}
