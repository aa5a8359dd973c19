"""Everything at once: embeddings, experts, ranking loss, optimiser, embedding L2 and the TIM
variant.

The TIM parameter needs a base preset whose sequence encoder is TIM (``hmoe``); on another
preset that path does not exist and the search is refused before any trial, naming it.
"""

from __future__ import annotations

from typing import Any

from hmoe.search_spaces.embeddings import embeddings
from hmoe.search_spaces.experts import experts
from hmoe.search_spaces.ranking_loss import ranking_loss

LR_RANGE = (1e-4, 1e-2)
WEIGHT_DECAYS = (0.0, 1e-6, 1e-5)
TIM_FORMS = ("paper", "code")
# whole-table embedding L2: the lever that mattered most on the small logs (docs/results.md);
# a log-uniform float would spend trials between values that score alike
EMBEDDING_L2S = (0.0, 1e-5, 1e-4, 3e-4, 1e-3)


def full(trial: Any) -> None:
    """The union of ``embeddings``, ``experts`` and ``ranking_loss``, plus learning rate,
    weight decay, embedding L2 and the TIM form (the paper's or the official code's)."""
    embeddings(trial)
    experts(trial)
    ranking_loss(trial)
    trial.suggest_float("train.lr", *LR_RANGE, log=True)
    trial.suggest_categorical("train.weight_decay", list(WEIGHT_DECAYS))
    trial.suggest_categorical("loss.embedding_l2", list(EMBEDDING_L2S))
    trial.suggest_categorical("model.encoder.sequence.tim.form", list(TIM_FORMS))
