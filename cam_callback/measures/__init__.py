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

``CAMCallback(measures=None)`` (the default) takes :data:`DEFAULT_MEASURES`, each where the fixed batch allows
it (localisation with boxes or masks, the shortcut watch with spurious regions). A list given explicitly is
what you get: a measure in it that the fixed batch cannot serve stops the fit before training, with the reason.
A name stands for the measure with its default settings; pass an instance for others
(``measures=["localisation", NoiseFloor(sigma=0.02)]``).

To add a measure: a :class:`Measure` subclass in a module here (see :mod:`cam_callback.measures.base`), and
its class in :data:`MEASURES`.

Example:
    >>> resolve_measures(["faithfulness", NoiseFloor(0.02)])
    (Faithfulness(), NoiseFloor(sigma=0.02))
    >>> resolve_measures(["faithfullness"])
    Traceback (most recent call last):
    ...
    ValueError: CAMCallback(measures=[..., 'faithfullness', ...]): not a measure (did you mean 'faithfulness'?); ...
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from cam_callback._batch import FixedBatch
from cam_callback.measures.axioms import Axioms
from cam_callback.measures.base import Measure, Setting, Slice, Whole
from cam_callback.measures.baselines import BASELINES, Baselines, baseline_maps
from cam_callback.measures.faithfulness import Faithfulness, Road
from cam_callback.measures.localisation import Localisation
from cam_callback.measures.noise_floor import NoiseFloor
from cam_callback.measures.sanity import Sanity
from cam_callback.measures.shortcut import Shortcut, ShortcutWarning, ShortcutWatch, give
from cams.names import close_matches

__all__ = [
    "BASELINES",
    "DEFAULT_MEASURES",
    "MEASURES",
    "Axioms",
    "Baselines",
    "Faithfulness",
    "Localisation",
    "Measure",
    "NoiseFloor",
    "Road",
    "Sanity",
    "Setting",
    "Shortcut",
    "ShortcutWarning",
    "ShortcutWatch",
    "Slice",
    "Whole",
    "active_measures",
    "baseline_maps",
    "give",
    "measure_names",
    "resolve_measures",
]

MEASURES: dict[str, type[Measure]] = {
    cls.name: cls for cls in (Localisation, Shortcut, NoiseFloor, Baselines, Faithfulness, Road, Axioms, Sanity)
}
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
        ['localisation', 'NoiseFloor(sigma=0.02)']
    """
    out: list[str] = []
    for measure in measures:
        default = MEASURES.get(measure.name)
        out.append(measure.name if default is not None and measure == default() else repr(measure))
    return out
