"""The cost budget (`cam_callback/_budget.py`, `max_overhead=`): runs over it skipped and said once, none
skipped without it, and the budget's projection."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
from _helpers import RecordingLogger
from conftest import TRAINER_DEFAULTS, QuadrantData, TinyNet
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from cam_callback import CAMCallback
from cam_callback._budget import CostBudget


# ---------------------------------------------------------------------------------------------- budget
class WideNet(TinyNet):
    """TinyNet with 128 channels at the explained layer: Score-CAM costs 128 forwards per image there, while
    a training step is one forward and backward of 16 images (a run costs ~50 steps whatever the machine)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 128, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4))


def test_a_slow_method_over_the_budget_skips_runs_and_says_so_once(tmp_path: Path) -> None:
    recorder = RecordingLogger()
    cam = CAMCallback(method="scorecam", num_images=8, every_n_steps=1, max_overhead=0.05, measures=[])
    options = dict(TRAINER_DEFAULTS, max_epochs=2, logger=recorder, default_root_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        L.Trainer(callbacks=[cam], **options).fit(WideNet(), datamodule=QuadrantData())
    said = [str(w.message) for w in caught if "max_overhead" in str(w.message)]
    assert len(said) == 1 and "skipped the CAM run" in said[0]
    assert cam.skipped_runs >= 4 and cam.runs + cam.skipped_runs == 1 + 8  # baseline + 8 steps scheduled
    shares = [value for _, value in recorder.metrics["cam_cost/overhead"]]
    assert len(shares) == cam.runs and all(0 < share <= 1 for share in shares)


def test_without_a_budget_nothing_is_skipped(tmp_path: Path) -> None:
    cam = CAMCallback(num_images=2, every_n_steps=1, measures=[])
    options = dict(TRAINER_DEFAULTS, max_epochs=1, logger=CSVLogger(str(tmp_path)))
    L.Trainer(callbacks=[cam], **options).fit(TinyNet(), datamodule=QuadrantData())
    assert cam.skipped_runs == 0 and cam.runs == 1 + 4


def test_the_budget_allows_a_run_only_when_the_projected_share_fits() -> None:
    now = [0.0]
    budget = CostBudget(0.1, clock=lambda: now[0])
    assert budget.allows()  # not started: the baseline always runs
    budget.start()
    budget.record(1.0)
    for t, allowed in ((5.0, False), (18.0, False), (19.0, True)):  # (1 + 1) / (t + 1) <= 0.1 from t = 19
        now[0] = t
        assert budget.allows() is allowed, t
    assert budget.share() == pytest.approx(1.0 / 19.0)
    assert CostBudget(None, clock=lambda: now[0]).allows()
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="max_overhead"):
            CAMCallback(max_overhead=bad)
