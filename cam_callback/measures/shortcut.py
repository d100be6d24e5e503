"""Shortcut watch: how much of each map lies on a region marked spurious, whether the model relies on it, and
a warning when both say so.

Given spurious regions (``images={..., "spurious_mask": ...}`` or a batch key ``spurious_mask``/``spurious_masks``)
beside the object's boxes or masks, every run logs, per method (and per baseline map):

- ``cam_shortcut/<method>/energy``: the share of the map's mass on the spurious region (the energy-based
  pointing game of :func:`cams.metrics.energy_pointing_game`, averaged over the images that have one);
- ``cam_shortcut/<method>/vs_object``: that share divided by the share on the object, over the same
  images (``cam_localisation/<method>/energy`` is the object's share over all images);

and, once per run for the model (reliance is a property of the model, not of a map: removing a region changes
the model's score whatever the method that drew attention to it), the intervention of
:mod:`cam_callback.measures.reliance`, averaged over the images where it is defined:

- ``cam_shortcut/reliance``: how much of the explained class's probability goes when the spurious region is
  removed (ROAD's noisy linear imputation; a relative drop, 1 = all of it); ``/reliance_flips``: the share of
  predictions that change;
- ``cam_shortcut/reliance_control`` and ``/reliance_control_flips``: the same for an equal-area region placed
  away from the object (seeded);
- ``cam_shortcut/reliance_vs_control``: the first drop minus the control's.

A :class:`ShortcutWarning` is given at a run after the baseline when attention **and** reliance say so:
``vs_object > Shortcut(ratio=...)`` and ``reliance_vs_control > Shortcut(reliance=...)``, once per method,
with both numbers. Attention over the ratio on a region the model does not rely on gets a quieter note
instead (logged at INFO level: salient but not used), once per method. Where reliance cannot be measured
(``Shortcut(reliance=None)``, volumes, a target without class scores, a region covering the whole image) the
warning rests on attention alone and says so. Before training the maps reflect random weights, so the
baseline run is not judged.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback.measures.base import Measure, Slice, Whole
from cam_callback.measures.localisation import objects
from cam_callback.measures.reliance import box_masks, reliance
from cams import metrics

__all__ = [
    "RELIANCE",
    "RELIANCE_SEED",
    "Shortcut",
    "ShortcutWarning",
    "ShortcutWatch",
    "Verdict",
    "shortcut_message",
    "shortcut_scalars",
]

RELIANCE = 0.1
"""Default ``Shortcut(reliance=...)``: the relative drop of the explained class's probability beyond the
control's above which the model is taken to rely on the spurious region. Measured (``docs/shortcut.md``, the
example's three runs at seed 0): 0.16 for the shortcut model after one epoch, 0.54 once it has learned the
marker; at most 0.04 at every run of the clean and the class-independent ones (-0.11 and -0.14 at the last); the
watermark scenarios of ``docs/benchmarks.md`` measured 0.08 for a class-dependent square beside an object that
gives the class on its own, 0.00 for a class-independent one."""
RELIANCE_SEED = 0
"""Seed of the generator of the control regions' places and the imputation noise."""
_RELIANCE_TAGS = {
    "reliance": "reliance",
    "control": "reliance_control",
    "vs_control": "reliance_vs_control",
    "flips": "reliance_flips",
    "control_flips": "reliance_control_flips",
}

Verdict = Literal["shortcut", "salient", "clear"]
"""What :meth:`ShortcutWatch.decide` concludes for a method: a shortcut (attention and reliance), a salient
region the model does not use (attention only), or nothing to say."""


class ShortcutWarning(UserWarning):
    """A CAM puts more attention on a region marked spurious than on the object, and the model relies on it.

    Turn it into an error to stop training when it happens::

        warnings.filterwarnings("error", category=ShortcutWarning)
    """


