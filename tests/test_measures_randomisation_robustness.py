"""The callback's measures of Quantus' randomisation, robustness and faithfulness families: chosen by name, logged
under ``cam_<family>/<method>/<measure>`` (the baselines beside the faithfulness ones), in ``callback_metrics``,
equal to the :mod:`cams.metrics` functions read back after a real fit, independent of how the batch is split, and
leaving training bitwise as it is."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from _helpers import RecordingLogger
from conftest import TRAINER_DEFAULTS, QuadrantData, TinyNet
from lightning.pytorch.loggers import CSVLogger

from cam_callback import CAMCallback
from cam_callback._batch import FixedBatch
from cam_callback.measures import (
    IROF,
    MEASURES,
    MPRT,
    FaithfulnessCorrelation,
    MaxSensitivity,
    MonotonicityCorrelation,
    SensitivityN,
    Slice,
    resolve_measures,
)
from cam_callback.measures._quantus import image_draws
from cam_callback.measures.faithfulness_quantus import DRAW_SEED
from cam_callback.measures.robustness import NOISE_SEED
from cams import CamEngine, metrics

FAMILIES = {
    "cam_randomisation": ("mprt", "smooth_mprt", "efficient_mprt", "random_logit"),
    "cam_robustness": ("max_sensitivity", "avg_sensitivity", "local_lipschitz"),
    "cam_faithfulness": ("faithfulness_correlation", "monotonicity_correlation", "pixel_flipping",
                         "region_perturbation", "irof", "selectivity", "sensitivity_n"),
}  # fmt: skip


def test_every_measure_of_the_three_families_is_registered_under_its_name() -> None:
    names = [name for group in FAMILIES.values() for name in group]
    assert set(names) <= set(MEASURES) and "sanity" in MEASURES
    assert [m.name for m in resolve_measures(names)] == names
    with pytest.raises(ValueError, match=r"MaxSensitivity\(nr_samples=0\): expected a positive int"):
        MaxSensitivity(nr_samples=0)
    with pytest.raises(ValueError, match=r"MPRT\(order='sideways'\): expected one of"):
        MPRT(order="sideways")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch of TinyNet with measures of each family (and the baselines), every scalar recorded."""
    recorder = RecordingLogger()
    names = ["mprt", "random_logit", "max_sensitivity", "local_lipschitz", "pixel_flipping",
             "faithfulness_correlation", "irof", "baselines"]  # fmt: skip
    cam = CAMCallback(num_images=4, measures=names)
    model = TinyNet()
    options = dict(TRAINER_DEFAULTS, max_epochs=1, logger=recorder,
                   default_root_dir=str(tmp_path_factory.mktemp("fit")))  # fmt: skip
    trainer = L.Trainer(callbacks=[cam], **options)
    trainer.fit(model, datamodule=QuadrantData(as_dict=True))
    x = cam.fixed_images
    with torch.no_grad():
        classes = model.eval()(x).argmax(1)
    return {"cam": cam, "model": model, "trainer": trainer, "logged": recorder.metrics, "x": x, "classes": classes,
            "layer": cam.layer_names[0], "maps": cam.last_maps["gradcam"]}  # fmt: skip


def _last(fitted: dict, tag: str) -> float:
    return fitted["logged"][tag][-1][1]


@pytest.mark.slow
def test_a_fit_logs_each_family_under_its_tags_with_the_baselines_beside_the_faithfulness_ones(fitted: dict) -> None:
    logged = fitted["logged"]
    tags = ("cam_randomisation/gradcam/mprt", "cam_randomisation/gradcam/random_logit",
            "cam_robustness/gradcam/max_sensitivity", "cam_robustness/gradcam/local_lipschitz",
            "cam_faithfulness/gradcam/pixel_flipping", "cam_faithfulness/baseline_random/pixel_flipping",
            "cam_faithfulness/baseline_centre/faithfulness_correlation", "cam_faithfulness/gradcam/irof")  # fmt: skip
    for tag in tags:
        assert [step for step, _ in logged[tag]] == [0, 3], tag  # before training and after the epoch
        assert float(fitted["trainer"].callback_metrics[tag]) == pytest.approx(_last(fitted, tag), nan_ok=True)
    assert not any(k.startswith(("cam_robustness/baseline", "cam_randomisation/baseline")) for k in logged)
    assert "cam_cost/overhead" in logged  # the measures are inside the runs the budget times


