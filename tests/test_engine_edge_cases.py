"""Edge cases users meet: memory layouts, a target score of exactly zero, NumPy targets, ill-conditioned weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cams import METHODS, CamEngine, guided_backprop, metrics
from cams.methods.gradient import xgrad_cam
from cams.methods.perturbation import ablation_cam


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    ).eval()  # fmt: skip


def layouts(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The same model and images in four memory layouts."""
    channels_last = small_cnn()
    channels_last.load_state_dict(model.state_dict())
    channels_last = channels_last.to(memory_format=torch.channels_last)
    hwc = x.permute(0, 2, 3, 1).contiguous()  # what a user gets from a batch of H x W x C arrays
    return {
        "contiguous": (model, x),
        "channels-last model": (channels_last, x),
        "channels-last input": (model, x.contiguous(memory_format=torch.channels_last)),
        "permuted input": (model, hwc.permute(0, 3, 1, 2)),
    }


# every method that runs on one convolutional target layer (transformer methods need attention or tokens, refinecam
# two layers)
ONE_CNN_LAYER = sorted(n for n, m in METHODS.items() if m.min_layers == 1 and not m.transformer)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("method", ONE_CNN_LAYER)
def test_every_method_accepts_every_memory_layout(method, batch):
    model = small_cnn()
    x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
    targets = [1, 3][:batch]
    maps = {
        name: CamEngine(net, "4")(inp, methods=method, targets=targets)[method]
        for name, (net, inp) in layouts(model, x).items()
    }
    for name, cam in maps.items():
        assert cam.shape == (batch, 16, 16) and bool(torch.isfinite(cam).all()), name
        torch.testing.assert_close(cam, maps["contiguous"], atol=1e-5, rtol=0, msg=f"{method}/{name}")


def test_scorecam_on_a_channels_last_network_with_two_images():  # the report's reproduction
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval().to(memory_format=torch.channels_last)
    cam = CamEngine(model, "conv5")(torch.randn(2, 3, 32, 32), methods="scorecam", targets=[1, 2])["scorecam"]
    assert cam.shape == (2, 32, 32) and bool(torch.isfinite(cam).all())


class ZeroLogit(nn.Module):
    """A ReLU before the logits, as in squeezenet: class 0's score is exactly 0 for these inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(6, 3, 1)
        with torch.no_grad():
            self.head.weight[0] = -self.head.weight[0].abs()  # non-negative features -> negative pre-ReLU logit
            self.head.bias[0] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.head(self.features(x))).amax(dim=(2, 3))


def test_ablationcam_defines_its_weights_when_the_target_score_is_zero():
    model, x = ZeroLogit().eval(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert bool((model(x)[:, 0] == 0).all())
    result = CamEngine(model, "features")(x, methods="ablationcam", targets=0)
    cam = result["ablationcam"]
    assert bool(torch.isfinite(cam).all()) and bool(((cam >= 0) & (cam <= 1)).all())
    # the documented rule: at y = 0 the weights are the drops y - s_k themselves
    acts = torch.rand(1, 3, 2, 2)
    weighted = ablation_cam(acts, torch.tensor([[-0.5, 0.25, 0.0]]), torch.tensor([0.0]))
    torch.testing.assert_close(weighted, torch.tensor([0.5, -0.25, 0.0]).view(1, 3, 1, 1) * acts.double())


def test_ablation_weights_are_a_float64_relative_drop():
    base, ablated = torch.tensor([3.0]), torch.tensor([[2.9999998, 1.0]])
    weighted = ablation_cam(torch.ones(1, 2, 1, 1), ablated, base)
    exact = (3.0 - np.float64(np.float32(2.9999998))) / 3.0
    assert weighted.dtype == torch.float64 and weighted[0, 0].item() == exact


@pytest.mark.parametrize(
    ("numpy_targets", "plain"),
    [(np.int64(4), 4), (np.array([3, 1]), [3, 1]), (np.array([3, 1], dtype=np.int32), torch.tensor([3, 1])),
     ([np.int64(2), np.int64(0)], [2, 0])],
)
def test_numpy_class_indices_are_accepted_like_ints(numpy_targets, plain):
    model, x = small_cnn(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    engine = CamEngine(model, "4")
    ours = engine(x, methods=("gradcam", "scorecam"), targets=numpy_targets)
    expected = engine(x, methods=("gradcam", "scorecam"), targets=plain)
    assert torch.equal(ours.classes, expected.classes)
    for name in ours:
        assert torch.equal(ours[name], expected[name])
    maps = expected["gradcam"]
    assert torch.equal(metrics.average_drop(model, x, maps, numpy_targets), metrics.average_drop(model, x, maps, plain))
    assert torch.equal(guided_backprop(model, x, numpy_targets), guided_backprop(model, x, plain))


def test_float_class_indices_are_refused_with_their_dtype():
    with pytest.raises(TypeError, match=r"class indices must be integers; got a tensor of dtype torch\.float64"):
        CamEngine(small_cnn(), "4")(torch.randn(1, 3, 8, 8), targets=np.array([1.0]))


def test_xgradcam_weights_are_as_stable_as_the_formula_allows():
    # signed activations whose channel sum nearly cancels: float32 sums lose the small remainder
    torch.manual_seed(0)
    acts = torch.randn(1, 4, 8, 8) * 1e3
    acts[:, :, 0, 0] -= acts.sum(dim=(2, 3)) - 1e-2  # each channel now sums to ~1e-2 out of ~5e4 of mass
    grads = torch.randn(1, 4, 8, 8)
    wide = acts.double()
    exact = (grads.double() * wide).sum(dim=(2, 3), keepdim=True) / (wide.sum(dim=(2, 3), keepdim=True) + 1e-7)
    ours = xgrad_cam(acts, grads).double() / wide
    float32_formula = (grads * acts / (acts.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3), keepdim=True)
    ours_err = ((ours - exact) / exact).abs().max().item()
    float32_err = ((float32_formula.double() - exact) / exact).abs().max().item()
    assert ours_err < 1e-6 < float32_err, (ours_err, float32_err)
