"""``CamEngine(model)`` with no argument on 77 timm architectures: finite, non-constant maps, or a known reason.

Every architecture is built with random weights (no download) at its smallest registered size, on inputs
giving a 4×4 final grid where the model allows (128 px for stride-32 models, 64 px for ViTs with 16-pixel
patches), and explained with Grad-CAM, Layer-CAM and Eigen-CAM: no target layer, no reshape transform, no
target. Two things make a random network behave like one that has seen data, as every real use does:

- weights timm initialises to exactly zero (classifier heads of MLP-Mixer/ResMLP/gMLP, the last BatchNorm of
  residual branches) are redrawn, otherwise the logits are constant and every gradient map is empty (the
  engine then says so with a DegenerateMapWarning, reason ``zero_gradient``);
- BatchNorm statistics are calibrated with one forward of 8 random images in train mode, otherwise
  activations shrink layer after layer (LeViT's tokens become identical).

Works: 75 of 77 (97.4 %). The two failures are the maps themselves, not the engine: for one of the two
random images (Layer-CAM: both, for VOLO) the class-token models PiT and VOLO score the predicted class lower
at every one of the 16 patch tokens, so Grad-CAM and Layer-CAM are ReLU(negative) = all-zero maps there;
pytorch-grad-cam's tutorial setup gives the same all-zero maps (checked below).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM, LayerCAM
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

from cams import CamEngine, find_layer

METHODS = ("gradcam", "layercam", "eigencam")

#: architecture -> timm keyword arguments (``size``: the input size when it is not ``img_size``; default 128)
SWEEP: dict[str, dict[str, object]] = {
    # CNNs and conv-era designs
    "resnet18": {}, "densenet121": {}, "efficientnet_b0": {}, "tf_efficientnetv2_b0": {}, "regnetx_002": {},
    "mobilenetv2_050": {}, "mobilenetv3_small_050": {}, "mobilenetv4_conv_small_050": {},
    "mobilenetv4_hybrid_medium": {}, "ghostnet_050": {}, "mnasnet_small": {}, "rexnet_100": {}, "lcnet_050": {},
    "dla46_c": {}, "repvgg_a0": {}, "hrnet_w18_small": {}, "res2net50_14w_8s": {}, "cspresnet50": {},
    "nf_regnet_b0": {}, "hgnetv2_b0": {}, "convnext_atto": {}, "convnextv2_atto": {}, "inception_next_atto": {},
    "poolformer_s12": {}, "poolformerv2_s12": {}, "convmixer_768_32": {"size": 64}, "fasternet_t0": {},
    "starnet_s050": {}, "rdnet_tiny": {}, "mambaout_femto": {}, "edgenext_xx_small": {}, "repvit_m0_9": {},
    "mobilevit_xxs": {}, "mobilevitv2_050": {},
    # plain (class-token, register, distilled) vision transformers
    "vit_tiny_patch16_224": {"img_size": 64}, "deit_tiny_patch16_224": {"img_size": 64},
    "deit_tiny_distilled_patch16_224": {"img_size": 64}, "vit_small_patch14_reg4_dinov2": {"img_size": 56},
    "vit_base_patch16_reg4_gap_256": {"img_size": 64, "depth": 3},
    "beit_base_patch16_224": {"img_size": 64, "depth": 3},
    "eva02_tiny_patch14_224": {"img_size": 56}, "cait_xxs24_224": {"img_size": 64},
    "xcit_nano_12_p16_224": {"img_size": 64}, "pit_ti_224": {"img_size": 128}, "convit_tiny": {"img_size": 64},
    "crossvit_tiny_240": {"img_size": 120}, "tnt_s_patch16_224": {"img_size": 64}, "volo_d1_224": {"img_size": 64},
    "vitamin_small_224": {"img_size": 128},
    # MLPs
    "mixer_s32_224": {"img_size": 128}, "resmlp_12_224": {"img_size": 64}, "gmlp_ti16_224": {"img_size": 64},
    "sequencer2d_s": {"img_size": 64},
    # hierarchical and hybrid transformers
    "swin_tiny_patch4_window7_224": {"img_size": 128}, "swinv2_cr_tiny_224": {"img_size": 128},
    "maxvit_pico_rw_256": {"img_size": 128}, "coatnet_nano_rw_224": {"img_size": 128},
    "coat_lite_tiny": {"img_size": 128}, "efficientformer_l1": {"size": 224}, "efficientformerv2_s0": {"img_size": 128},
    "fastvit_t8": {}, "hiera_tiny_224": {"img_size": 128}, "twins_svt_small": {"img_size": 128}, "pvt_v2_b0": {},
    "efficientvit_m0": {"img_size": 128}, "efficientvit_b0": {}, "tiny_vit_5m_224": {}, "davit_tiny": {},
    "focalnet_tiny_srf": {}, "gcvit_xxtiny": {"img_size": 128}, "nest_tiny": {"img_size": 64},
    "mvitv2_tiny": {"img_size": 128}, "visformer_tiny": {"img_size": 128}, "levit_128s": {"img_size": 224},
    "levit_conv_128s": {"img_size": 224}, "shvit_s1": {}, "swiftformer_xs": {},
}  # fmt: skip

#: architecture -> {method: the images whose map is all zero}: the predicted class scores lower at every patch
#: token of those images (Grad-CAM: Σ_k w_k A_k < 0; Layer-CAM: Σ_k ReLU(g_k) A_k < 0), so ReLU gives zero
KNOWN_FAILURES: dict[str, dict[str, tuple[int, ...]]] = {
    "pit_ti_224": {"gradcam": (1,), "layercam": (1,)},
    "volo_d1_224": {"gradcam": (1,), "layercam": (0, 1)},
}


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The random-weight model (zero-initialised weights redrawn, BatchNorm calibrated) and 2 input images."""
    options = dict(SWEEP[name])
    size = int(options.pop("size", options.get("img_size", 128)))  # type: ignore[call-overload]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if key.endswith("weight") and not parameter.any():
                noise = torch.randn(parameter.shape, generator=generator) * 0.02
                parameter.copy_(noise + (1.0 if parameter.dim() == 1 else 0.0))
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if norms:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average over the calibration batch
            model.train()
            model(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(2)))
    model.eval()
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_the_sweep_covers_40_architectures_of_many_families_and_95_percent_work():
    assert len(SWEEP) >= 40
    assert (len(SWEEP) - len(KNOWN_FAILURES)) / len(SWEEP) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWEEP))
