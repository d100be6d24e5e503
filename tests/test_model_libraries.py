"""The model libraries users train with, each in a short Lightning fit with ``CAMCallback`` read back from TensorBoard.

MONAI (3-D ``DenseNet121`` and ``resnet10``, with parity against ``monai.visualize.GradCAM``),
``segmentation_models_pytorch`` (U-Net, FPN, DeepLabV3+), ``torchxrayvision`` (one channel, 18 sigmoid labels,
``MultiLabelTarget``), Hugging Face ViT / ConvNeXt / Swinv2 trained from dict batches, and a timm model trained
channels-last in ``bf16-mixed`` and compiled. Every model is randomly initialised (nothing is downloaded) and
explained with no target layer given. Each fit must log informative maps: ``cam_health/<method>/degenerate``
is 0 at every run, every run logged its overlay grid, and the last run's maps span ``[0, 1]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from _helpers import read_events
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cam_callback import CAMCallback
from cams import CamEngine

monai = pytest.importorskip("monai")


def _fit(tmp_path: Path, model: L.LightningModule, data: Dataset, cam: CAMCallback, **trainer: Any) -> L.Trainer:
    """Two epochs of two steps, the CAM runs before training and after each epoch, logged to TensorBoard."""
    torch.manual_seed(0)
    options: dict[str, Any] = {"accelerator": "cpu", "max_epochs": 2, "limit_train_batches": 2, "log_every_n_steps": 1,
                               "enable_progress_bar": False, "enable_model_summary": False,
                               "enable_checkpointing": False, "num_sanity_val_steps": 0}  # fmt: skip
    options.update(trainer)
    fit = L.Trainer(logger=TensorBoardLogger(str(tmp_path), name="tb"), callbacks=[cam], **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few batches, no dataloader workers: Lightning's advice
        fit.fit(model, DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=4))
    return fit


def _assert_informative(trainer: L.Trainer, cam: CAMCallback) -> None:
    events = read_events(trainer.log_dir)
    assert cam.runs == 3
    for method in cam.methods:
        shares = events.Scalars(f"cam_health/{method}/degenerate")
        assert [s.value for s in shares] == [0.0] * cam.runs, f"{method}: blank maps at some run"
        assert len(events.Images(f"cam/{method}")) == cam.runs
        last = cam.last_maps[method].flatten(1)
        assert bool(((last.amax(dim=1) - last.amin(dim=1)) > 0.5).all()), f"{method}: a constant last map"


class Classifier(L.LightningModule):
    """Any ``nn.Module`` classifier (``(B, classes)`` logits, or a Hugging Face ``ModelOutput``) trained with
    cross-entropy, or binary cross-entropy per label (``multilabel``), from tuple or dict batches."""

    def __init__(self, net: nn.Module, multilabel: bool = False, channels_last: bool = False) -> None:
        super().__init__()
        self.net, self.multilabel, self.channels_last = net, multilabel, channels_last

    def forward(self, x: Tensor) -> Any:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _loss(self, batch: Any) -> Tensor:
        x, y = (batch["pixel_values"], batch["labels"]) if isinstance(batch, dict) else batch
        out = self(x)
        logits = out if isinstance(out, Tensor) else out.logits
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), y.float())
        return F.cross_entropy(logits.float(), y)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._loss(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class Squares(Dataset):
    """Noise images or volumes with a bright square (cube) in one of two halves; the class is the half.

    ``labels="multilabel"`` gives 18 binary labels (label 0 and label ``1 + class`` on); ``"masks"``: the square's
    pixels as class 1, ``{"image", "masks"}`` items (segmentation); ``dict_batches``: ``{"pixel_values", "labels"}``
    items (Hugging Face).
    """

    def __init__(self, n: int, shape: tuple[int, ...], labels: str = "class", dict_batches: bool = False) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, *shape, generator=gen) * 0.5
        self.classes = torch.arange(n) % 2
        side = shape[-1] // 4
        self.masks = torch.zeros(n, *shape[1:], dtype=torch.long)
        for i, c in enumerate(self.classes.tolist()):
            start = shape[-1] // 2 * c + side // 2
            where = (..., *[slice(side, 2 * side)] * (len(shape) - 2), slice(start, start + side))
            self.x[i][where] += 1.0
            self.masks[i][where] = 1
        self.labels, self.dict_batches = labels, dict_batches

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Any:
        if self.labels == "masks":  # the keys the callback reads its masks from
            return {"image": self.x[i], "masks": self.masks[i]}
        y: Tensor = self.classes[i]
        if self.labels == "multilabel":
            y = torch.zeros(18)
            y[0] = y[1 + int(self.classes[i])] = 1.0
        return {"pixel_values": self.x[i], "labels": y} if self.dict_batches else (self.x[i], y)


# ---------------------------------------------------------------------- MONAI: 3-D DenseNet121, resnet10
def _monai(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "resnet10":
        return monai.networks.nets.resnet10(spatial_dims=3, n_input_channels=1, num_classes=2)
    return monai.networks.nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)


@pytest.mark.parametrize(("name", "layer", "side"), [("resnet10", "layer4", 32),
                                                     pytest.param("densenet121", "class_layers.relu", 64,
                                                                  marks=pytest.mark.slow)])  # fmt: skip
def test_monai_gradcam_is_one_minus_monais_own_map(name, layer, side):
    from monai.visualize import GradCAM

    model = _monai(name).eval()
    x = Squares(2, (1, side, side, side)).x
    ours = CamEngine(model, layer)(x, methods="gradcam")["gradcam"]
    theirs = GradCAM(nn_module=model, target_layers=layer)(x)[:, 0]  # default_normalizer: max -> 0, min -> 1
    assert ours.shape == theirs.shape == (2, side, side, side)
    torch.testing.assert_close(ours, 1 - theirs.float(), atol=2e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet10", "densenet121"])
def test_monai_3d_classifiers_train_with_informative_maps(tmp_path, name):
    cam = CAMCallback(methods=["gradcam", "layercam"], num_images=4, measures=[])
    trainer = _fit(tmp_path, Classifier(_monai(name)), Squares(8, (1, 32, 32, 32)), cam)
    _assert_informative(trainer, cam)
    assert cam.last_maps["gradcam"].shape == (4, 32, 32, 32)
    if name == "densenet121":  # class_layers.relu is 1×1×1 at 32³: the automatic choice takes the last larger grid
        assert cam.layer_names is not None and cam.layer_names[0] != "net.class_layers.relu"


# ---------------------------------------------------------------------- segmentation_models_pytorch
class Segmenter(L.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["image"]), batch["masks"], weight=torch.tensor([0.2, 1.0]))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.002, momentum=0.9)


#: architecture -> methods. FPN's decoder sums post-ReLU blocks, and two steps into training Grad-CAM's signed
#: channel weights make the class-1 map ≤ 0 everywhere for some images (the callback reports them, reason
#: no_positive_evidence); Layer-CAM's ReLU(gradient) weights keep a post-ReLU layer's map ≥ 0 by construction
SMP_METHODS = {"Unet": ["gradcam", "eigencam"], "FPN": ["layercam", "eigencam"],
               "DeepLabV3Plus": ["gradcam", "eigencam"]}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("architecture", list(SMP_METHODS))
def test_segmentation_models_pytorch_train_with_informative_decoder_maps(tmp_path, architecture):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    net = getattr(smp, architecture)("resnet18", encoder_weights=None, classes=2)
    with torch.no_grad():  # class 1 predicted somewhere from the start, and after two steps
        net.segmentation_head[0].bias.copy_(torch.tensor([0.0, 1.0]))
    cam = CAMCallback(methods=SMP_METHODS[architecture], target="seg:1", num_images=4, measures=[])
    trainer = _fit(tmp_path, Segmenter(net), Squares(8, (3, 64, 64), labels="masks"), cam)
    _assert_informative(trainer, cam)
    assert cam.layer_names == ["net.decoder"]


# ---------------------------------------------------------------------- torchxrayvision
@pytest.mark.slow
def test_torchxrayvision_densenet_with_18_sigmoid_labels_and_multilabel_target(tmp_path):
    xrv = pytest.importorskip("torchxrayvision")
    from cams.targets import MultiLabelTarget

    torch.manual_seed(0)
    net = xrv.models.DenseNet(weights=None)  # one channel in, 18 pathologies out (logits; sigmoid per label)
    assert net.classifier.out_features == 18 and net.features.conv0.in_channels == 1
    cam = CAMCallback(methods=["gradcam"], target=MultiLabelTarget(), num_images=4, measures=[])
    data = Squares(8, (1, 64, 64), labels="multilabel")
    data.x = data.x * 2048 - 1024  # torchxrayvision's input range
    trainer = _fit(tmp_path, Classifier(net, multilabel=True), data, cam)
    _assert_informative(trainer, cam)
    assert cam.layer_names == ["net.features"]


# ---------------------------------------------------------------------- Hugging Face, from dict batches
def _hugging_face(name: str) -> tuple[nn.Module, int]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name == "vit":
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64, num_labels=2)  # fmt: skip
        return transformers.ViTForImageClassification(config), 32
    if name == "convnext":
        config = transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=2)
        return transformers.ConvNextForImageClassification(config), 64
    config = transformers.Swinv2Config(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                       window_size=4, num_labels=2)  # fmt: skip
    return transformers.Swinv2ForImageClassification(config), 64


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit", "convnext", "swinv2"])
def test_hugging_face_classifiers_trained_from_dict_batches_log_informative_maps(tmp_path, name):
    net, side = _hugging_face(name)
    cam = CAMCallback(methods=["gradcam", "eigencam"], num_images=4, measures=[])
    trainer = _fit(tmp_path, Classifier(net), Squares(8, (3, side, side), dict_batches=True), cam)
    _assert_informative(trainer, cam)
    assert cam.fixed_labels is not None  # the "labels" key of the dict batches


# ---------------------------------------------------------------------- timm: channels-last, bf16-mixed, compiled
@pytest.mark.slow
def test_a_timm_model_trained_channels_last_in_bf16_mixed_and_compiled_logs_informative_maps(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=2).to(memory_format=torch.channels_last)
    model = Classifier(net, channels_last=True)
    compiled = torch.compile(model, backend="aot_eager")  # Dynamo + AOTAutograd (inductor: tests/test_compile.py)
    # layer4 is post-ReLU, so Grad-CAM++'s and Layer-CAM's maps are ≥ 0 by construction (Grad-CAM's can be ≤ 0
    # everywhere for an image two steps into training, which the callback then reports, as it should)
    cam = CAMCallback(methods=["gradcam++", "layercam"], num_images=4, measures=[])
    trainer = _fit(tmp_path, compiled, Squares(8, (3, 64, 64)), cam, precision="bf16-mixed")
    _assert_informative(trainer, cam)
    assert cam.layer_names == ["net.layer4"]
