"""CAMCallback under ``strategy="ddp"`` with two CPU processes: no hang, each rank explains half, rank 0 alone logs.

Lightning's ``ddp`` launcher starts the other rank by re-running the command line (``sys.argv``). Inside
pytest that would re-run pytest itself, so the fit runs in a small script started as a subprocess; its
second rank is launched by Lightning exactly as in a user's training script (no ``ddp_spawn`` needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed as dist
from _helpers import read_events

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    out = sys.argv[2]
    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from conftest import TRAINER_DEFAULTS, QuadrantData, TinyNet
    from cam_callback import CAMCallback
    from cams import CamEngine

    torch.set_num_threads(1)
    L.seed_everything(0)
    cam = CAMCallback(methods=["gradcam", "xgradcam"], num_images=4)
    options = dict(TRAINER_DEFAULTS, strategy="ddp", devices=2, max_epochs=2,
                   logger=TensorBoardLogger(out, name="tb"))
    trainer = L.Trainer(callbacks=[cam], **options)
    model = TinyNet()
    trainer.fit(model, datamodule=QuadrantData())
    result = {"rank": trainer.global_rank, "runs": cam.runs, "has_batch": cam.fixed_images is not None,
              "world_size": trainer.world_size,
              "cam_metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("cam_drift/")}}
    if cam.fixed_images is not None:
        fresh = CamEngine(model, cam.layer_names)(cam.fixed_images, methods=cam.methods)
        result["max_abs_diff"] = max(float((fresh[m] - cam.last_maps[m]).abs().max()) for m in cam.methods)
        result["expected_batch"] = bool(torch.equal(cam.fixed_images, QuadrantData().val_set.images[:4]))
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as handle:
        json.dump(result, handle)
    """
)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_ddp_on_two_cpu_processes_completes_and_only_rank_zero_logs(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, str(script), str(Path(__file__).parent), str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,  # a hang fails here instead of blocking the suite
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())

    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["runs"] == 3 and rank0["has_batch"]  # baseline + two epochs
    assert rank1["runs"] == 3 and rank1["has_batch"]  # rank 1 explains its half of every run
    for rank in (rank0, rank1):
        assert rank["expected_batch"]  # the dataset's first samples, not the rank's shard of the sampler
        assert rank["max_abs_diff"] < 1e-6  # the gathered maps are the unwrapped module's
    # the scalars, computed from the gathered maps, reach every rank's callback_metrics alike (a
    # ModelCheckpoint monitoring them runs on each rank)
    assert rank0["cam_metrics"] and rank0["cam_metrics"] == rank1["cam_metrics"]

    event_files = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert len(event_files) == 1  # only rank 0 writes
    events = read_events(event_files[0].parent)
    assert [image.step for image in events.Images("cam/gradcam")] == [0, 1, 3]  # 64 samples / 2 ranks / 16
