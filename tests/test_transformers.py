"""Vision transformers with zero configuration: parity with pytorch-grad-cam 1.5.7, layouts, outputs.

Parity: the reference is given its tutorial reshape transforms (``vit_reshape_transform``,
``swinT_reshape_transform``, ``AblationLayerVit``, the Hugging Face ``.logits`` wrapper), ours is given
nothing (``CamEngine(model)``), on randomly initialised torchvision ``vit_b_16`` and ``swin_t``, timm
``deit_tiny_patch16_224`` and ``vit_small_patch14_reg4_dinov2`` (class token + 4 register tokens), and a
Hugging Face ``ViTForImageClassification`` from a tiny config. Small images keep every test fast.

Tolerance (``TOL = 1e-4`` per pixel of maps in [0, 1]). Both sides run the same float32 forward and
backward (the activations and gradients are bitwise equal); what differs is the order of float32 sums
(numpy on the reference side, torch on ours). A sum of n terms in float32 is off by at most
``γ_n·Σ|terms|``, ``γ_n ≈ n·u``, ``u = 2⁻²⁴ ≈ 6e-8``, so two orders differ by at most twice that:

- the channel sum ``Σ_c w_c A_c`` (C ≤ 768 terms): ``2·768·u ≈ 9e-5`` of ``Σ_c |w_c A_c|``, which min-max
  scaling divides by the map's range; the same bound covers the spatial means of the weights (n ≤ 36) and
  the float32 (reference) against float64 (ours) SVD of the eigen methods. Measured: at most 7e-7.
- XGrad-CAM divides each channel by its spatial sum ``Σ_ij A_k,ij``. On LayerNorm outputs that sum cancels
  (``κ_k = Σ|A_k| / |Σ A_k|`` reaches 7,000 here), so the weight of channel k is only known to
  ``2·γ_n·κ_k`` relative, and no two float32 implementations can agree better than
  ``2·max_ij Σ_k 2·γ_n·κ_k·|w_k A_k,ij| / R`` (R the range of the map, 2 for the min-max). The test computes
  this bound from the activations and uses ``max(TOL, bound)`` for XGrad-CAM; measured errors stay below it
  (2.3e-4 on the register ViT, ≤ 1.2e-5 on the others).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import timm
import torch
import torchvision
from pytorch_grad_cam import AblationCAM
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform, vit_reshape_transform
from test_parity import GRADIENT_METHODS, REFERENCE, reference_sign_rule
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from cams import CamEngine, find_layer
from cams.layout import Layout, infer_layout
from cams.targets import readable_logits

TOL = 1e-4
CLASSES = torch.tensor([3, 7])


class HuggingfaceToTensorModelWrapper(nn.Module):
    """pytorch-grad-cam's Hugging Face tutorial wrapper: the reference needs a tensor output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def _tv_vit() -> nn.Module:
    model = torchvision.models.vit_b_16(weights=None, image_size=64, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head: constant logits
    return model


def _tv_swin() -> nn.Module:
    return torchvision.models.swin_t(weights=None, num_classes=10)


def _deit() -> nn.Module:
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10)


def _registers() -> nn.Module:
    return timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, num_classes=10)


def _hf() -> nn.Module:
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=10,
    )  # fmt: skip
    return ViTForImageClassification(config)


