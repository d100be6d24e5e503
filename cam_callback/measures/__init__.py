"""The callback's measures: what each run computes beside the maps, by name.

=====================  ===========================================================  ======================
name                   logs (per method; ``baseline_*`` too where marked ✓)          needs
=====================  ===========================================================  ======================
``"localisation"``     ``cam_localisation/<m>/pointing_game``, ``/energy`` ✓        object boxes or masks
``"shortcut"``         ``cam_shortcut/<m>/energy``, ``/vs_object`` ✓, a warning     spurious regions
                       ``cam_shortcut/reliance``, ``/reliance_vs_control`` (model)
``"noise_floor"``      ``cam_drift/<m>/noise_floor``                                 one more engine call
``"baselines"``        scores ``baseline_centre``/``baseline_random`` in the ✓ rows
``"faithfulness"``     ``cam_faithfulness/<m>/average_drop``, ... ✓                 2-D images
``"road"``             ``cam_faithfulness/<m>/road_morf``, ``_lerf``, ``_combined`` ✓  2-D images
``"axioms"``           ``cam_axioms/<m>/conservation``, ``/sensitivity``            one target layer
``"sanity"``           ``cam_sanity/<m>/spearman``                                   a model it can deep-copy
=====================  ===========================================================  ======================

Quantus' localisation and complexity families and two composites, one name per measure, tagged
``cam_<family>/<m>/<name>``:

- ``cam_localisation``, against object boxes or masks, baselines ✓: ``"top_k_intersection"``,
  ``"relevance_rank_accuracy"``, ``"attribution_localisation"``, ``"auc"``; and ``"focus"``, on 2 x 2 mosaics
  of the fixed images (labels of at least two classes; one more engine call);
- ``cam_complexity``, from the maps alone: ``"sparseness"``, ``"complexity"``, ``"effective_complexity"``;
- ``cam_composite``, 2-D images, one more engine call per method: ``"arcc"``, ``"adcc"``.

Quantus' randomisation, robustness and faithfulness families (Quantus 0.6.0's definitions, tested against it):

============================  ================================================  ==================================
name                          logs (per method; ✓ the baselines too)            cost per run
============================  ================================================  ==================================
``"mprt"``                    ``cam_randomisation/<m>/mprt``                     1 + blocks engine calls
``"smooth_mprt"``             ``cam_randomisation/<m>/smooth_mprt``              (1 + blocks) x ``nr_samples``
``"efficient_mprt"``          ``cam_randomisation/<m>/efficient_mprt``           2 engine calls per method
``"random_logit"``            ``cam_randomisation/<m>/random_logit``             2 engine calls per method
``"max_sensitivity"``         ``cam_robustness/<m>/max_sensitivity``             ``nr_samples`` x N explained rows
``"avg_sensitivity"``         ``cam_robustness/<m>/avg_sensitivity``             ``nr_samples`` x N explained rows
``"local_lipschitz"``         ``cam_robustness/<m>/local_lipschitz``             ``nr_samples`` x N explained rows
``"pixel_flipping"``, ...     ``cam_faithfulness/<m>/pixel_flipping``, ... ✓     forwards: see
                                                                                 :mod:`~cam_callback.measures.faithfulness_quantus`
============================  ================================================  ==================================

``CAMCallback(measures=None)`` (the default) takes :data:`DEFAULT_MEASURES`, each where the fixed batch allows
it (localisation with boxes or masks, the shortcut watch with spurious regions). A list given explicitly is
what you get: a measure in it that the fixed batch cannot serve stops the fit before training, with the reason.
A name stands for the measure with its default settings; pass an instance for others
(``measures=["localisation", NoiseFloor(sigma=0.02)]``).

To add a measure: a :class:`Measure` subclass in a module here (see :mod:`cam_callback.measures.base`), and
its class in :data:`MEASURES`.

Example:
    >>> resolve_measures(["faithfulness", NoiseFloor(0.02)])
    (Faithfulness(), NoiseFloor(sigma=0.02, images=4))
    >>> resolve_measures(["faithfullness"])
    Traceback (most recent call last):
    ...
    ValueError: CAMCallback(measures=[..., 'faithfullness', ...]): not a measure (did you mean 'faithfulness' ...
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from cam_callback._batch import FixedBatch
from cam_callback.measures.axioms import Axioms
from cam_callback.measures.base import Measure, Setting, Slice, Whole
from cam_callback.measures.baselines import BASELINES, Baselines, baseline_maps
from cam_callback.measures.complexity import Complexity, EffectiveComplexity, Sparseness
from cam_callback.measures.composite import Adcc, Arcc
from cam_callback.measures.faithfulness import Faithfulness, Road
from cam_callback.measures.faithfulness_quantus import (
    IROF,
    FaithfulnessCorrelation,
    MonotonicityCorrelation,
    PixelFlipping,
    RegionPerturbation,
    Selectivity,
    SensitivityN,
)
from cam_callback.measures.focus import Focus
from cam_callback.measures.ground_truth import (
    AttributionLocalisation,
    LocalisationAUC,
    RelevanceRankAccuracy,
    TopKIntersection,
)
from cam_callback.measures.localisation import Localisation
from cam_callback.measures.noise_floor import NoiseFloor
from cam_callback.measures.randomisation import MPRT, EfficientMPRT, RandomLogit, SmoothMPRT
from cam_callback.measures.robustness import AvgSensitivity, LocalLipschitz, MaxSensitivity
from cam_callback.measures.sanity import Sanity
from cam_callback.measures.shortcut import Shortcut, ShortcutWarning, ShortcutWatch
from cams.names import close_matches

__all__ = [
    "BASELINES",
    "DEFAULT_MEASURES",
    "IROF",
    "MEASURES",
    "MPRT",
    "Adcc",
    "Arcc",
    "AttributionLocalisation",
    "AvgSensitivity",
    "Axioms",
    "Baselines",
    "Complexity",
    "EffectiveComplexity",
    "EfficientMPRT",
    "Faithfulness",
    "FaithfulnessCorrelation",
    "Focus",
    "LocalLipschitz",
    "Localisation",
    "LocalisationAUC",
    "MaxSensitivity",
    "Measure",
    "MonotonicityCorrelation",
    "NoiseFloor",
    "PixelFlipping",
    "RandomLogit",
    "RegionPerturbation",
    "RelevanceRankAccuracy",
    "Road",
    "Sanity",
    "Selectivity",
    "SensitivityN",
    "Setting",
    "Shortcut",
    "ShortcutWarning",
    "ShortcutWatch",
    "Slice",
    "SmoothMPRT",
    "Sparseness",
    "TopKIntersection",
    "Whole",
    "active_measures",
    "baseline_maps",
    "measure_names",
    "resolve_measures",
]

MEASURES: dict[str, type[Measure]] = {
    cls.name: cls for cls in (Localisation, Shortcut, NoiseFloor, Baselines, Faithfulness, Road, Axioms, Sanity)
}
_QUANTUS_FAMILIES = (  # Quantus' localisation and complexity families, and the composites ARCC and ADCC
    TopKIntersection, RelevanceRankAccuracy, AttributionLocalisation, LocalisationAUC, Focus,
    Sparseness, Complexity, EffectiveComplexity, Arcc, Adcc,
)  # fmt: skip
MEASURES.update({cls.name: cls for cls in _QUANTUS_FAMILIES})
MEASURES.update({
    cls.name: cls
    for cls in (
        MPRT, SmoothMPRT, EfficientMPRT, RandomLogit, MaxSensitivity, AvgSensitivity, LocalLipschitz,
        FaithfulnessCorrelation, MonotonicityCorrelation, PixelFlipping, RegionPerturbation, IROF, Selectivity,
        SensitivityN,
    )
})  # fmt: skip
"""Measure name -> class."""

DEFAULT_MEASURES = ("localisation", "shortcut", "noise_floor", "baselines")
"""What ``measures=None`` measures, each where the fixed batch allows it."""


def resolve_measures(measures: Sequence[str | Measure]) -> tuple[Measure, ...]:
    """Names and :class:`Measure` instances as instances, in the order given (one per name).

    Raises:
        TypeError: ``measures`` is not a list of names and measures.
        ValueError: an unknown name (with close matches), or one measure given twice.
    """
    if isinstance(measures, (str, Measure)) or not isinstance(measures, Sequence):
        raise TypeError(
            f"CAMCallback(measures={measures!r}): expected a list of measure names (or measures), e.g. "
            f"['localisation', 'faithfulness']; known: {sorted(MEASURES)}"
        )
    resolved: list[Measure] = []
    for item in measures:
        if isinstance(item, str):
            if item not in MEASURES:
                raise ValueError(
                    f"CAMCallback(measures=[..., {item!r}, ...]): not a measure{close_matches(item, MEASURES)}; "
                    f"known: {sorted(MEASURES)}"
                )
            item = MEASURES[item]()
        elif not isinstance(item, Measure):
            raise TypeError(
                f"CAMCallback(measures=[..., {item!r}, ...]): expected a measure name such as 'faithfulness' or a "
                "cam_callback.measures.Measure"
            )
        if any(m.name == item.name for m in resolved):
            raise ValueError(f"CAMCallback(measures=...): {item.name!r} is given twice; give each measure once")
        resolved.append(item)
    return tuple(resolved)


def active_measures(
    measures: Sequence[Measure], required: Collection[str], batch: FixedBatch
) -> tuple[Measure, ...]:
    """The measures that run on ``batch``: those ``required`` (or an error), and the others the batch serves.

    Raises:
        ValueError: a required measure that ``batch`` cannot serve, with the reason; ``"baselines"`` required
            with no measure to score them.
    """
    active: list[Measure] = []
    for measure in measures:
        problem = measure.problem(batch)
        if problem is None:
            active.append(measure)
        elif measure.name in required:
            raise ValueError(f"CAMCallback(measures=[..., {measure.name!r}, ...]): {problem}")
    scorers = [m.name for m in active if m.scores_baselines]
    if not scorers:
        if "baselines" in required and any(isinstance(m, Baselines) for m in active):
            raise ValueError(
                "CAMCallback(measures=[..., 'baselines', ...]): the baseline maps are scored by "
                f"{', '.join(n for n, c in MEASURES.items() if c.scores_baselines)}, and none of them runs on this "
                "fixed batch; add one, or leave 'baselines' out"
            )
        active = [m for m in active if not isinstance(m, Baselines)]
    return tuple(active)


def measure_names(measures: Sequence[Measure]) -> list[str]:
    """The measures as text: a name where a measure has its default settings, else its repr.

    Example:
        >>> measure_names(resolve_measures(["localisation", NoiseFloor(0.02)]))
        ['localisation', 'NoiseFloor(sigma=0.02, images=4)']
    """
    out: list[str] = []
    for measure in measures:
        default = MEASURES.get(measure.name)
        out.append(measure.name if default is not None and measure == default() else repr(measure))
    return out