def shortcut_scalars(maps: dict[str, Tensor], batch: FixedBatch) -> dict[str, float]:
    """``cam_shortcut/<method>/energy`` and ``/vs_object`` for maps ``(N, H, W)`` of the fixed batch.

    Args:
        maps: each method's maps (or a baseline's), ``(N, H, W)`` on any device.
        batch: the fixed batch, with ``spurious`` masks and the object's ``boxes`` or ``masks``.

    Example:
        >>> maps = torch.zeros(1, 4, 4)
        >>> maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0                 # 3/4 of the mass on the marker
        >>> spurious = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> spurious[0, 0, 0] = True
        >>> batch = FixedBatch(torch.zeros(1, 1, 4, 4), boxes=torch.tensor([[2, 2, 4, 4]]), spurious=spurious)
        >>> shortcut_scalars({"gradcam": maps}, batch)
        {'cam_shortcut/gradcam/energy': 0.75, 'cam_shortcut/gradcam/vs_object': 3.0}
    """
    assert batch.spurious is not None
    scalars: dict[str, float] = {}
    for name, cam in maps.items():
        cam = cam.detach().float()
        spurious = batch.spurious.to(cam.device)
        boxes, masks = objects(batch, cam.device)
        on_spurious = metrics.energy_pointing_game(cam, masks=spurious).double()
        has_region = torch.isfinite(on_spurious)
        scalars[f"cam_shortcut/{name}/energy"] = float(on_spurious[has_region].mean()) if has_region.any() else math.nan
        if boxes is not None or masks is not None:
            on_object = metrics.energy_pointing_game(cam, boxes=boxes, masks=masks).double()
            both = has_region & torch.isfinite(on_object)
            spurious_share = float(on_spurious[both].sum())
            object_share = float(on_object[both].sum())
            ratio = spurious_share / object_share if object_share > 0 else math.inf if spurious_share > 0 else math.nan
            scalars[f"cam_shortcut/{name}/vs_object"] = ratio if bool(both.any()) else math.nan
    return scalars


def _attention(method: str, scalars: dict[str, float], threshold: float, when: str) -> str:
    spurious = scalars[f"cam_shortcut/{method}/energy"]
    ratio = scalars[f"cam_shortcut/{method}/vs_object"]
    object_energy = spurious / ratio if ratio > 0 else 0.0
    return (
        f"{when}, {method}'s attention on the spurious region is {ratio:.1f}x its attention on the object "
        f"(Shortcut(ratio={threshold:g})): {spurious:.0%} of the map's mass lies on the spurious region against "
        f"{object_energy:.0%} on the object."
    )


def _removal(scalars: dict[str, float]) -> str:
    def share(key: str) -> str:
        return f"{scalars.get(key, math.nan):.0%}".replace("-0%", "0%")  # a drop of -0.4 % reads 0 %

    return (
        f"removing the region (ROAD's noisy linear imputation) takes {share('cam_shortcut/reliance')} of the "
        f"explained class's probability away and changes {share('cam_shortcut/reliance_flips')} of the predictions, "
        f"against {share('cam_shortcut/reliance_control')} and {share('cam_shortcut/reliance_control_flips')} for an "
        "equal-area region away from the object"
    )


def shortcut_message(
    method: str, scalars: dict[str, float], threshold: float, when: str, reliance: float | None = None
) -> str:
    """The warning's words: what was measured (attention and, where measured, reliance), against what, and what
    to look at.

    Args:
        method: the method warned about.
        scalars: the run's scalars (``cam_shortcut/...``).
        threshold: ``Shortcut(ratio=...)``.
        when: ``"After epoch 2 (global step 40)"``.
        reliance: ``Shortcut(reliance=...)``; ``None``: not measured.
    """
    vs_control = scalars.get("cam_shortcut/reliance_vs_control")
    if reliance is None:
        used = ("The model's reliance on the region was not measured (Shortcut(reliance=None)); this warning rests "
                "on attention alone.")  # fmt: skip
    elif vs_control is None or not math.isfinite(vs_control):
        used = (
            "The model's reliance on the region could not be measured (volumes, a target without class scores, a "
            "region covering the whole image, or no equal-area place away from the object for the control); this "
            "warning rests on attention alone."
        )
    else:
        used = (f"The model relies on it: {_removal(scalars)} (reliance_vs_control {vs_control:.2f} > "
                f"Shortcut(reliance={reliance:g})).")  # fmt: skip
    return (
        f"CAMCallback: possible shortcut. {_attention(method, scalars, threshold, when)} {used} The model may be "
        f"learning the spurious cue instead of the object; see cam_shortcut/{method}/energy, cam_shortcut/reliance "
        f"and the cam/{method}/timeline image. This warning is given once per method."
    )


