"""Pure-PyTorch models; imports nothing from ``hmoe.platform`` or ``hmoe.jobs`` (only torch).

The public API: ``build(model_config, schema) -> nn.Module`` (``forward(batch) -> logits [B, K]``),
the named ``PRESETS`` (``Preset`` = model + loss + description), ``ModelConfig`` and its parts,
and ``TrainWrapper(model, loss_config)(batch) -> (loss, outputs)``.
"""

from hmoe.models.combine import CombineConfig, MixtureCombiner
from hmoe.models.common import MLP, MLPConfig
from hmoe.models.experts import (
    EXPERT_KINDS,
    DCNV2Config,
    ExpertsConfig,
    FlatConfig,
    FMConfig,
    GwPFMConfig,
    IPNNConfig,
    build_expert,
)
from hmoe.models.features import FeatureEncoder, FeatureEncoderConfig
from hmoe.models.losses import IPWConfig, LossConfig, RankingLossConfig, TrainWrapper
from hmoe.models.mnse import NumericEncoderConfig
from hmoe.models.multitask import MULTITASK_KINDS, MultiTaskRanker
from hmoe.models.ranker import (
    MODEL_KINDS,
    EmbeddingSetsConfig,
    HeteroMoERanker,
    ModelConfig,
)
from hmoe.models.sequence import (
    DINConfig,
    SASRecConfig,
    SequenceEncoderConfig,
    TIMConfig,
    TimeIntervalConfig,
)
from hmoe.models.similarity import SimilarityEncoderConfig
from hmoe.models.zoo import PRESETS, Preset, build, get_preset, with_embedding_backend

__all__ = [
    "EXPERT_KINDS",
    "MLP",
    "MODEL_KINDS",
    "MULTITASK_KINDS",
    "PRESETS",
    "CombineConfig",
    "DCNV2Config",
    "DINConfig",
    "EmbeddingSetsConfig",
    "ExpertsConfig",
    "FMConfig",
    "FeatureEncoder",
    "FeatureEncoderConfig",
    "FlatConfig",
    "GwPFMConfig",
    "HeteroMoERanker",
    "IPNNConfig",
    "IPWConfig",
    "LossConfig",
    "MLPConfig",
    "MixtureCombiner",
    "ModelConfig",
    "MultiTaskRanker",
    "NumericEncoderConfig",
    "Preset",
    "RankingLossConfig",
    "SASRecConfig",
    "SequenceEncoderConfig",
    "SimilarityEncoderConfig",
    "TIMConfig",
    "TimeIntervalConfig",
    "TrainWrapper",
    "build",
    "build_expert",
    "get_preset",
    "with_embedding_backend",
]
