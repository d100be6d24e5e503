"""A run's images are drawn and written off the critical path, and nothing is lost or reordered (issue 24)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch
from _helpers import RecordingLogger
from conftest import QuadrantData, TinyNet

from cam_callback import CAMCallback
from cam_callback._logging import BackgroundLog


def test_jobs_run_in_order_and_a_failure_is_raised_once_by_check() -> None:
    log, done = BackgroundLog(depth=2), []
    for i in range(5):
        log.submit(lambda i=i: done.append(i))

    def fail() -> None:
        raise OSError("disk full")

    log.submit(fail)
    log.submit(lambda: done.append(5))  # the jobs after a failure still run
    with pytest.raises(RuntimeError, match=r"failed in the background: OSError: disk full"):
        log.flush()
    log.check()  # raised once
    assert done == [0, 1, 2, 3, 4, 5]
    log.close()


class SlowImages(RecordingLogger):
    """A logger whose image calls take a while, on another thread than the training loop's."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.threads: set[str] = set()

    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        time.sleep(self.delay)
        self.threads.add(threading.current_thread().name)
        super().log_image(key, images, step, **kwargs)


def test_images_are_written_by_a_worker_thread_and_all_arrive_in_step_order(make_trainer) -> None:
    recorder = SlowImages(delay=0.05)
    cam = CAMCallback(num_images=2, measures=[])
    make_trainer([cam], logger=recorder, max_epochs=3).fit(TinyNet(), datamodule=QuadrantData())
    assert recorder.threads == {"cam-callback-log"}
    steps = [step for key, step, _ in recorder.images if key == "cam/gradcam"]
    assert steps == [0, 3, 7, 11]  # every run's grid, in order, by the end of fit
    timeline = [step for key, step, _ in recorder.images if key == "cam/gradcam/timeline"]
    assert timeline == steps and [k for k, _, _ in recorder.images][:2] == ["cam/input", "cam/gradcam"]
    logging = [step for step, _ in recorder.metrics["cam_cost/logging"]]
    assert logging == steps  # each run's logging cost, logged by its job at its step
    assert all(value >= 2 * 0.05 for _, value in recorder.metrics["cam_cost/logging"])  # grid and timeline
    assert [step for step, _ in recorder.metrics["cam_cost/explain/gradcam"]] == steps


class FailsAtEpoch(TinyNet):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.failing_epoch = epoch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.current_epoch == self.failing_epoch:
            raise RuntimeError("the model broke")
        return super().training_step(batch, batch_idx)


def test_the_images_of_every_run_before_a_failing_fit_still_arrive(make_trainer) -> None:
    recorder = SlowImages(delay=0.05)
    cam = CAMCallback(num_images=2, measures=[])
    with pytest.raises(RuntimeError, match="the model broke"):
        make_trainer([cam], logger=recorder, max_epochs=5).fit(FailsAtEpoch(2), datamodule=QuadrantData())
    assert [step for key, step, _ in recorder.images if key == "cam/gradcam"] == [0, 3, 7]
    assert [step for step, _ in recorder.metrics["cam_cost/logging"]] == [0, 3, 7]


class BrokenImages(RecordingLogger):
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        if step:
            raise OSError("no space left on device")
        super().log_image(key, images, step, **kwargs)


def test_a_failure_in_the_background_is_reported_like_a_failed_run(make_trainer) -> None:
    warned = CAMCallback(num_images=2, measures=[])
    with pytest.warns(RuntimeWarning, match=r"failed in the background: OSError: no space left on device"):
        make_trainer([warned], logger=BrokenImages(), max_epochs=3).fit(TinyNet(), datamodule=QuadrantData())
    raising = CAMCallback(num_images=2, measures=[], on_error="raise")
    with pytest.raises(RuntimeError, match="no space left on device"):
        make_trainer([raising], logger=BrokenImages(), max_epochs=3).fit(TinyNet(), datamodule=QuadrantData())


def test_the_timeline_and_the_state_wait_for_the_background_rows(make_trainer) -> None:
    recorder = SlowImages(delay=0.2)
    cam = CAMCallback(num_images=2, measures=[])
    make_trainer([cam], logger=recorder, max_epochs=1).fit(TinyNet(), datamodule=QuadrantData())
    state = cam.state_dict()
    assert state["timeline"]["methods"]["gradcam"]["runs"] == 2
    assert cam.timeline_image("gradcam") is not None
