"""The noise floor's estimate on a subsample of the fixed images, against the whole batch (issue 24)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from cam_callback._batch import FixedBatch
from cam_callback.measures import NoiseFloor, Slice
from cams import CamEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@pytest.mark.slow
def test_the_subsample_estimate_is_within_a_factor_of_two_of_the_whole_batch_on_the_main_jobs_model() -> None:
    import cluttered_digits as cd

    L.seed_everything(0, verbose=False)
    data = cd.ClutteredDigits(train_size=1500, val_size=64, test_size=32, seed=0)
    data.setup("fit")
    model = cd.DigitNet()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    x = data.tensors("val", 32)["image"]
    engine = CamEngine(model.eval(), "features")
    explained: list[int] = []  # the rows of each engine call the measure makes

    def explain(images: torch.Tensor, methods: list[str], targets: Any) -> Any:
        explained.append(len(images))
        return engine(images, methods, targets)

    for methods in (["gradcam", "xgradcam"], ["scorecam"]):
        result = engine(x, methods)
        part = Slice(model=model, x=x, batch=FixedBatch(x), rows=torch.arange(32), images=x,
                     maps={m: result[m] for m in methods}, classes=result.classes, engine_classes=result.classes,
                     targets=None, explain=lambda images, targets, methods=methods: explain(images, methods, targets),
                     layers=["features"])  # fmt: skip
        whole = NoiseFloor(images=None).per_image(part)
        whole_rows, explained[:] = sum(explained), []
        estimate = NoiseFloor().per_image(part)  # 4 of the 32 images
        for method in methods:
            tag = f"cam_drift/{method}/noise_floor"
            ratio = float(torch.nanmean(estimate[tag]) / whole[tag].mean())
            assert 0.5 < ratio < 2.0, (method, ratio)  # measured: 0.63 (Grad-CAM, XGrad-CAM), 1.41 (Score-CAM)
        assert sum(explained) == 4 and whole_rows >= 32  # 4 perturbed images explained instead of every one
