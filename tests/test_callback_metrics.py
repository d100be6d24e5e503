"""The callback's scalars as metrics Lightning can act on: in `callback_metrics` at the step of Lightning's
own, for `ModelCheckpoint` and `EarlyStopping`, and at the training loss's step with `every_n_steps`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _helpers import RecordingLogger
from conftest import QuadrantData, TinyNet
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from cam_callback import CAMCallback


# ------------------------------------------------------------------------- metrics Lightning can act on
def test_every_scalar_is_in_callback_metrics_at_the_step_of_lightnings_metrics(make_trainer) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=4, measures=["localisation", "noise_floor", "baselines", "faithfulness"])
    trainer = make_trainer([cam], logger=recorder, max_epochs=2)
    trainer.fit(TinyNet(), datamodule=QuadrantData(as_dict=True))
    cam_keys = {key for key in recorder.metrics if key.startswith("cam")} - {"cam_cost/logging"}  # the worker's
    assert {"cam_localisation/gradcam/pointing_game", "cam_faithfulness/baseline_random/deletion_auc",
            "cam_drift/gradcam/noise_floor", "cam_cost/overhead", "cam_cost/measure/faithfulness"} <= cam_keys
    assert cam_keys <= set(trainer.callback_metrics)
    for key in cam_keys:
        assert float(trainer.callback_metrics[key]) == pytest.approx(recorder.metrics[key][-1][1], nan_ok=True)
    val_steps = [step for step, _ in recorder.metrics["val_loss"]]
    assert val_steps == [3, 7]
    assert [step for step, _ in recorder.metrics["cam_drift/gradcam/vs_first"]] == val_steps
    assert [step for step, _ in recorder.metrics["cam_localisation/gradcam/energy"]] == [0, *val_steps]
    assert [step for key, step, _ in recorder.images if key == "cam/gradcam"] == [0, *val_steps]


def test_a_model_checkpoint_keeps_the_epoch_with_the_best_pointing_game(make_trainer, tmp_path: Path) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=6, target="label", measures=["localisation"])
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="cam_localisation/gradcam/pointing_game",
                           mode="max", save_top_k=1, filename="{epoch}")
    trainer = make_trainer([cam, best], logger=recorder, max_epochs=3, enable_checkpointing=True)
    trainer.fit(TinyNet(), datamodule=QuadrantData(as_dict=True))
    per_epoch = [value for step, value in recorder.metrics["cam_localisation/gradcam/pointing_game"] if step > 0]
    assert len(per_epoch) == 3
    assert float(best.best_model_score) == pytest.approx(max(per_epoch))
    assert Path(best.best_model_path).name == f"epoch={int(np.argmax(per_epoch))}.ckpt"


def test_early_stopping_acts_on_a_cam_scalar(make_trainer) -> None:
    cam = CAMCallback(num_images=4, target="label", measures=["localisation"])
    stop = EarlyStopping(monitor="cam_localisation/gradcam/energy", mode="max", stopping_threshold=0.0)
    trainer = make_trainer([cam, stop], max_epochs=5)
    trainer.fit(TinyNet(), datamodule=QuadrantData(as_dict=True))
    assert trainer.current_epoch == 1 and stop.stopped_epoch == 0  # the energy is > 0 after the first epoch


def test_runs_every_n_steps_share_the_step_of_the_training_loss(make_trainer) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(num_images=2, every_n_steps=3, measures=[])
    trainer = make_trainer([cam], logger=recorder, max_epochs=2)
    trainer.fit(TinyNet(), datamodule=QuadrantData())
    steps = [step for key, step, _ in recorder.images if key == "cam/gradcam"]
    assert steps == [0, 2, 5]  # after global steps 3 and 6: the step train_loss of that batch has
    assert set(steps[1:]) <= {step for step, _ in recorder.metrics["train_loss"]}
    assert "cam_drift/gradcam/vs_first" in trainer.callback_metrics