@pytest.mark.slow
def test_the_logged_values_are_the_metric_functions_on_the_fixed_batch(fitted: dict) -> None:
    model, x, classes, layer, maps = fitted["model"], fitted["x"], fitted["classes"], fitted["layer"], fitted["maps"]
    rows = torch.arange(len(x))
    mprt = metrics.mprt(model, x, layer, targets=classes, modules="blocks")
    assert _last(fitted, "cam_randomisation/gradcam/mprt") == pytest.approx(
        float(torch.stack(list(mprt.values())).mean()), abs=1e-5)  # fmt: skip
    noise = image_draws(lambda g: torch.rand((8, *x.shape[1:]), generator=g) * 0.4 - 0.2, NOISE_SEED, rows,
                        x.device).transpose(0, 1)  # fmt: skip
    sensitivity = metrics.max_sensitivity(model, x, layer, targets=classes, nr_samples=8, noise=noise)
    assert _last(fitted, "cam_robustness/gradcam/max_sensitivity") == pytest.approx(float(sensitivity.mean()),
                                                                                    abs=1e-5)  # fmt: skip
    flipping = metrics.pixel_flipping(model, x, maps, classes, features_in_step=math.ceil(16 * 16 / 16))
    assert _last(fitted, "cam_faithfulness/gradcam/pixel_flipping") == pytest.approx(float(flipping["auc"].mean()),
                                                                                     abs=1e-5)  # fmt: skip
    subsets = image_draws(lambda g: torch.rand(32, 256, generator=g).topk(16).indices, DRAW_SEED, rows, x.device)
    correlation = metrics.faithfulness_correlation(model, x, maps, classes, subsets=subsets)
    assert _last(fitted, "cam_faithfulness/gradcam/faithfulness_correlation") == pytest.approx(
        float(torch.nanmean(correlation)), abs=1e-5)  # fmt: skip
    irof = metrics.irof(model, x, maps, classes, segments=metrics.slic(x, n_segments=32))
    assert _last(fitted, "cam_faithfulness/gradcam/irof") == pytest.approx(float(irof["irof"].mean()), abs=1e-5)


def _part(model: torch.nn.Module, images: torch.Tensor, rows: torch.Tensor) -> Slice:
    engine = CamEngine(model, "features.3")
    x = images[rows]
    result = engine(x, methods="gradcam")
    return Slice(model=model, x=x, batch=FixedBatch(x), rows=rows, images=images, maps={"gradcam": result["gradcam"]},
                 classes=result.classes, engine_classes=result.classes, targets=None,
                 explain=lambda images, targets: engine(images, methods="gradcam", targets=targets),
                 layers=["features.3"])  # fmt: skip


@pytest.mark.parametrize(
    "measure",
    [
        MaxSensitivity(nr_samples=3),
        FaithfulnessCorrelation(nr_runs=6),
        MonotonicityCorrelation(steps=4, nr_samples=2),
        SensitivityN(nr_subsets=4),
        IROF(n_segments=8),
    ],
    ids=lambda m: m.name,
)
def test_an_image_gets_the_same_value_whatever_slice_of_the_batch_it_is_in(measure: object) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TinyNet().eval()
    images = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = measure.per_image(_part(model, images, torch.arange(4)))
    half = measure.per_image(_part(model, images, torch.tensor([2, 3])))
    for tag, values in half.items():
        torch.testing.assert_close(values, whole[tag][2:], atol=1e-5, rtol=0, equal_nan=True)


def _fit(tmp_path: Path, callbacks: list[L.Callback]) -> tuple[L.Trainer, TinyNet]:
    L.seed_everything(7, workers=True)
    model = TinyNet(dropout=0.5)  # dropout: any draw on the global RNG would change the losses
    trainer = L.Trainer(callbacks=callbacks, **dict(TRAINER_DEFAULTS, max_epochs=2, logger=CSVLogger(str(tmp_path))))
    trainer.fit(model, datamodule=QuadrantData(n_train=32, n_val=8))
    return trainer, model


@pytest.mark.slow
def test_training_is_bitwise_identical_with_these_measures_on(tmp_path: Path) -> None:
    _, plain = _fit(tmp_path / "plain", [])
    plain_rng = torch.random.get_rng_state()
    measured = CAMCallback(num_images=2, measures=[
        "mprt", "smooth_mprt", "efficient_mprt", "random_logit", "avg_sensitivity", "local_lipschitz",
        "monotonicity_correlation", "region_perturbation", "selectivity", "sensitivity_n", "irof", "baselines",
    ])  # fmt: skip
    cam_trainer, watched = _fit(tmp_path / "cam", [measured])
    assert measured.runs == 3
    for name, tensor in plain.state_dict().items():  # parameters and BatchNorm buffers
        assert torch.equal(tensor, watched.state_dict()[name]), name
    assert all(torch.equal(a, b) for a, b in zip(plain.losses, watched.losses, strict=True))
    for p, q in zip(plain.parameters(), watched.parameters(), strict=True):  # no .grad writes either
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)
    assert torch.equal(torch.random.get_rng_state(), plain_rng)  # not one draw more or less
    tags = {"cam_randomisation/gradcam/smooth_mprt", "cam_faithfulness/baseline_centre/selectivity"}
    assert tags <= set(cam_trainer.callback_metrics)