def _salient_message(method: str, scalars: dict[str, float], threshold: float, when: str, reliance: float) -> str:
    vs_control = scalars["cam_shortcut/reliance_vs_control"]
    return (
        f"CAMCallback: salient but not used. {_attention(method, scalars, threshold, when)} The model does not rely "
        f"on it: {_removal(scalars)} (reliance_vs_control {vs_control:.2f} <= Shortcut(reliance={reliance:g})). "
        "The map follows what is visible, not what the model uses; no ShortcutWarning. This note is given once "
        "per method."
    )


class Shortcut(Measure):
    """Attention on the spurious regions (per method) and the model's reliance on them (per model).

    Args:
        ratio: attention says "shortcut" when ``cam_shortcut/<method>/vs_object`` exceeds it.
        reliance: reliance says so when ``cam_shortcut/reliance_vs_control`` exceeds it (the default's
            justification: :data:`RELIANCE`); ``None`` measures no reliance (one forward of 3 x the fixed
            batch less per run) and judges attention alone.

    A :class:`ShortcutWarning` needs both, after the baseline run (see :class:`ShortcutWatch`).

    Example:
        >>> Shortcut(ratio=2.0)
        Shortcut(ratio=2.0, reliance=0.1)
    """

    name: ClassVar[str] = "shortcut"
    scores_baselines: ClassVar[bool] = True
    nan_is_undefined: ClassVar[bool] = True

    def __init__(self, ratio: float = 1.0, reliance: float | None = RELIANCE) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0 < float(ratio) < math.inf):
            raise ValueError(
                f"Shortcut(ratio={ratio!r}): expected a positive number, e.g. 1.0 (warn when the spurious region "
                "gets more attention than the object)"
            )
        if reliance is not None and (
            isinstance(reliance, bool) or not isinstance(reliance, (int, float)) or not (0 <= float(reliance) < 1)
        ):
            raise ValueError(
                f"Shortcut(reliance={reliance!r}): expected a share of probability in [0, 1), e.g. {RELIANCE} (warn "
                "when removing the spurious region takes this much more of the explained class's probability away "
                "than removing an equal-area region elsewhere), or None to judge attention alone"
            )
        self.ratio = float(ratio)
        self.reliance = None if reliance is None else float(reliance)

    def problem(self, batch: FixedBatch) -> str | None:
        if batch.spurious is None:
            return (
                "the fixed batch has no spurious regions: give them with images={'image': x, 'boxes': ..., "
                "'spurious_mask': ...}, or yield them under a 'spurious_mask' batch key"
            )
        return None

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        """The reliance values of the slice's images (``nan`` where undefined); none for volumes, a target
        without classes, or ``reliance=None``."""
        x, spurious, classes = part.x, part.batch.spurious, part.engine_classes
        if self.reliance is None or spurious is None or x.dim() != 4 or not isinstance(classes, Tensor):
            return {}
        boxes, masks = objects(part.batch, x.device)
        height, width = x.shape[-2:]
        on_object = masks if masks is not None else box_masks(boxes, height, width) if boxes is not None else None
        if on_object is None:
            return {}
        # drawn for the whole batch and sliced: an image's values do not depend on the number of processes
        generator = torch.Generator(device=x.device).manual_seed(RELIANCE_SEED)
        n, rows = len(part.images), part.rows.to(x.device)
        draws = torch.rand(n, generator=generator, device=x.device)[rows]
        noise = torch.randn((2, n, *x.shape[1:]), generator=generator, device=x.device)[:, rows]
        try:
            values = reliance(part.model, x, spurious, on_object, classes, draws=draws, noise=noise,
                              forward_context=part.forward_context)  # fmt: skip
        except ValueError:  # no (N, classes) logits: a task model; attention alone is judged
            return {}
        return {f"cam_shortcut/{_RELIANCE_TAGS[key]}": value for key, value in values.items()}

    def on_batch(self, whole: Whole) -> dict[str, float]:
        if whole.batch.spurious is None:
            return {}
        return shortcut_scalars(whole.scored(self.scores_baselines), whole.batch)


