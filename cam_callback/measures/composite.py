"""``cam_composite/<method>/arcc`` and ``/adcc``: one number from faithfulness, coherency and complexity.

:mod:`cams.metrics.composite`; both higher is better, in ``[0, 1]``:

- ``"adcc"`` (Poppi et al., 2021): the harmonic mean of coherency, ``1 -`` complexity and ``1 -`` Average Drop;
- ``"arcc"`` (pytorch-grad-cam 1.5.7): the same with ROAD's combined score (percentiles 20, 40, 60, 80) in
  place of ``1 -`` Average Drop.

Coherency explains each image masked by its own map again, with the same method and classes: one more engine
call per method and run (each call explains every method; the measure reads the one whose map masked the
images). ARCC adds ROAD's ``2 x 4`` imputed copies of each image, ADCC one forward of the masked images. The
baselines are not scored: coherency needs the method that made a map. Both perturb 2-D images, so a fixed
batch of volumes is refused before training. ROAD's noise is seeded per call, as in
:class:`~cam_callback.measures.Road`: with several processes ARCC's values differ from one process's by it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor

from cam_callback._batch import FixedBatch
from cam_callback.measures.base import Measure, Slice, model_scores
from cams import metrics

__all__ = ["Adcc", "Arcc"]


class _Composite(Measure):
    """A composite of each method's maps: ``cam_composite/<method>/<name>``."""

    function: ClassVar[Callable[..., dict[str, Tensor]]]

    def problem(self, batch: FixedBatch) -> str | None:
        if batch.images.dim() == 5:
            return (
                f"{self.name} masks and perturbs 2-D images and the fixed batch holds volumes (N, C, D, H, W); "
                f"leave {self.name!r} out of measures"
            )
        return None

    def options(self) -> dict[str, object]:
        """Keyword arguments of the metric function beyond the model, images, maps and explain."""
        return {}

    def per_image(self, part: Slice) -> dict[str, Tensor]:
        classes = part.engine_classes if part.engine_classes is not None else part.targets  # the same classes
        values: dict[str, Tensor] = {}
        for name, cam in part.maps.items():
            def explain(images: Tensor, name: str = name) -> Tensor:
                return part.explain(images, classes)[name].float()

            scores = model_scores(type(self).function, part, cam, explain=explain, **self.options())
            values[f"cam_composite/{name}/{self.name}"] = scores[self.name]
        return values


class Arcc(_Composite):
    """ARCC of every map: coherency, ``1 -`` complexity and ROAD, harmonically averaged.

    Args:
        noise: ROAD's imputation noise (``0.01``, pytorch-grad-cam's; ``0`` for a deterministic score).

    Example:
        >>> Arcc()
        Arcc(noise=0.01)
    """

    name: ClassVar[str] = "arcc"
    function = staticmethod(metrics.arcc)

    def __init__(self, noise: float = 0.01) -> None:
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise ValueError(f"Arcc(noise={noise!r}): expected ROAD's imputation noise >= 0, e.g. 0.01")
        self.noise = float(noise)

    def options(self) -> dict[str, object]:
        return {"noise": self.noise}


class Adcc(_Composite):
    """ADCC of every map: coherency, ``1 -`` complexity and ``1 -`` Average Drop, harmonically averaged.

    Example:
        >>> Adcc()
        Adcc()
    """

    name: ClassVar[str] = "adcc"
    function = staticmethod(metrics.adcc)
