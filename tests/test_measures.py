"""``cam_callback.measures``: each measure a function of the values a run hands it, chosen by name."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cam_callback._batch import FixedBatch
from cam_callback.measures import (
    DEFAULT_MEASURES,
    MEASURES,
    Axioms,
    Baselines,
    Faithfulness,
    Localisation,
    NoiseFloor,
    Setting,
    Shortcut,
    Slice,
    Whole,
    active_measures,
    baseline_maps,
    resolve_measures,
)
from cams import metrics


def _slice(batch: FixedBatch, maps: dict[str, torch.Tensor], **overrides) -> Slice:
    values = dict(model=nn.Identity(), x=batch.images, batch=batch, rows=torch.arange(len(batch)), images=batch.images,
                  maps=maps, classes=None, engine_classes=None, targets=None, explain=lambda x, t: None, layers=[])
    values.update(overrides)  # fmt: skip
    return Slice(**values)


def test_every_measure_is_registered_under_its_name_and_the_defaults_are_known() -> None:
    assert all(cls.name == name for name, cls in MEASURES.items())
    assert set(DEFAULT_MEASURES) <= set(MEASURES)
    assert resolve_measures(DEFAULT_MEASURES) == (Localisation(), Shortcut(), NoiseFloor(), Baselines())


def test_required_measures_the_batch_cannot_serve_stop_with_the_reason_others_are_skipped() -> None:
    plain = FixedBatch(torch.zeros(2, 1, 8, 8))
    chosen = resolve_measures(["localisation", "shortcut", "noise_floor"])
    assert active_measures(chosen, frozenset(), plain) == (NoiseFloor(),)
    with pytest.raises(ValueError, match=r"'localisation'.*no object boxes or masks"):
        active_measures(chosen, {"localisation"}, plain)
    volumes = FixedBatch(torch.zeros(2, 1, 4, 8, 8))
    with pytest.raises(ValueError, match="perturb 2-D images only"):
        active_measures((Faithfulness(),), {"faithfulness"}, volumes)
    with pytest.raises(ValueError, match="baseline maps are scored by"):
        active_measures((Baselines(),), {"baselines"}, plain)
    assert active_measures((Baselines(),), frozenset(), plain) == ()  # nothing scores them: left out


def test_localisation_scores_each_map_and_the_baselines_with_the_pointing_game_and_its_energy() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 8.0, 8.0]])
    batch = FixedBatch(torch.zeros(2, 1, 8, 8), boxes=boxes)
    maps = torch.zeros(2, 8, 8)
    maps[0, 0, 0], maps[1, 0, 0] = 1.0, 1.0  # on the first object, off the second
    base = baseline_maps((2, 8, 8), torch.device("cpu"))
    values = Localisation(tolerance=0).per_image(_slice(batch, {"gradcam": maps}, baselines=base))
    assert values["cam_localisation/gradcam/pointing_game"].tolist() == [1.0, 0.0]
    assert values["cam_localisation/gradcam/energy"].tolist() == [1.0, 0.0]
    expected = metrics.energy_pointing_game(base["baseline_centre"], boxes=boxes)
    assert torch.allclose(values["cam_localisation/baseline_centre/energy"], expected)


def test_localisation_averages_over_the_images_that_have_an_object_and_other_means_keep_nan() -> None:
    values = {"cam_localisation/gradcam/energy": torch.tensor([0.5, math.nan, 1.0])}
    assert Localisation().reduce(values) == {"cam_localisation/gradcam/energy": 0.75}
    assert math.isnan(Faithfulness().reduce({"t": torch.tensor([0.5, math.nan])})["t"])  # a nan there is a result


def test_shortcut_measures_the_share_on_the_spurious_region_over_the_share_on_the_object() -> None:
    spurious = torch.zeros(1, 4, 4, dtype=torch.bool)
    spurious[0, 0, 0] = True
    batch = FixedBatch(torch.zeros(1, 1, 4, 4), boxes=torch.tensor([[2, 2, 4, 4]]), spurious=spurious)
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0
    scalars = Shortcut().on_batch(Whole(batch, {"gradcam": maps}))
    assert scalars == {"cam_shortcut/gradcam/energy": 0.75, "cam_shortcut/gradcam/vs_object": 3.0}
    with pytest.raises(ValueError, match=r"Shortcut\(ratio=-1\)"):
        Shortcut(ratio=-1)


def test_the_noise_floor_explains_the_perturbed_images_with_the_same_classes() -> None:
    batch = FixedBatch(torch.rand(3, 1, 8, 8))
    seen = {}

    def explain(images: torch.Tensor, targets: object) -> dict[str, torch.Tensor]:
        seen["images"], seen["targets"] = images, targets
        return {"gradcam": images[:, 0]}

    classes = torch.tensor([2, 0, 1])
    part = _slice(batch, {"gradcam": batch.images[:, 0]}, explain=explain, engine_classes=classes)
    values = NoiseFloor(sigma=0.5).per_image(part)
    sigma = 0.5 * float(batch.images.std())
    noise = torch.randn(batch.images.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(seen["images"], batch.images + sigma * noise) and torch.equal(seen["targets"], classes)
    expected = 1 - metrics.cosine_similarity(seen["images"][:, 0], batch.images[:, 0])
    assert torch.allclose(values["cam_drift/gradcam/noise_floor"], expected)


def test_the_noise_floor_is_estimated_on_the_same_seeded_subsample_in_every_process() -> None:
    from cam_callback._distributed import rows_for
    from cam_callback.measures.noise_floor import subsample

    batch = FixedBatch(torch.rand(10, 1, 8, 8))
    chosen = subsample(10, 4)
    assert torch.equal(chosen, subsample(10, 4)) and len(chosen) == 4
    calls: list[int] = []

    def explain(images: torch.Tensor, targets: object) -> dict[str, torch.Tensor]:
        calls.append(len(images))
        return {"gradcam": images[:, 0]}

    whole = NoiseFloor(0.5).per_image(_slice(batch, {"gradcam": batch.images[:, 0]}, explain=explain))
    assert calls == [4] and torch.isfinite(whole["cam_drift/gradcam/noise_floor"]).nonzero()[:, 0].equal(chosen)
    calls.clear()
    parts = []
    for rank in range(3):  # the same values from three processes' slices, each explaining as many rows
        rows = rows_for(10, 3, rank)
        part = FixedBatch(batch.images[rows])
        maps = {"gradcam": part.images[:, 0]}
        values = NoiseFloor(0.5).per_image(_slice(part, maps, rows=rows, images=batch.images, explain=explain,
                                                  world_size=3))  # fmt: skip
        parts.append(values["cam_drift/gradcam/noise_floor"][: min(4, 10 - 4 * rank)])
    assert len(set(calls)) == 1  # every process the same number of rows (a sharded forward is a collective)
    gathered = torch.cat(parts)
    assert torch.allclose(gathered, whole["cam_drift/gradcam/noise_floor"], equal_nan=True)


def test_axioms_are_checked_against_the_methods_and_layers_at_construction() -> None:
    Axioms().check(Setting(("gradcam",), ["features"]))
    with pytest.raises(ValueError, match="one layer"):
        Axioms().check(Setting(("gradcam",), ["a", "b"]))
    with pytest.raises(ValueError, match="sum weighted channels"):
        Axioms().check(Setting(("eigencam",), None))


def test_measures_compare_and_print_by_their_settings() -> None:
    assert NoiseFloor(0.02) == NoiseFloor(0.02) != NoiseFloor(0.03)
    assert repr(Localisation(tolerance=3)) == "Localisation(tolerance=3)"
    assert len({NoiseFloor(0.02), NoiseFloor(0.02), Shortcut()}) == 2