class ShortcutWatch:
    """What each method's attention and the model's reliance say, and which methods were warned about or noted.

    :meth:`decide` is a pure decision (as Lightning's ``EarlyStopping._evaluate_stopping_criteria``): from a
    run's scalars, the verdict for one method and its message. :meth:`check` applies it to every method and
    keeps each method's warning (and note) to once per session.

    Args:
        ratio: :class:`Shortcut`'s ``ratio``.
        reliance: :class:`Shortcut`'s ``reliance`` (``None``: attention alone).

    Example:
        >>> watch = ShortcutWatch(1.0, reliance=0.1)
        >>> scalars = {"cam_shortcut/gradcam/energy": 0.6, "cam_shortcut/gradcam/vs_object": 3.0,
        ...            "cam_shortcut/reliance": 0.5, "cam_shortcut/reliance_control": 0.0,
        ...            "cam_shortcut/reliance_vs_control": 0.5}
        >>> watch.decide(scalars, "gradcam", "After epoch 2")[0]
        'shortcut'
        >>> [verdict for verdict, _ in watch.check(scalars, ["gradcam"], "epoch 2")]
        ['shortcut']
        >>> watch.check(scalars, ["gradcam"], "epoch 3")   # once per method
        []
        >>> watch.alerts
        {'gradcam': 'epoch 2'}
        >>> watch.decide({**scalars, "cam_shortcut/reliance_vs_control": 0.01}, "gradcam", "After epoch 2")[0]
        'salient'
    """

    def __init__(self, ratio: float = 1.0, reliance: float | None = RELIANCE) -> None:
        self.ratio = ratio
        self.reliance = reliance
        self.alerts: dict[str, str] = {}
        self.notes: dict[str, str] = {}

    @classmethod
    def of(cls, measure: Measure | None) -> ShortcutWatch:
        """The watch for a :class:`Shortcut` measure (its defaults when there is none)."""
        if isinstance(measure, Shortcut):
            return cls(measure.ratio, measure.reliance)
        return cls()

    def fresh(self) -> ShortcutWatch:
        """The same thresholds, nothing said yet (a new session)."""
        return ShortcutWatch(self.ratio, self.reliance)

    def decide(self, scalars: dict[str, float], method: str, when: str) -> tuple[Verdict, str]:
        """The verdict for ``method`` from one run's scalars, and its message (``""`` when clear); pure.

        ``"shortcut"``: attention over ``ratio`` and reliance over ``reliance`` (or attention over ``ratio``
        where reliance is not measured, said in the message); ``"salient"``: attention over ``ratio`` on a region
        the model does not rely on; ``"clear"``: attention at or below ``ratio`` (or not measured).
        """
        ratio = scalars.get(f"cam_shortcut/{method}/vs_object")
        if ratio is None or not ratio > self.ratio:
            return "clear", ""
        vs_control = scalars.get("cam_shortcut/reliance_vs_control")
        measured = self.reliance is not None and vs_control is not None and math.isfinite(vs_control)
        if measured and not vs_control > self.reliance:  # type: ignore[operator]
            assert self.reliance is not None
            return "salient", _salient_message(method, scalars, self.ratio, when, self.reliance)
        return "shortcut", shortcut_message(method, scalars, self.ratio, when, self.reliance)

    def check(
        self, scalars: dict[str, float], methods: list[str] | tuple[str, ...], when: str
    ) -> list[tuple[Verdict, str]]:
        """The warnings and notes due now: each method's first ``"shortcut"``, and its first ``"salient"`` before
        any warning, as ``(verdict, message)``."""
        due: list[tuple[Verdict, str]] = []
        for name in methods:
            if name in self.alerts:
                continue
            verdict, message = self.decide(scalars, name, f"After {when}")
            if verdict == "shortcut":
                self.alerts[name] = when
            elif verdict == "salient" and name not in self.notes:
                self.notes[name] = when
            else:
                continue
            due.append((verdict, message))
        return due
