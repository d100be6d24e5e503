"""CAMCallback beyond classifiers: a segmentation LightningModule and a 3-D LightningModule, read back from the
TensorBoard event files; task targets in the checkpoint, ``explain`` and the command line."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import decode, read_events
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cam_callback import CAMCallback
from cam_callback._volumes import volume_panels
from cam_callback.measures import Localisation
from cams import metrics
from cams.overlay import mask_outline
from cams.targets import MultiLabelTarget, SegmentationTarget

SIZE = 16




# ---------------------------------------------------------------------------------------------- segmentation
class SquareMasks(Dataset):
    """Noise images with a bright square; per-pixel labels 1 on the square; the square as ``masks``."""

    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 1, SIZE, SIZE, generator=gen) * 0.5
        self.masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
        corners = torch.randint(0, SIZE - 6, (n, 2), generator=gen)
        for i, (y, x) in enumerate(corners.tolist()):
            self.images[i, 0, y : y + 6, x : x + 6] += 0.6
            self.masks[i, y : y + 6, x : x + 6] = 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "masks": self.masks[i]}


class SegNet(L.LightningModule):
    """A tiny fully convolutional network: (B, 1, H, W) → (B, 2, H, W) class logits per pixel."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.classifier = nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # the square covers 14 % of an image: weigh it up so that two short epochs already find it
        return F.cross_entropy(self(batch["image"]), batch["masks"], weight=torch.tensor([0.2, 1.0]))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["image"]), batch["masks"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def _segmentation_fit(make_trainer, **callback_args: Any) -> tuple[CAMCallback, SegNet, L.Trainer]:
    torch.manual_seed(0)
    cam = CAMCallback(
        num_images=4,
        target=SegmentationTarget(1),
        target_layers="features",
        measures=[Localisation(tolerance=0), "noise_floor", "baselines"],
        **callback_args,
    )
    model = SegNet()
    trainer = make_trainer([cam], max_epochs=2, enable_checkpointing=False)
    trainer.fit(
        model,
        train_dataloaders=DataLoader(SquareMasks(64, 0), batch_size=16, shuffle=True),
        val_dataloaders=DataLoader(SquareMasks(8, 1), batch_size=8),
    )
    return cam, model, trainer


def test_segmentation_overlays_carry_the_predicted_mask_outline_beside_them(make_trainer):
    cam, model, trainer = _segmentation_fit(make_trainer, methods=["gradcam", "layercam"])
    events = read_events(trainer.log_dir)
    tile = 2 * SIZE + 2  # overlay | gap | image with the mask's outline
    for tag in ("cam/gradcam", "cam/layercam"):
        images = events.Images(tag)
        assert [e.step for e in images] == [0, 3, 7]
        assert all((e.width, e.height) == (4 * (tile + 2) + 2, SIZE + 4) for e in images)
    last = decode(events.Images("cam/gradcam")[-1])
    model.eval()
    with torch.no_grad():
        predicted = model(cam.fixed_images).argmax(dim=1) == 1  # the model as it was at the last run
    assert bool(predicted.any())
    for i in range(4):
        right = last[2 : 2 + SIZE, 2 + i * (tile + 2) + SIZE + 2 : 2 + i * (tile + 2) + tile]
        green = (right == [0, 255, 0]).all(axis=-1)
        assert np.array_equal(green, mask_outline(predicted[i : i + 1])[0].numpy()), f"image {i}"
    truth = SquareMasks(8, 1).masks[:4] > 0
    pointing = events.Scalars("cam_localisation/gradcam/pointing_game")
    assert [s.step for s in pointing] == [0, 3, 7]
    expected = float(torch.nanmean(metrics.pointing_game(cam.last_maps["gradcam"], masks=truth, tolerance=0)))
    assert pointing[-1].value == pytest.approx(expected)
    # class 1 is predicted nowhere until the second epoch: those maps are blank, and said so; no drift against them
    health = events.Scalars("cam_health/gradcam/degenerate")
    assert [(s.step, s.value) for s in health] == [(0, 1.0), (3, 1.0), (7, 0.0)]
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith("cam_drift/gradcam/vs_")]
    text = events.Tensors("cam/config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| target | seg:1 |" in text


def test_segmentation_target_reaches_the_checkpoint_explain_and_the_command_line(make_trainer, tmp_path):
    from cam_callback import explain
    from cam_callback.cli import main

    cam, model, trainer = _segmentation_fit(make_trainer, faithfulness=True, sanity_check=True)
    events = read_events(trainer.log_dir)
    model.eval()
    with torch.no_grad():  # faithfulness scores the mask the maps explain: class 1 where predicted at the run
        fixed = SegmentationTarget(1).fixed(model(cam.fixed_images))
        expected = metrics.faithfulness(model, cam.fixed_images, cam.last_maps["gradcam"], targets=fixed)
    drop = events.Scalars("cam_faithfulness/gradcam/average_drop")
    assert [s.step for s in drop] == [0, 3, 7]
    assert drop[-1].value == pytest.approx(float(expected["average_drop"].mean()), rel=1e-4, abs=1e-4)
    assert all(-1 <= s.value <= 1 for s in events.Scalars("cam_sanity/gradcam/spearman"))

    ckpt = tmp_path / "seg.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["cam_callback"]["target"] == "seg:1"

    result = explain(ckpt, cam.fixed_images[:2])  # the checkpoint's target: class 1 over its predicted mask
    assert result.target == "seg:1" and result.maps["gradcam"].shape == (2, SIZE, SIZE)
    direct = cam.last_maps["gradcam"][:2]
    assert torch.allclose(result.maps["gradcam"], direct, atol=1e-5)
    assert explain(ckpt, cam.fixed_images[:1], target="seg:0").target == "seg:0"
    with pytest.raises(ValueError, match="category 5 is out of range for an output with 2 classes"):
        explain(ckpt, cam.fixed_images[:1], target="seg:5")
    with pytest.raises(ValueError, match=r"MultiLabelTarget needs a \(B, classes\) multi-label.*SegmentationTarget"):
        explain(ckpt, cam.fixed_images[:1], target="multilabel:all")

    picture = tmp_path / "square.png"
    Image.fromarray((cam.fixed_images[0, 0].clamp(0, 1).numpy() * 255).astype(np.uint8)).save(picture)
    out = tmp_path / "out"
    assert main(["explain", str(ckpt), str(picture), "--target", "seg:1", "--output-dir", str(out)]) == 0
    assert (out / "square-gradcam-overlay.png").exists()
    assert main(["explain", str(ckpt), str(picture), "--target", "seg:1", "--class-id", "1",
                 "--output-dir", str(out)]) == 2  # fmt: skip


def test_task_targets_give_a_stable_state_key():
    assert CAMCallback(target=SegmentationTarget(1)).state_key == CAMCallback(target=SegmentationTarget(1)).state_key
    assert CAMCallback(target=MultiLabelTarget()).state_key != CAMCallback(target=MultiLabelTarget(2)).state_key


# ---------------------------------------------------------------------------------------------- volumes
DEPTH = 8


class PlantedCubes(Dataset):
    """Noise volumes (1, D, H, W) with a bright cube; the class is the half (left/right) it lies in."""

    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 1, DEPTH, SIZE, SIZE, generator=gen) * 0.3
        self.labels = torch.arange(n) % 2
        self.boxes = torch.zeros(n, 6)
        for i in range(n):
            z = int(torch.randint(0, DEPTH - 3, (1,), generator=gen))
            y = int(torch.randint(0, SIZE - 4, (1,), generator=gen))
            x = int(torch.randint(0, SIZE // 2 - 4, (1,), generator=gen)) + SIZE // 2 * int(self.labels[i])
            self.images[i, 0, z : z + 3, y : y + 4, x : x + 4] += 1.5
            self.boxes[i] = torch.tensor([x, y, z, x + 4, y + 4, z + 3], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "label": self.labels[i], "boxes": self.boxes[i]}


class VolumeNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["image"]), batch["label"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _loaders() -> dict[str, DataLoader]:
    return {
        "train_dataloaders": DataLoader(PlantedCubes(32, 0), batch_size=8, shuffle=True),
        "val_dataloaders": DataLoader(PlantedCubes(8, 1), batch_size=8),
    }


def test_volumes_are_logged_as_slices_through_the_peak_with_drift_and_3d_pointing_game(make_trainer):
    torch.manual_seed(0)
    cam = CAMCallback(
        methods=["gradcam", "eigencam"],
        num_images=3,
        target="label",
        measures=[Localisation(tolerance=1), "noise_floor", "baselines"],
    )
    trainer = make_trainer([cam], max_epochs=2)
    trainer.fit(VolumeNet(), **_loaders())
    events = read_events(trainer.log_dir)
    panel_w, panel_h = 3 * SIZE + 4, SIZE  # axial (H, W) | coronal (D, W) | sagittal (D, H), 2-pixel gaps
    for tag in ("cam/input", "cam/gradcam", "cam/eigencam"):
        for event in events.Images(tag):
            assert (event.width, event.height) == (3 * (panel_w + 2) + 2, panel_h + 4), tag
    assert [e.step for e in events.Images("cam/gradcam")] == [0, 3, 7]

    maps = cam.last_maps["gradcam"]
    assert maps.shape == (3, DEPTH, SIZE, SIZE)
    expected = volume_panels(cam.fixed_images, maps, None, None, 0.5, "jet")
    logged = decode(events.Images("cam/gradcam")[-1]).astype(np.float32) / 255
    for i in range(3):
        tile = logged[2 : 2 + panel_h, 2 + i * (panel_w + 2) : 2 + i * (panel_w + 2) + panel_w]
        np.testing.assert_allclose(tile, expected[i].permute(1, 2, 0).numpy(), atol=1.5 / 255)

    boxes = PlantedCubes(8, 1).boxes[:3]
    for name in ("gradcam", "eigencam"):
        pointing = events.Scalars(f"cam_localisation/{name}/pointing_game")
        energy = events.Scalars(f"cam_localisation/{name}/energy")
        assert [s.step for s in pointing] == [s.step for s in energy] == [0, 3, 7]
        last = cam.last_maps[name]
        assert pointing[-1].value == pytest.approx(float(metrics.pointing_game(last, boxes=boxes, tolerance=1).mean()))
        assert energy[-1].value == pytest.approx(float(metrics.energy_pointing_game(last, boxes=boxes).mean()))
        assert [s.step for s in events.Scalars(f"cam_drift/{name}/vs_previous")] == [3, 7]


def test_volumes_with_faithfulness_fail_before_training(make_trainer):
    cam = CAMCallback(num_images=2, measures=["localisation", "noise_floor", "baselines", "faithfulness"])
    model = VolumeNet()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(MisconfigurationException, match=r"faithfulness metrics .* perturb 2-D images only"):
        make_trainer([cam], max_epochs=1).fit(model, **_loaders())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_volume_boxes_must_have_six_columns():
    with pytest.raises(ValueError, match=r"boxes must be \(N, 6\) = \(2, 6\) x0, y0, z0, x1, y1, z1 in voxels"):
        CAMCallback(images={"image": torch.zeros(2, 1, 4, 8, 8), "boxes": torch.zeros(2, 4)})
