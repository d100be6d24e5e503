"""The callback's measures of Quantus' localisation and complexity families and the composites ARCC and ADCC:
chosen by name, refused with the reason where the fixed batch cannot serve them, logged under
``cam_<family>/<method>/<name>`` (with the baselines where they compare maps with the data) and in
``callback_metrics``, equal to the ``cams.metrics`` functions on the fixed batch's maps, and never changing
training."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from _helpers import RecordingLogger
from conftest import TRAINER_DEFAULTS, QuadrantData, TinyNet
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from cam_callback import CAMCallback
from cam_callback._batch import FixedBatch
from cam_callback.measures import (
    MEASURES,
    Adcc,
    Arcc,
    AttributionLocalisation,
    Complexity,
    EffectiveComplexity,
    Focus,
    LocalisationAUC,
    RelevanceRankAccuracy,
    Slice,
    Sparseness,
    TopKIntersection,
    active_measures,
    baseline_maps,
    resolve_measures,
)
from cams import CamEngine, metrics

GROUND_TRUTH = {"top_k_intersection": metrics.top_k_intersection, "relevance_rank_accuracy":
                metrics.relevance_rank_accuracy, "attribution_localisation": metrics.attribution_localisation,
                "auc": metrics.roc_auc}  # fmt: skip
COMPLEXITY = {"sparseness": metrics.sparseness, "complexity": metrics.complexity,
              "effective_complexity": metrics.effective_complexity}  # fmt: skip
NAMES = (*GROUND_TRUTH, "focus", *COMPLEXITY, "arcc", "adcc")


def _measures() -> list[object]:
    return [TopKIntersection(k=16), *[name for name in NAMES if name != "top_k_intersection"], "baselines"]


def _last(recorder: RecordingLogger, tag: str) -> float:
    return recorder.metrics[tag][-1][1]


# ----------------------------------------------------------------------------------------- names and needs
def test_each_measure_is_registered_under_its_name_with_its_family_in_the_tags() -> None:
    assert set(NAMES) <= set(MEASURES)
    classes = (TopKIntersection, RelevanceRankAccuracy, AttributionLocalisation, LocalisationAUC, Focus, Sparseness,
               Complexity, EffectiveComplexity, Arcc, Adcc)  # fmt: skip
    assert resolve_measures(list(NAMES)) == tuple(cls() for cls in classes)
    assert repr(TopKIntersection(k=16)) == "TopKIntersection(k=16, concept_influence=False)"
    assert [cls.scores_baselines for cls in classes] == [True] * 5 + [False] * 5


def test_a_batch_without_objects_labels_or_classes_stops_the_measures_that_need_them_with_the_reason() -> None:
    plain = FixedBatch(torch.zeros(4, 1, 16, 16))
    for name in GROUND_TRUTH:
        with pytest.raises(ValueError, match=rf"'{name}'.*no object boxes or masks"):
            active_measures(resolve_measures([name]), {name}, plain)
    with pytest.raises(ValueError, match="has no labels"):
        active_measures((Focus(),), {"focus"}, plain)
    one_class = FixedBatch(torch.zeros(4, 1, 16, 16), labels=torch.full((4,), 2))
    with pytest.raises(ValueError, match="every fixed image has class 2"):
        active_measures((Focus(),), {"focus"}, one_class)
    boxed = FixedBatch(torch.zeros(2, 1, 16, 16), boxes=torch.tensor([[0, 0, 4, 4]] * 2))
    with pytest.raises(ValueError, match=r"TopKIntersection\(k=1000\) ranks 1000 pixels and the maps have 256.*k=5\)"):
        active_measures((TopKIntersection(),), {"top_k_intersection"}, boxed)
    volumes = FixedBatch(torch.zeros(2, 1, 4, 8, 8), labels=torch.tensor([0, 1]))
    for measure in (Focus(), Arcc(), Adcc()):
        with pytest.raises(ValueError, match="volumes"):
            active_measures((measure,), {measure.name}, volumes)
    assert active_measures(resolve_measures(list(COMPLEXITY)), set(COMPLEXITY), plain) == resolve_measures(
        list(COMPLEXITY))  # fmt: skip
    with pytest.raises(ValueError, match="expected a number of pixels"):
        TopKIntersection(k=0)


def test_focus_explains_one_seeded_mosaic_per_image_for_its_label_and_scores_the_baselines() -> None:
    images = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1])
    seen = {}

    def explain(x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        seen["x"], seen["targets"] = x, targets
        return {"gradcam": x[:, 0].clamp_min(0)}

    rows = torch.tensor([1, 2])  # a process's share of the batch
    part = Slice(model=nn.Identity(), x=images[rows], batch=FixedBatch(images[rows], labels=labels[rows]), rows=rows,
                 images=images, maps={"gradcam": images[rows, 0]}, classes=None, engine_classes=None, targets=None,
                 explain=explain, layers=[], labels=labels,
                 baselines=baseline_maps((4, 6, 6), torch.device("cpu")))  # fmt: skip
    values = Focus().per_image(part)
    mosaics = metrics.focus_mosaics(images, labels)
    assert torch.equal(seen["x"], mosaics.images[rows]) and torch.equal(seen["targets"], labels[rows])
    expected = metrics.focus(mosaics.images[rows, 0].clamp_min(0), mosaics.positions[rows])
    assert torch.equal(values["cam_localisation/gradcam/focus"], expected)
    centre = baseline_maps((4, 12, 12), torch.device("cpu"))["baseline_centre"][rows]
    assert torch.equal(values["cam_localisation/baseline_centre/focus"], metrics.focus(centre, mosaics.positions[rows]))
    shrunk = Focus(shrink_tiles=True).per_image(part)
    assert seen["x"].shape[-2:] == (6, 6) and "cam_localisation/gradcam/focus" in shrunk


# -------------------------------------------------------------------------------------------- a real fit
def _fit(tmp_path: Path, measures: list[object], epochs: int = 1, **options: object) -> tuple:
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=6, measures=measures, **options)
    trainer = L.Trainer(callbacks=[cam], **{**TRAINER_DEFAULTS, "max_epochs": epochs, "logger": recorder,
                                            "default_root_dir": str(tmp_path)})  # fmt: skip
    model = TinyNet()
    trainer.fit(model, datamodule=QuadrantData(as_dict=True))
    return trainer, cam, model, recorder


def test_a_fit_logs_the_map_measures_equal_to_the_functions_on_the_fixed_batchs_maps(tmp_path: Path) -> None:
    names = [TopKIntersection(k=16), *[n for n in GROUND_TRUTH if n != "top_k_intersection"], *COMPLEXITY,
             "baselines"]  # fmt: skip
    trainer, cam, _, recorder = _fit(tmp_path, names)
    maps, boxes = cam.last_maps["gradcam"], cam._batch.boxes
    base = baseline_maps(tuple(maps.shape), torch.device("cpu"))
    for name, function in GROUND_TRUTH.items():
        options = {"k": 16} if name == "top_k_intersection" else {}
        for method, cams in (("gradcam", maps), *base.items()):
            expected = float(function(cams, boxes=boxes, **options).nanmean())
            assert _last(recorder, f"cam_localisation/{method}/{name}") == pytest.approx(expected, abs=1e-6)
    for name, function in COMPLEXITY.items():
        assert _last(recorder, f"cam_complexity/gradcam/{name}") == pytest.approx(float(function(maps).mean()))
        assert f"cam_complexity/baseline_centre/{name}" not in recorder.metrics
    logged = {tag for tag in recorder.metrics if tag.startswith(("cam_localisation", "cam_complexity"))}
    assert len(logged) == 4 * 3 + 3 and logged <= set(trainer.callback_metrics)
    assert [step for step, _ in recorder.metrics["cam_localisation/gradcam/auc"]] == [0, 3]  # baseline, epoch
    assert "cam_cost/overhead" in trainer.callback_metrics


@pytest.mark.slow
def test_a_fit_logs_focus_arcc_and_adcc_equal_to_the_functions_on_the_trained_model(tmp_path: Path) -> None:
    trainer, cam, model, recorder = _fit(tmp_path, ["focus", "arcc", "adcc", "baselines"])
    model.eval()
    engine = CamEngine(model, cam.layer_names)
    images, labels = cam.fixed_images, cam.fixed_labels
    mosaics = metrics.focus_mosaics(images, labels)
    focus = metrics.focus(engine(mosaics.images, "gradcam", targets=mosaics.targets)["gradcam"], mosaics.positions)
    assert _last(recorder, "cam_localisation/gradcam/focus") == pytest.approx(float(focus.mean()), abs=1e-5)
    centre = baseline_maps(tuple(mosaics.images[:, 0].shape), torch.device("cpu"))["baseline_centre"]
    assert _last(recorder, "cam_localisation/baseline_centre/focus") == pytest.approx(0.5)  # the centre: chance
    assert float(metrics.focus(centre, mosaics.positions).mean()) == pytest.approx(0.5)
    explained = engine(images, "gradcam")
    maps, classes = explained["gradcam"], explained.classes
    assert torch.allclose(maps, cam.last_maps["gradcam"], atol=1e-6)  # the weights of the last run

    def explain(x: torch.Tensor) -> torch.Tensor:
        return engine(x, "gradcam", targets=classes)["gradcam"]

    for name, function in (("arcc", metrics.arcc), ("adcc", metrics.adcc)):
        expected = float(function(model, images, maps, explain, targets=classes)[name].mean())
        assert _last(recorder, f"cam_composite/gradcam/{name}") == pytest.approx(expected, abs=1e-5)
        assert f"cam_composite/gradcam/{name}" in trainer.callback_metrics
        assert f"cam_composite/baseline_random/{name}" not in recorder.metrics


@pytest.mark.slow
def test_training_is_bitwise_identical_with_and_without_these_measures(tmp_path: Path) -> None:
    def fit(callbacks: list[L.Callback]) -> tuple[TinyNet, torch.Tensor]:
        L.seed_everything(7, workers=True)
        model = TinyNet(dropout=0.5)  # dropout: any draw on the global RNG would change the losses
        options = dict(TRAINER_DEFAULTS, max_epochs=2, logger=CSVLogger(str(tmp_path)))
        L.Trainer(callbacks=callbacks, **options).fit(model, datamodule=QuadrantData(n_train=32, as_dict=True))
        return model, torch.random.get_rng_state()

    plain, plain_rng = fit([])
    cam = CAMCallback(num_images=4, target="label", measures=_measures())
    watched, watched_rng = fit([cam])
    assert cam.runs == 3
    for name, tensor in plain.state_dict().items():  # parameters and BatchNorm buffers
        assert torch.equal(tensor, watched.state_dict()[name]), name
    assert all(torch.equal(a, b) for a, b in zip(plain.losses, watched.losses, strict=True))
    assert all(p.grad is None or torch.equal(p.grad, q.grad) for p, q in zip(plain.parameters(), watched.parameters(),
                                                                             strict=True))  # fmt: skip
    assert torch.equal(plain_rng, watched_rng)