def _vit(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The tutorial's ViT transform: drop the class token, tokens to (B, C, h, w)."""
    return vit_reshape_transform(t, height=h, width=w)


def _without_registers(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The tutorial's ViT transform after taking out the 4 register tokens (timm puts them after the class token)."""
    return vit_reshape_transform(torch.cat([t[:, :1], t[:, 5:]], dim=1), height=h, width=w)


def _nhwc_as_tokens(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The tutorial's Swin transform on torchvision's channels-last (B, h, w, C) output, read as tokens."""
    return swinT_reshape_transform(t.flatten(1, 2), height=h, width=w)


# name: (builder, input size, layer the automatic choice must pick, layout kind, grid, tutorial transform)
CASES = {
    "torchvision_vit_b_16": (_tv_vit, 64, "encoder.layers.encoder_layer_11.ln_1", "tokens", (4, 4), _vit),
    "torchvision_swin_t": (_tv_swin, 96, "norm", "channels_last", (3, 3), _nhwc_as_tokens),
    "timm_deit_tiny": (_deit, 64, "blocks.11.norm1", "tokens", (4, 4), _vit),
    "timm_vit_registers": (_registers, 56, "blocks.11.norm1", "tokens", (4, 4), _without_registers),
    "hf_vit": (_hf, 32, "1.layernorm_before", "tokens", (4, 4), _vit),
}


@pytest.fixture(scope="module")
def zoo() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    built = {}
    for i, (name, (build, size, *_)) in enumerate(CASES.items()):
        torch.manual_seed(i)
        built[name] = (build().eval(), torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(10 + i)))
    return built


def _reference(name: str, model: nn.Module, x: torch.Tensor, method: str, layer: str, **kwargs) -> torch.Tensor:
    *_, grid, transform = CASES[name]
    peer = HuggingfaceToTensorModelWrapper(model) if name == "hf_vit" else model
    targets = [ClassifierOutputTarget(int(c)) for c in CLASSES]
    reshape = functools.partial(transform, h=grid[0], w=grid[1])
    peer_cam = REFERENCE[method](peer, [find_layer(model, layer)], reshape_transform=reshape, **kwargs)
    with reference_sign_rule(), peer_cam as cam:
        if method == "scorecam":
            cam.batch_size = 64
        out = cam(input_tensor=x, targets=targets)
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(np.asarray(out))


def _assert_parity(ours: torch.Tensor, theirs: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert ours.shape == theirs.shape, what
    err = (ours - theirs).abs().max().item()
    assert err <= tol, f"{what}: max |ours - reference| = {err:.2e} > {tol:.2e}"


@pytest.mark.parametrize("name", list(CASES))
def test_the_automatic_layer_is_the_tutorials_and_its_layout_is_read(zoo, name):
    model, x = zoo[name]
    _, _, layer, kind, grid, _ = CASES[name]
    engine = CamEngine(model)
    (chosen,) = engine.resolve_layers(x)
    assert chosen.endswith(layer), chosen  # Hugging Face: `vit.layers.1` (transformers 5), `vit.encoder.layer.1` (4)
    engine(x, methods="eigencam")
    assert engine.layout is not None
    assert (engine.layout.kind, engine.layout.grid) == (kind, grid), str(engine.layout)


def _xgradcam_bound(model: nn.Module, engine: CamEngine, x: torch.Tensor) -> float:
    """The float32 disagreement XGrad-CAM's ill-conditioned weights allow (see the module docstring)."""
    layer, layout = find_layer(model, engine.layer_names[0]), engine.layout
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        score = readable_logits(model(x)).gather(1, CLASSES[:, None]).sum()
    finally:
        handle.remove()
    grads = layout.to_feature_map(torch.autograd.grad(score, seen[-1])[0]).double()
    acts = layout.to_feature_map(seen[-1].detach()).double()
    n = acts.shape[2] * acts.shape[3]
    sums = acts.sum(dim=(2, 3), keepdim=True)
    weights = (grads * acts / (sums + 1e-7)).sum(dim=(2, 3), keepdim=True)
    kappa = acts.abs().sum(dim=(2, 3), keepdim=True) / (sums.abs() + 1e-7)
    cam = (weights * acts).sum(1).clamp_min(0)
    spread = (cam.flatten(1).max(1).values - cam.flatten(1).min(1).values)[:, None, None]
    error = (2 * n * 2**-24 * 2 * kappa * (weights * acts).abs()).sum(1) * 2 / spread
    return float(error.max())


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_and_eigen_methods_match_reference_with_its_tutorial_transform(zoo, name):
    model, x = zoo[name]
    engine = CamEngine(model)  # no layer, no reshape_transform
    ours = engine(x, methods=GRADIENT_METHODS, targets=CLASSES)
    for method in GRADIENT_METHODS:
        theirs = _reference(name, model, x, method, engine.layer_names[0])
        tol = max(TOL, _xgradcam_bound(model, engine, x)) if method == "xgradcam" else TOL
        _assert_parity(ours[method], theirs, f"{name}/{method}", tol)


@pytest.mark.parametrize("name", ["timm_deit_tiny", "hf_vit"])
def test_ablationcam_on_tokens_matches_reference_with_ablation_layer_vit(zoo, name):
    model, x = zoo[name]
    engine = CamEngine(model)
    ours = engine(x, methods="ablationcam", targets=CLASSES)
    theirs = _reference(name, model, x, "ablationcam", engine.layer_names[0], ablation_layer=AblationLayerVit(),
                        batch_size=64)
    _assert_parity(ours["ablationcam"], theirs, f"{name}/ablationcam")


def test_ablationcam_on_a_channels_last_layer_matches_reference():
    """The reference's ``AblationLayerVit`` sets each copy in a batch to ``min(batch) - 1e7`` after ablating the
    copies before it, so the k-th copy of a batch gets ``min - k·1e7``; after Swin's linear head that changes
    the scores. With ``batch_size=1`` every copy gets ``min - 1e7``, the value we use for all of them. (After a
    ViT's attention and LayerNorm the score saturates and the value does not matter: the tests above use 64.)"""
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2, embed_dim=16,
        depths=(1, 1), num_heads=(1, 2), num_classes=10,
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    engine = CamEngine(model)
    ours = engine(x, methods="ablationcam", targets=CLASSES)
    assert engine.layer_names == ["norm"] and engine.layout.kind == "channels_last"
    reshape = functools.partial(_nhwc_as_tokens, h=4, w=4)
    with AblationCAM(model, [model.norm], reshape_transform=reshape, ablation_layer=AblationLayerVit(),
                     batch_size=1) as cam:
        theirs = torch.from_numpy(cam(x, [ClassifierOutputTarget(int(c)) for c in CLASSES]))
    _assert_parity(ours["ablationcam"], theirs, "timm swin (channels-last)/ablationcam")


def test_scorecam_on_tokens_matches_reference(zoo):
    model, x = zoo["hf_vit"]
    engine = CamEngine(model)
    ours = engine(x, methods="scorecam", targets=CLASSES)
    _assert_parity(ours["scorecam"], _reference("hf_vit", model, x, "scorecam", engine.layer_names[0]), "hf/scorecam")


def test_a_users_reshape_transform_still_wins_and_ablation_uses_its_channel_dimension(zoo):
    model, x = zoo["timm_deit_tiny"]
    transform = functools.partial(vit_reshape_transform, height=4, width=4)
    plain = CamEngine(model)(x, methods=("gradcam", "ablationcam"), targets=CLASSES)
    engine = CamEngine(model, "blocks.11.norm1", reshape_transform=transform)
    given = engine(x, methods=("gradcam", "ablationcam"), targets=CLASSES)
    assert engine.layout.kind == "custom" and engine.layout.channel_dim == 2
    for method in ("gradcam", "ablationcam"):
        torch.testing.assert_close(given[method], plain[method], atol=1e-6, rtol=0)


def test_the_predicted_class_of_a_hugging_face_output_is_explained(zoo):
    model, x = zoo["hf_vit"]
    maps = CamEngine(model)(x, methods="gradcam")
    logits = model(x).logits
    assert torch.equal(maps.classes, logits.argmax(1))
    torch.testing.assert_close(maps.logits, logits.detach())


# ---------------------------------------------------------------------- layouts, one rule each
def test_tokens_drop_class_distillation_and_register_tokens():
    for prefix in (0, 1, 2, 5):
        raw = torch.arange(2 * (prefix + 12) * 3, dtype=torch.float32).view(2, prefix + 12, 3)
        layout = infer_layout(raw, (2, 3, 48, 64), grids=[("patch_embed", (3, 4))])
        assert (layout.kind, layout.prefix, layout.grid) == ("tokens", prefix, (3, 4))
        fmap = layout.to_feature_map(raw)
        assert fmap.shape == (2, 3, 3, 4)
        assert torch.equal(fmap[:, :, 1, 2], raw[:, prefix + 1 * 4 + 2]), "row-major token order"


def test_without_a_patch_embedding_the_grid_comes_from_the_aspect_ratio():
    layout = infer_layout(torch.zeros(1, 1 + 6 * 8, 16), (1, 3, 96, 128))
    assert (layout.prefix, layout.grid, layout.source) == (1, (6, 8), "the input's aspect ratio")


def test_tokens_that_fit_two_grids_are_an_error_naming_shapes_and_the_fix():
    named = r"'blocks\.3'.*\(1, 6, 16\).*\(1, 3, 64, 64\).*2×3 or 3×2.*reshape_transform="
    with pytest.raises(ValueError, match=named):
        infer_layout(torch.zeros(1, 6, 16), (1, 3, 64, 64), name="blocks.3")


def test_channels_last_outputs_are_found_by_the_input_aspect_ratio():
    layout = infer_layout(torch.zeros(2, 6, 8, 96), (2, 3, 192, 256))
    assert (layout.kind, layout.grid, layout.channel_dim) == ("channels_last", (6, 8), 3)
    assert infer_layout(torch.zeros(2, 96, 6, 8), (2, 3, 192, 256)).kind == "channels_first"


def test_a_cube_that_reads_both_ways_is_decided_by_a_wider_forward():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=8, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    engine = CamEngine(conv, "0")
    engine(torch.randn(1, 3, 64, 64), methods="eigencam")  # (1, 8, 8, 8)
    assert engine.layout.kind == "channels_first" and engine.layout.source == "a forward at twice the width"

    class ChannelsLast(nn.Module):  # patchify to (B, h, w, C) with C = h = w = 8
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 8, stride=8)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.embed(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))

    engine = CamEngine(ChannelsLast(), "norm")
    engine(torch.randn(1, 3, 64, 64), methods="gradcam")
    assert engine.layout.kind == "channels_last"


def test_a_cube_the_model_cannot_resize_is_an_error_naming_both_readings():
    with pytest.raises(ValueError, match=r"channels-first \(B, C=7, h=7, w=7\) and as channels-last.*permute"):
        infer_layout(torch.zeros(1, 7, 7, 7), (1, 3, 224, 224), probe=lambda: None)


def test_volume_feature_maps_pass_through_untouched():
    raw = torch.randn(1, 4, 2, 3, 3)
    layout = infer_layout(raw, (1, 1, 8, 12, 12))
    assert layout.kind == "channels_first" and layout.to_feature_map(raw) is raw


def test_the_layout_is_shown_in_words():
    layout = Layout("tokens", (2, 21, 384), (4, 4), prefix=5, source="patch_embed", channel_dim=2)
    assert str(layout) == "tokens (B, 21, 384): 5 prefix tokens dropped, grid 4×4 from patch_embed"
