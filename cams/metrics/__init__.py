"""Measures of class activation maps: similarity/drift, localisation, faithfulness and a sanity check.

Every function takes and returns torch tensors on the maps' (or the model's) device and works on a
whole batch at once. Maps are ``(B, H, W)`` (a ``(B, 1, H, W)`` tensor is accepted too), normally
float in ``[0, 1]`` as returned by :class:`cams.CamEngine`.

- Similarity and drift: :func:`cosine_similarity`, :func:`spearman`, :func:`drift`.
- Localisation: :func:`pointing_game` (Zhang et al., 2016), :func:`energy_pointing_game`
  (Wang et al., 2020, Score-CAM).
- Faithfulness: :func:`average_drop`, :func:`increase_in_confidence` (Chattopadhay et al., 2018,
  Grad-CAM++), :func:`deletion_auc`, :func:`insertion_auc` (Petsiuk et al., 2018, RISE) and
  :func:`faithfulness`, which computes all four from one shared, batched set of forwards.
- Sanity: :func:`sanity_check` (Adebayo et al., 2018, cascading model-parameter randomisation).
- ROAD: :func:`road` (Rong et al., 2022, remove and debias) and its :func:`noisy_linear_imputation`.
- Axioms: :func:`conservation`, :func:`sensitivity` and :func:`axioms` (Fu et al., 2020, XGrad-CAM).
- Baselines to score beside a method: :func:`centre_map`, :func:`random_map` (seeded).

Functions that run the model do so under :func:`torch.inference_mode` inside
:func:`cams.state.frozen_model`: the model is left as found (modes, BatchNorm buffers, ``.grad``,
global RNG).

To add a measure, open the module of its subject (``similarity``, ``localisation``, ``faithfulness``,
``road``, ``axioms``, ``sanity``, ``baselines``) and add it to ``__all__`` there and here.
"""

from cams.metrics.axioms import axioms, conservation, sensitivity
from cams.metrics.baselines import centre_map, random_map
from cams.metrics.faithfulness import (
    average_drop,
    deletion_auc,
    faithfulness,
    increase_in_confidence,
    insertion_auc,
)
from cams.metrics.localisation import energy_pointing_game, pointing_game
from cams.metrics.road import noisy_linear_imputation, road
from cams.metrics.sanity import randomized_copy, sanity_check
from cams.metrics.similarity import cosine_similarity, drift, spearman
from cams.ops import gaussian_blur

__all__ = [
    "average_drop",
    "axioms",
    "centre_map",
    "conservation",
    "cosine_similarity",
    "deletion_auc",
    "drift",
    "energy_pointing_game",
    "faithfulness",
    "gaussian_blur",
    "increase_in_confidence",
    "insertion_auc",
    "noisy_linear_imputation",
    "pointing_game",
    "random_map",
    "randomized_copy",
    "road",
    "sanity_check",
    "sensitivity",
    "spearman",
]