def test_zero_configuration_maps_on_timm_architectures(name):
    model, x = build(name)
    engine = CamEngine(model)
    maps = engine(x, methods=METHODS)
    failing = KNOWN_FAILURES.get(name, {})
    for method in METHODS:
        cam = maps[method]
        assert cam.shape == (2, *x.shape[2:]) and bool(torch.isfinite(cam).all()), (method, engine.layout)
        for image in range(2):
            spread = float(cam[image].max() - cam[image].min())
            reason = maps.degenerate[method][image]
            if image in failing.get(method, ()):
                assert spread == 0, f"{name}/{method}: works now; remove it from KNOWN_FAILURES"
                assert reason is not None and reason.cause == "no_positive_evidence", reason  # said so, with why
            else:
                where = f"{engine.layer_names} ({engine.layout})"
                assert spread > 0 and reason is None, f"{name}/{method}/image {image}: constant map at {where}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KNOWN_FAILURES))
def test_the_known_failures_are_the_maps_pytorch_grad_cam_gives_too(name):
    model, x = build(name)
    engine = CamEngine(model)
    ours = engine(x, methods=("gradcam", "layercam"))
    transform = functools.partial(vit_reshape_transform, height=4, width=4)
    for method, peer in (("gradcam", GradCAM), ("layercam", LayerCAM)):
        with peer(model, [find_layer(model, engine.layer_names[0])], reshape_transform=transform) as cam:
            theirs = cam(input_tensor=x, targets=None)
        assert np.abs(theirs - ours[method].numpy()).max() <= 1e-4
        for image in KNOWN_FAILURES[name][method]:
            assert theirs[image].max() == 0
