"""Measures of class activation maps: similarity/drift, localisation, faithfulness and a sanity check.

Every function takes and returns torch tensors on the maps' (or the model's) device and works on a
whole batch at once. Maps are ``(B, H, W)`` (a ``(B, 1, H, W)`` tensor is accepted too), normally
float in ``[0, 1]`` as returned by :class:`cams.CamEngine`.

- Similarity and drift: :func:`cosine_similarity`, :func:`spearman`, :func:`drift`.
- Localisation: :func:`pointing_game` (Zhang et al., 2016), :func:`energy_pointing_game`
  (Wang et al., 2020, Score-CAM), :func:`attribution_localisation` (Kohlbrenner et al., 2020); by rank
  (:mod:`cams.metrics.ranking`): :func:`top_k_intersection` (Theiner et al., 2021),
  :func:`relevance_rank_accuracy` (Arras et al., 2022), :func:`roc_auc` (Fawcett, 2006); on 2 x 2 mosaics
  (:mod:`cams.metrics.focus`): :func:`focus` with :func:`focus_mosaics` (Arias-Duart et al., 2022).
- Complexity (:mod:`cams.metrics.complexity`): :func:`sparseness` (Chalasani et al., 2020, Gini index),
  :func:`complexity` (Bhatt et al., 2020, entropy), :func:`effective_complexity` (Nguyen et al., 2020).
- Composite (:mod:`cams.metrics.composite`): :func:`adcc` (Poppi et al., 2021), :func:`arcc`
  (pytorch-grad-cam 1.5.7), with their terms :func:`coherency` and :func:`l1_complexity`.
- Faithfulness: :func:`average_drop`, :func:`increase_in_confidence` (Chattopadhay et al., 2018,
  Grad-CAM++), :func:`deletion_auc`, :func:`insertion_auc` (Petsiuk et al., 2018, RISE) and
  :func:`faithfulness`, which computes all four from one shared, batched set of forwards.
- Sanity: :func:`sanity_check` (Adebayo et al., 2018, cascading model-parameter randomisation).
- Randomisation (Quantus' family, :mod:`cams.metrics.randomisation`): :func:`mprt` (Adebayo et al., 2018),
  :func:`smooth_mprt`, :func:`efficient_mprt` (Hedström et al., 2023), :func:`random_logit` (Sixt et al., 2020).
- Robustness (:mod:`cams.metrics.robustness`): :func:`max_sensitivity`, :func:`avg_sensitivity` (Yeh et al.,
  2019), :func:`local_lipschitz` (Alvarez-Melis & Jaakkola, 2018).
- Faithfulness curves and correlations (:mod:`cams.metrics.faithfulness_curves`,
  :mod:`cams.metrics.faithfulness_correlations`): :func:`pixel_flipping` (Bach et al., 2015),
  :func:`region_perturbation` (Samek et al., 2016), :func:`selectivity` (Montavon et al., 2018), :func:`irof`
  (Rieger & Hansen, 2020), :func:`faithfulness_correlation` (Bhatt et al., 2020), :func:`monotonicity_correlation`
  (Nguyen & Martínez, 2020), :func:`sensitivity_n` (Ancona et al., 2018).
- ROAD: :func:`road` (Rong et al., 2022, remove and debias) and its :func:`noisy_linear_imputation`.
- Axioms: :func:`conservation`, :func:`sensitivity` and :func:`axioms` (Fu et al., 2020, XGrad-CAM).
- Baselines to score beside a method: :func:`centre_map`, :func:`random_map` (seeded).

Functions that run the model do so under :func:`torch.inference_mode` inside
:func:`cams.state.frozen_model`: the model is left as found (modes, BatchNorm buffers, ``.grad``,
global RNG).

To add a measure, open the module of its subject (``similarity``, ``localisation``, ``ranking``, ``focus``,
``complexity``, ``composite``, ``faithfulness``, ``faithfulness_curves``, ``faithfulness_correlations``,
``road``, ``axioms``, ``sanity``, ``randomisation``, ``robustness``, ``baselines``) and add it to ``__all__``
there and here.
"""

from cams.metrics.axioms import axioms, conservation, sensitivity
from cams.metrics.baselines import centre_map, random_map
from cams.metrics.complexity import complexity, effective_complexity, sparseness
from cams.metrics.composite import adcc, arcc, coherency, l1_complexity
from cams.metrics.faithfulness import (
    average_drop,
    deletion_auc,
    faithfulness,
    increase_in_confidence,
    insertion_auc,
)
from cams.metrics.faithfulness_correlations import (
    faithfulness_correlation,
    monotonicity_correlation,
    sensitivity_n,
)
from cams.metrics.faithfulness_curves import irof, pixel_flipping, region_perturbation, selectivity
from cams.metrics.focus import Mosaics, focus, focus_mosaics
from cams.metrics.localisation import attribution_localisation, energy_pointing_game, pointing_game
from cams.metrics.map_statistics import discrete_entropy, ssim
from cams.metrics.randomisation import efficient_mprt, mprt, random_logit, smooth_mprt
from cams.metrics.ranking import relevance_rank_accuracy, roc_auc, top_k_intersection
from cams.metrics.road import noisy_linear_imputation, road
from cams.metrics.robustness import avg_sensitivity, local_lipschitz, max_sensitivity
from cams.metrics.sanity import randomized_copy, sanity_check
from cams.metrics.similarity import cosine_similarity, drift, spearman
from cams.metrics.superpixels import slic
from cams.ops import gaussian_blur

__all__ = [
    "Mosaics",
    "adcc",
    "arcc",
    "attribution_localisation",
    "average_drop",
    "avg_sensitivity",
    "axioms",
    "centre_map",
    "coherency",
    "complexity",
    "conservation",
    "cosine_similarity",
    "deletion_auc",
    "discrete_entropy",
    "drift",
    "effective_complexity",
    "efficient_mprt",
    "energy_pointing_game",
    "faithfulness",
    "faithfulness_correlation",
    "focus",
    "focus_mosaics",
    "gaussian_blur",
    "increase_in_confidence",
    "insertion_auc",
    "irof",
    "l1_complexity",
    "local_lipschitz",
    "max_sensitivity",
    "monotonicity_correlation",
    "mprt",
    "noisy_linear_imputation",
    "pixel_flipping",
    "pointing_game",
    "random_logit",
    "random_map",
    "randomized_copy",
    "region_perturbation",
    "relevance_rank_accuracy",
    "road",
    "roc_auc",
    "sanity_check",
    "selectivity",
    "sensitivity",
    "sensitivity_n",
    "slic",
    "smooth_mprt",
    "sparseness",
    "spearman",
    "ssim",
    "top_k_intersection",
]
