"""CAMCallback and each logger's own image API: MLflow (real, file store), Comet (its API, faked offline),
and the PNG fallback in a folder of each run's own."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import QuadrantData, TinyNet
from lightning.pytorch.loggers import CometLogger, Logger, MLFlowLogger

from cam_callback import CAMCallback


def _fit(make_trainer, logger: Any, **cam: Any) -> CAMCallback:
    callback = CAMCallback(num_images=2, **cam)
    make_trainer([callback], logger=logger, max_epochs=1).fit(TinyNet(), datamodule=QuadrantData(n_train=32))
    return callback  # two optimizer steps per epoch: runs at steps 0 and 1 (the epoch's val_loss step)


# ---------------------------------------------------------------------- MLflow
def test_mlflow_runs_get_images_metrics_and_config_on_their_own_run(make_trainer, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks to opt in to Lightning's default store
    store = tmp_path / "mlruns"
    runs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two runs in one tracking store must not share or overwrite files
            logger = MLFlowLogger(experiment_name="cams", save_dir=str(store))
            _fit(make_trainer, logger, methods=["gradcam", "gradcam++"])
            runs.append(logger.run_id)
    assert not [w for w in caught if "PNG" in str(w.message) or "Replacing" in str(w.message)]
    assert not [str(w.message) for w in caught if "CAMCallback" in str(w.message) and "failed" in str(w.message)]

    client = MlflowClient(f"file:{store}")
    for run in runs:
        logged = {
            (name.split("+step+")[0], int(name.split("+step+")[1].split("+")[0]))
            for name in (Path(a.path).name for a in client.list_artifacts(run, "images"))
            if name.endswith(".png")
        }
        assert logged == {
            ("cam~input", 0),
            ("cam~gradcam", 0),
            ("cam~gradcam", 1),
            ("cam~gradcampp", 0),  # MLflow keys allow no '+': gradcam++ -> gradcampp, apart from gradcam
            ("cam~gradcampp", 1),
            *((f"cam~{m}~timeline", step) for m in ("gradcam", "gradcampp") for step in (0, 1)),
        }
        assert [a.path for a in client.list_artifacts(run, "cam")] == ["cam/config.md"]
        assert "gradcam++" in Path(client.download_artifacts(run, "cam/config.md", str(tmp_path))).read_text()
        assert [m.step for m in client.get_metric_history(run, "cam_drift/gradcampp/vs_first")] == [1]
        assert [m.step for m in client.get_metric_history(run, "cam_drift/gradcam/vs_first")] == [1]
    assert not list(store.rglob("cams"))  # nothing beside the runs, no PNG fallback in the store
    experiment = client.get_experiment_by_name("cams")
    assert {r.info.run_id for r in client.search_runs([experiment.experiment_id])} == set(runs)


def test_the_image_worker_never_reads_the_mlflow_run_the_main_thread_writes(make_trainer, tmp_path: Path,
                                                                         monkeypatch) -> None:  # fmt: skip
    """MLflow's file store reads every metric file of a run to find its artifact store; from the image worker that
    read races the main thread creating a metric file ("Metric ... is malformed. No data found.")."""
    pytest.importorskip("mlflow")
    import threading

    from mlflow import MlflowClient
    from mlflow.store.tracking.file_store import FileStore

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    get_run = FileStore.get_run
    off_main: list[str] = []

    def guarded(self: Any, run_id: str) -> Any:
        if threading.current_thread() is not threading.main_thread():
            off_main.append(threading.current_thread().name)
        return get_run(self, run_id)

    monkeypatch.setattr(FileStore, "get_run", guarded)
    logger = MLFlowLogger(experiment_name="cams", save_dir=str(tmp_path / "mlruns"))
    _fit(make_trainer, logger, methods=["gradcam"])
    artifacts = MlflowClient(f"file:{tmp_path / 'mlruns'}").list_artifacts(logger.run_id, "images")
    assert artifacts, "no image reached MLflow"
    assert off_main == []


# ---------------------------------------------------------------------- Comet
class CometExperiment:
    """Records what a ``comet_ml`` experiment is given (same signatures as comet_ml 3.58's ``Experiment``)."""

    def __init__(self) -> None:
        self.images: list[tuple[str | None, int | None, np.ndarray]] = []
        self.texts: list[tuple[str, int | None, dict | None]] = []
        self.metrics: list[tuple[dict, int | None]] = []

    def log_image(self, image_data: Any, name: str | None = None, overwrite: bool = False,
                  image_format: str = "png", image_scale: float = 1.0, image_shape: Any = None,
                  image_colormap: Any = None, image_minmax: Any = None, image_channels: str = "last",
                  copy_to_tmp: bool = True, step: int | None = None, annotations: Any = None,
                  metadata: Any = None) -> None:  # fmt: skip
        assert image_channels == "last"
        self.images.append((name, step, np.asarray(image_data)))

    def log_text(self, text: str, step: int | None = None, metadata: dict | None = None) -> None:
        self.texts.append((text, step, metadata))

    def __internal_api__log_metrics__(self, dic: dict, step: int | None = None, **kwargs: Any) -> None:
        self.metrics.append((dict(dic), step))

    def __internal_api__log_parameters__(self, parameters: dict, **kwargs: Any) -> None:
        pass

    def __internal_api__set_model_graph__(self, graph: Any, **kwargs: Any) -> None:
        pass

    def get_key(self) -> str:
        return "offline0"

    def flush(self) -> None:
        pass


class OfflineComet(CometLogger):
    """Lightning's CometLogger around a recording experiment (comet_ml itself is not installed)."""

    def __init__(self, save_dir: str) -> None:
        Logger.__init__(self)
        self._experiment = CometExperiment()
        self._project_name = "cams"
        self._prefix = ""
        self._experiment_key = "offline0"
        self._comet_config = SimpleNamespace(offline_directory=save_dir)


def test_comet_gets_images_and_config_through_its_experiment(make_trainer, tmp_path: Path) -> None:
    logger = OfflineComet(str(tmp_path / "comet"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(make_trainer, logger)
    assert not [w for w in caught if "PNG" in str(w.message)]
    experiment = logger.experiment
    assert [(name, step) for name, step, _ in experiment.images] == [
        ("cam/input", 0),
        ("cam/gradcam", 0),
        ("cam/gradcam/timeline", 0),
        ("cam/gradcam", 1),
        ("cam/gradcam/timeline", 1),
    ]
    grids = [image for name, _, image in experiment.images if not name.endswith("/timeline")]
    assert all(image.dtype == np.uint8 and image.shape == (20, 2 * 18 + 2, 3) for image in grids)
    ((text, step, metadata),) = experiment.texts
    assert "| methods | gradcam |" in text and step == 0 and metadata == {"tag": "cam/config"}
    assert [step for metrics, step in experiment.metrics if "cam_drift/gradcam/vs_first" in metrics] == [1]
    assert not (tmp_path / "comet").exists()


# ---------------------------------------------------------------------- the PNG fallback
class MetricsOnly(Logger):
    """A logger with no image API and no ``log_dir``: its run folder is ``save_dir/name/version``."""

    def __init__(self, save_dir: Path) -> None:
        super().__init__()
        self._save_dir = str(save_dir)

    @property
    def name(self) -> str:
        return "experiment"

    @property
    def version(self) -> str:
        return "run7"

    @property
    def save_dir(self) -> str:
        return self._save_dir

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass


def test_png_fallback_is_a_folder_of_each_runs_own(make_trainer, tmp_path: Path) -> None:
    for _ in range(2):  # no logger at all: a new version folder per run
        with pytest.warns(UserWarning, match="PNG"):
            _fit(make_trainer, False)
    versions = sorted((tmp_path / "lightning_logs").iterdir())  # where Lightning's default logger puts a run
    assert [run.name for run in versions] == ["version_0", "version_1"]
    for run in (version / "cams" for version in versions):
        assert sorted(p.name for p in (run / "gradcam").iterdir()) == ["step_0000000.png", "step_0000001.png"]
        assert (run / "input" / "input.png").exists() and (run / "config.md").exists()
        # the baseline's noise floor, blank share and cost; the epoch's three drift scalars, noise floor, blank
        # share and cost
        rows = [line.split(",")[:2] for line in (run / "scalars.csv").read_text().splitlines()[1:]]
        cost = {"cam_cost/overhead", "cam_cost/explain/shared", "cam_cost/explain/gradcam",
                "cam_cost/measure/noise_floor", "cam_cost/logging"}  # fmt: skip
        health = "cam_health/gradcam/degenerate"
        assert {tag for step, tag in rows if step == "0"} == {"cam_drift/gradcam/noise_floor", health, *cost}
        drift = {f"cam_drift/gradcam/{name}" for name in ("vs_previous", "vs_first", "noise_floor")}
        assert {tag for step, tag in rows if step == "1"} == {*drift, "cam_drift/pred_changed", health, *cost}
        assert len(rows) == 7 + 10

    with pytest.warns(UserWarning, match="PNG"):
        _fit(make_trainer, MetricsOnly(tmp_path / "store"))
    assert (tmp_path / "store" / "experiment" / "run7" / "cams" / "gradcam" / "step_0000001.png").exists()
