"""Parity of the methods added from pytorch-grad-cam 1.5.7 and torchcam 0.5.0 with the library that has each.

Every comparison runs a batch of 2 on two architectures (a ResNet and another) with random weights, and
allows 1e-4 per pixel unless the docstring of the test states why and by how much a method must differ.

Error analysis behind the 1e-4: every map is a min-max scaled float32 map; the two sides sum the same
products in different orders (numpy vs torch, cv2 vs torch resizing), which leaves ~1e-6 relative error
on the unnormalised map, amplified by 1/(max − min) at worst ~10 for these models; the largest error
measured is 2.2e-5 (KPCA-CAM on regnet_y_400mf: scikit-learn solves the kernel eigenproblem in float32).

torchcam returns maps at the layer's resolution; the engine resizes every map to the input and min-max
scales it again (as pytorch-grad-cam does). torchcam's maps are compared after the same two steps,
``minmax(resize(map))``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import timm
import torch
import torchcam.methods as tc
import torchvision
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from cams import CamEngine, find_layer, get_method
from cams.ops import minmax, resize
from cams.passes import Pass

TOL = 1e-4
CLASSES = [3, 7]

logging.getLogger("torchcam").setLevel(logging.ERROR)  # its automatic fc-layer choice logs a warning


def assert_parity(ours: torch.Tensor, theirs: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert ours.shape == theirs.shape, f"{what}: {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    err = (ours - theirs.float()).abs().max().item()
    assert err <= tol, f"{what}: max |ours - reference| = {err:.2e} > {tol}"


def torchcam_map(cams: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """torchcam's feature-resolution map through the engine's last two steps: resize to the input, min-max."""
    return minmax(resize(cams[0].detach().float(), size))


def model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=10).eval()


def image(size: int | tuple[int, int], seed: int = 5) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


def run_pgc(cam: object, *args: object, **kwargs: object) -> torch.Tensor:
    """Call a pytorch-grad-cam object and release its hooks (its own release fails on gradients that are views)."""
    try:
        out = cam(*args, **kwargs)  # type: ignore[operator]
    finally:
        base = getattr(cam, "base_cam", cam)
        base.activations_and_grads.gradients = []
        base.activations_and_grads.release()
    return torch.from_numpy(np.asarray(out))


# ----------------------------------------------------------------------------- pytorch-grad-cam
PGC_NETS = {
    "resnet18": ("layer4", ["layer3", "layer4"]),
    "regnet_y_400mf": ("trunk_output.block3", ["trunk_output.block3", "trunk_output.block4"]),
}


@pytest.fixture(scope="module")
def pgc_zoo() -> dict[str, nn.Module]:
    return {name: model(name) for name in PGC_NETS}


@pytest.mark.parametrize("net", list(PGC_NETS))
def test_target_free_and_gradient_methods_match_pytorch_grad_cam(pgc_zoo, net):
    """FEM, KPCA-CAM, Seg-Eigen-CAM and FullGrad in one engine call against their four reference classes."""
    m, (layer, _) = pgc_zoo[net], PGC_NETS[net]
    x = image(64)
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    ours = CamEngine(m, layer)(x, methods=["fem", "kpcacam", "segeigencam", "fullgrad"], targets=CLASSES)
    for name, cls in (("fem", pgc.FEM), ("kpcacam", pgc.KPCA_CAM), ("segeigencam", pgc.SegEigenCAM)):
        theirs = run_pgc(cls(m, [find_layer(m, layer)]), input_tensor=x, targets=targets)
        assert_parity(ours[name], theirs, f"{net}/{name}")
    theirs = run_pgc(pgc.FullGrad(m, []), input_tensor=x, targets=targets)
    assert_parity(ours["fullgrad"], theirs, f"{net}/fullgrad")
    m.zero_grad(set_to_none=True)


@pytest.mark.parametrize("net", list(PGC_NETS))
def test_shapleycam_matches_pytorch_grad_cam_with_a_second_order_term(pgc_zoo, net, monkeypatch):
    """With the ReST target (logit − cross-entropy) the score is not linear in the layer, so H·A ≠ 0."""
    m, (layer, _) = pgc_zoo[net], PGC_NETS[net]
    x = image(64)
    targets = [ClassifierOutputReST(c) for c in CLASSES]
    seen = {}
    real = Pass.get

    def keep(self, name, i, options=None):
        seen[name] = real(self, name, i, options)
        return seen[name]

    monkeypatch.setattr(Pass, "get", keep)
    ours = CamEngine(m, layer)(x, methods=["shapleycam", "gradcam"], targets=targets)
    assert seen["hvp"].abs().max() > 0
    theirs = run_pgc(pgc.ShapleyCAM(m, [find_layer(m, layer)]), input_tensor=x, targets=targets)
    assert_parity(ours["shapleycam"], theirs, f"{net}/shapleycam")
    if net == "resnet18":  # large enough here to change the map
        assert (ours["shapleycam"] - ours["gradcam"]).abs().max() > 1e-3
    m.zero_grad(set_to_none=True)


@pytest.mark.parametrize("net", list(PGC_NETS))
def test_finercam_matches_pytorch_grad_cam_for_predicted_and_given_classes(pgc_zoo, net):
    m, (layer, _) = pgc_zoo[net], PGC_NETS[net]
    x = image(64)
    engine = CamEngine(m, layer)
    theirs = run_pgc(pgc.FinerCAM(m, [find_layer(m, layer)]), x, targets=None)
    assert_parity(engine(x, methods="finercam")["finercam"], theirs, f"{net}/finercam/pred")
    theirs = run_pgc(pgc.FinerCAM(m, [find_layer(m, layer)]), x, targets=None, target_idx=4, alpha=0.5)
    ours = engine(x, methods=get_method("finercam").with_options(alpha=0.5), targets=4)["finercam"]
    assert_parity(ours, theirs, f"{net}/finercam/class 4, alpha 0.5")
    m.zero_grad(set_to_none=True)


@pytest.mark.parametrize("net", list(PGC_NETS))
def test_randomcam_matches_pytorch_grad_cam_given_the_same_weights(pgc_zoo, net, monkeypatch):
    """The reference draws ``np.random.uniform(-1, 1)``; it is handed the weights the engine drew."""
    import pytorch_grad_cam.random_cam as random_cam

    m, (layer, _) = pgc_zoo[net], PGC_NETS[net]
    x = image(64)
    drawn = {}
    real = Pass.get

    def keep(self, name, i, options=None):
        value = real(self, name, i, options)
        drawn[name] = value
        return value

    monkeypatch.setattr(Pass, "get", keep)
    ours = CamEngine(m, layer)(x, methods="randomcam")["randomcam"]
    weights = drawn["random_weights"]
    assert weights.shape[0] == 2 and weights.min() >= -1 and weights.max() <= 1
    monkeypatch.setattr(random_cam.np.random, "uniform", lambda low, high, size: weights.double().numpy())
    theirs = run_pgc(pgc.RandomCAM(m, [find_layer(m, layer)]), x, [ClassifierOutputTarget(0)] * 2)
    assert_parity(ours, theirs, f"{net}/randomcam")
    m.zero_grad(set_to_none=True)


@pytest.mark.parametrize("net", list(PGC_NETS))
def test_refinecam_matches_pytorch_grad_cam(pgc_zoo, net):
    m, (_, layers) = pgc_zoo[net], PGC_NETS[net]
    x = image(64)
    ours = CamEngine(m, layers)(x, methods=["refinecam", "refinecam(layercam)"], targets=CLASSES)
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    for name, base in (("refinecam", pgc.GradCAMPlusPlus), ("refinecam(layercam)", pgc.LayerCAM)):
        refine = pgc.RefineCAM(m, [find_layer(m, n) for n in layers], base_method=base)
        theirs = torch.from_numpy(refine(x, targets))
        for cam in refine.base_cam_per_layer:
            cam.activations_and_grads.release()
        assert_parity(ours[name], theirs, f"{net}/{name}")
    m.zero_grad(set_to_none=True)


@pytest.mark.parametrize("net", list(PGC_NETS))
def test_sess_matches_pytorch_grad_cam(pgc_zoo, net):
    """Three scales keep it small: 1 + 4 + 4 windows of 64 px per image.

    SESS averages each pixel over the patches whose map is above ``theta`` there, 0 by default. Where a base
    map is zero in exact arithmetic (its ReLU'd channel sum cancels), the two libraries' roundings leave 0 on
    one side and ±1e-12 on the other, and the pixel's count of patches, hence its mean, changes: on
    regnet_y_400mf at scale 80 one pixel's count moves one image's map by 0.10. With ``theta = 1e-3`` no
    value is within rounding of the threshold, and the maps agree to 1e-6."""
    m, (layer, _) = pgc_zoo[net], PGC_NETS[net]
    x = image(64)
    options = {"scales": (64, 80, 96)} if net == "resnet18" else {"scales": (64, 80, 96), "theta": 1e-3}
    ours = CamEngine(m, layer)(x, methods=get_method("sess").with_options(**options), targets=CLASSES)["sess"]
    theirs = run_pgc(pgc.SESS(m, [find_layer(m, layer)], **options), x, [ClassifierOutputTarget(c) for c in CLASSES])
    assert_parity(ours, theirs, f"{net}/sess")
    m.zero_grad(set_to_none=True)


@pytest.mark.parametrize("net", list(PGC_NETS))
def test_deep_feature_factorization_matches_pytorch_grad_cam_from_the_same_start(pgc_zoo, net):
    """NMF is not convex: each side converges to the optimum its start leads to. The reference starts from
    scikit-learn's ``init="random"`` with numpy's ``RandomState(0)``; handed that start, the torch
    coordinate descent (the same algorithm) lands on the same factors at the same iteration. Its own default
    start is drawn from a torch generator and leads to another factorisation, as good by reconstruction error
    (within 10 %)."""
    from pytorch_grad_cam import DeepFeatureFactorization
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff
    from sklearn.decomposition import NMF
    from sklearn.decomposition._nmf import _initialize_nmf

    from cams.dff import deep_feature_factorization, nmf

    m, (layer, _) = pgc_zoo[net], PGC_NETS[net]
    x = image(64)
    k = 4
    head = m.fc if net == "resnet18" else None  # the classifier reads resnet18's layer4, not regnet's block3
    reference = DeepFeatureFactorization(m, find_layer(m, layer), computation_on_concepts=head)
    out = reference(x, k)
    reference.activations_and_grads.release()
    acts = {}
    handle = find_layer(m, layer).register_forward_hook(lambda mod, i, o: acts.setdefault("a", o.detach()))
    with torch.no_grad():
        m(x)
    handle.remove()
    flat = acts["a"].numpy().transpose(1, 0, 2, 3).reshape(acts["a"].shape[1], -1)
    shifted = flat - flat.min(axis=1)[:, None]
    w0, h0 = _initialize_nmf(shifted, k, init="random", random_state=0)

    start = (torch.from_numpy(w0.copy()), torch.from_numpy(h0.copy()))
    ours = deep_feature_factorization(m, x, layer, k, head=head, init=start)
    assert np.array_equal(start[0].numpy(), w0) and np.array_equal(start[1].numpy(), h0)  # the start is not updated
    assert ours.iterations == NMF(n_components=k, init="random", random_state=0).fit(shifted).n_iter_
    concepts = torch.from_numpy(np.asarray(out[0]))
    assert_parity(ours.maps, torch.from_numpy(np.stack(out[1])), f"{net}/dff maps")
    scale = concepts.abs().max().item()
    assert_parity(ours.concepts / scale, concepts / scale, f"{net}/dff concepts (relative)")
    if head is not None:
        assert_parity(ours.scores, torch.from_numpy(out[2]), f"{net}/dff concept scores")

    w_ref, where = dff(acts["a"].numpy().copy(), k)
    h_ref = where.transpose(1, 0, 2, 3).reshape(k, -1)
    reference_error = np.linalg.norm(shifted - (w_ref - flat.min(axis=1)[:, None]) @ h_ref)
    w, h, _ = nmf(torch.from_numpy(shifted), k, generator=torch.Generator().manual_seed(0))
    assert (torch.from_numpy(shifted) - w @ h).norm() <= 1.1 * reference_error


def test_sobel_map_equals_pytorch_grad_cams_on_8_bit_grey_images():
    """The reference rounds ``|G_x|``, ``|G_y|`` and their mean to 8 bits and saturates at 255. On a grey 8-bit
    image ``|G_x| + |G_y|`` is even (the kernels' odd coefficients cancel mod 2), so without saturation
    (values ≤ 63: |G| ≤ 4·63) nothing is rounded and the maps are equal."""
    from pytorch_grad_cam.sobel_cam import sobel_cam

    from cams.methods.baseline import sobel

    rng = np.random.default_rng(0)
    for shape in ((40, 56), (33, 17)):
        grey = rng.integers(0, 64, size=shape).astype(np.uint8)
        rgb = np.stack([grey] * 3, axis=-1)
        x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
        theirs = torch.from_numpy(sobel_cam(rgb).astype(np.float32))
        assert_parity(sobel(x)[0] / 255, theirs / 255, f"sobel {shape}")
        assert_parity(sobel(x[:, :1])[0] / 255, theirs / 255, f"sobel of the grey channel alone {shape}")
        channels_last = x.contiguous(memory_format=torch.channels_last)
        assert_parity(sobel(channels_last)[0] / 255, theirs / 255, f"sobel channels-last {shape}")
        assert_parity(CamEngine(nn.Identity())(x, methods="sobel")["sobel"][0], minmax(theirs[None])[0], "engine")


def test_sobel_and_nmf_give_back_the_torch_thread_count_they_found():
    from cams.dff import nmf
    from cams.methods.baseline import sobel

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        sobel(x)
        assert torch.get_num_threads() == 2, "sobel"
        nmf(x[0, 0], 2, generator=torch.Generator().manual_seed(0), max_iter=5)
        assert torch.get_num_threads() == 2, "nmf"
    finally:
        torch.set_num_threads(before)


def test_sobel_map_of_colour_images_equals_opencvs_float_sobel():
    import cv2

    from cams.methods.baseline import sobel

    colour = np.random.default_rng(1).random((40, 56, 3)).astype(np.float32)
    grey = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY).astype(np.float64)
    expected = 0.5 * np.abs(cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=3)) + 0.5 * np.abs(
        cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=3)
    )
    ours = sobel(torch.from_numpy(colour).permute(2, 0, 1)[None])[0]
    assert_parity(ours, torch.from_numpy(expected), "colour sobel")


# ----------------------------------------------------------------------------- torchcam
def test_cam_matches_torchcam():
    for name, layer, fc in (("resnet18", "layer4", "fc"), ("regnet_y_400mf", "trunk_output", "fc")):
        m, x = model(name), image(64)
        ours = CamEngine(m, layer)(x, methods="cam", targets=CLASSES)["cam"]
        with tc.CAM(m, layer, fc_layer=fc, input_shape=(3, 64, 64)) as extractor, torch.no_grad():
            m(x)
            theirs = torchcam_map(extractor(class_idx=CLASSES), (64, 64))
        assert_parity(ours, theirs, f"{name}/cam")


SMOOTH_NETS = (("resnet18", "layer4"), ("regnet_y_400mf", "trunk_output"))


@pytest.mark.parametrize(("net", "layer"), SMOOTH_NETS)
def test_smooth_gradcampp_matches_torchcam_without_noise(net, layer):
    """With σ → 0 every noisy copy is the input itself, and the formula (moments, α, weights) is torchcam's."""
    m, x = model(net), image(64)
    method = get_method("smoothgradcampp").with_options(std=1e-30)
    ours = CamEngine(m, layer)(x, methods=method, targets=CLASSES)["smoothgradcampp"]
    with tc.SmoothGradCAMpp(m, layer, std=1e-30, input_shape=(3, 64, 64)) as extractor:
        m(x)
        theirs = torchcam_map(extractor(class_idx=CLASSES), (64, 64))
    assert_parity(ours, theirs, f"{net}/smoothgradcampp σ=0")


@pytest.mark.parametrize(("net", "layer"), SMOOTH_NETS)
def test_smooth_gradcampp_draws_torchcams_noise_and_differs_only_where_torchcam_uses_its_last_sample(
    net, layer, monkeypatch
):
    """Seeded alike, the engine feeds the network exactly torchcam's noisy copies (all N·B in one forward).

    The maps differ by design: torchcam's weights use ReLU of the *last* noisy sample's gradient, and its
    map the *last* noisy sample's activations (its hooks overwrite the clean ones); the paper (Eq. 13–15)
    and the engine use the mean gradient D¹ and the clean activations. With 4 samples of σ = 0.3 the
    largest difference per pixel measured here is 9.2e-2 (resnet18) and 1.7e-1 (regnet_y_400mf)."""
    m, x = model(net), image(64)
    seen: dict[str, list[torch.Tensor]] = {"ours": [], "torchcam": []}
    monkeypatch.setattr(Pass, "generator", lambda self, name, layer=0: torch.Generator().manual_seed(11))
    handle = m.register_forward_pre_hook(lambda mod, args: seen["current"].append(args[0].detach().clone()))
    try:
        seen["current"] = seen["ours"]
        ours = CamEngine(m, layer)(x, methods="smoothgradcampp", targets=CLASSES)["smoothgradcampp"]
        seen["current"] = seen["torchcam"]
        torch.manual_seed(11)
        with tc.SmoothGradCAMpp(m, layer, input_shape=(3, 64, 64)) as extractor:
            m(x)
            theirs = torchcam_map(extractor(class_idx=CLASSES), (64, 64))
    finally:
        handle.remove()
    assert len(seen["ours"]) == 2  # the shared forward, then all 4 × 2 noisy copies at once
    assert torch.equal(seen["ours"][1], torch.cat(seen["torchcam"][1:]))
    assert 1e-3 < (ours - theirs).abs().max() < 0.5


SCORE_NETS = (("resnet18", "layer1"), ("squeezenet1_1", "features.1"))  # 64 channels: 2·64·N forwards a side


@pytest.mark.parametrize(("net", "layer"), SCORE_NETS)
def test_sscam_matches_torchcam_with_the_same_noise(net, layer, monkeypatch):
    """SS-CAM's noise is injected: the engine's generator is seeded as torchcam's global RNG (32² images:
    H·W is a multiple of 16, so the chunked draws are the same stream as torchcam's whole-tensor draws)."""
    m, x = model(net), image(32)
    monkeypatch.setattr(Pass, "generator", lambda self, name, layer=0: torch.Generator().manual_seed(0))
    ours = CamEngine(m, layer)(x, methods=get_method("sscam").with_options(num_samples=2), targets=CLASSES,
                               batch_size=64)["sscam"]  # fmt: skip
    torch.manual_seed(0)
    with tc.SSCAM(m, layer, batch_size=64, num_samples=2, input_shape=(3, 32, 32)) as extractor, torch.no_grad():
        m(x)
        theirs = torchcam_map(extractor(class_idx=CLASSES), (32, 32))
    assert_parity(ours, theirs, f"{net}/sscam")


@pytest.mark.parametrize(("net", "layer"), SCORE_NETS)
def test_iscam_matches_torchcam(net, layer):
    m, x = model(net), image(32)
    ours = CamEngine(m, layer)(x, methods=get_method("iscam").with_options(num_samples=2), targets=CLASSES)["iscam"]
    with tc.ISCAM(m, layer, batch_size=64, num_samples=2, input_shape=(3, 32, 32)) as extractor, torch.no_grad():
        m(x)
        theirs = torchcam_map(extractor(class_idx=CLASSES), (32, 32))
    assert_parity(ours, theirs, f"{net}/iscam")


def tiny_vit(patch: int, layers: int, heads: int, dim: int) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=patch, num_layers=layers, num_heads=heads, hidden_dim=dim,
                             mlp_dim=2 * dim, num_classes=10).eval()  # fmt: skip


@pytest.mark.parametrize(("patch", "layers", "heads", "dim"), [(8, 4, 2, 32), (4, 3, 4, 48)])
def test_legrad_matches_torchcam_on_torchvision_vits(patch, layers, heads, dim):
    vit, x = tiny_vit(patch, layers, heads, dim), image(32)
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(1, layers)]
    ours = CamEngine(vit, blocks)(x, methods="legrad", targets=CLASSES)["legrad"]
    with tc.LeGrad(vit, blocks) as extractor:
        vit(x)
        theirs = torchcam_map(extractor(class_idx=CLASSES), (32, 32))
    assert_parity(ours, theirs, f"vit/{patch}/legrad")


def timm_as_torchvision(vit: nn.Module) -> VisionTransformer:
    """The same network as a torchvision ``VisionTransformer`` (torchcam's LeGrad only reads torchvision blocks)."""
    block = vit.blocks[0]
    tv = VisionTransformer(image_size=32, patch_size=8, num_layers=len(vit.blocks), num_heads=block.attn.num_heads,
                           hidden_dim=vit.embed_dim, mlp_dim=block.mlp.fc1.out_features, num_classes=10)  # fmt: skip
    tv.eval()
    with torch.no_grad():
        tv.conv_proj.load_state_dict(vit.patch_embed.proj.state_dict())
        tv.class_token.copy_(vit.cls_token)
        tv.encoder.pos_embedding.copy_(vit.pos_embed)
        for theirs, mine in zip(vit.blocks, tv.encoder.layers, strict=True):
            mine.ln_1.load_state_dict(theirs.norm1.state_dict())
            mine.ln_2.load_state_dict(theirs.norm2.state_dict())
            mine.self_attention.in_proj_weight.copy_(theirs.attn.qkv.weight)
            mine.self_attention.in_proj_bias.copy_(theirs.attn.qkv.bias)
            mine.self_attention.out_proj.load_state_dict(theirs.attn.proj.state_dict())
            mine.mlp[0].load_state_dict(theirs.mlp.fc1.state_dict())
            mine.mlp[3].load_state_dict(theirs.mlp.fc2.state_dict())
        tv.encoder.ln.load_state_dict(vit.norm.state_dict())
        tv.heads.head.load_state_dict(vit.head.state_dict())
    return tv


def test_legrad_on_a_timm_vit_matches_torchcam_on_the_same_network():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                            depth=4, num_heads=2, num_classes=10).eval()  # fmt: skip
    tv, x = timm_as_torchvision(vit), image(32)
    assert torch.equal(vit(x), tv(x))
    ours = CamEngine(vit, [f"blocks.{i}" for i in (1, 2, 3)])(x, methods="legrad", targets=CLASSES)["legrad"]
    with tc.LeGrad(tv, [f"encoder.layers.encoder_layer_{i}" for i in (1, 2, 3)]) as extractor:
        tv(x)
        theirs = torchcam_map(extractor(class_idx=CLASSES), (32, 32))
    assert_parity(ours, theirs, "timm vit/legrad")
    assert all(block.attn.fused_attn == timm.layers.use_fused_attn() for block in vit.blocks)


class FullResolution(nn.Module):
    """No downsampling: every layer's map is already at the input's size."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("widths", [(8, 8, 8), (6, 12, 12, 6)])
def test_refinecam_matches_torchcam_when_no_map_needs_resizing(widths):
    """torchcam multiplies the layers' maps at the largest layer's resolution and leaves the resizing to the
    user; pytorch-grad-cam (and the engine) resize each to the input first, then multiply. Bilinear resizing
    does not commute with the product, so the two differ (by 0.12 and 0.17 per pixel on resnet18's
    layer3 × layer4 and densenet121's denseblock3 × features, 96² inputs); where no map needs resizing they are
    the same."""
    torch.manual_seed(0)
    m, x = FullResolution(widths).eval(), image(16)
    layers = [f"features.{2 * i + 1}" for i in range(1, len(widths))]
    ours = CamEngine(m, layers)(x, methods="refinecam(gradcam)", targets=CLASSES)["refinecam(gradcam)"]
    with tc.RefineCAM(m, layers, base_method=tc.GradCAM, input_shape=(3, 16, 16)) as extractor:
        scores = m(x)
        theirs = torchcam_map(extractor(class_idx=CLASSES, scores=scores), (16, 16))
    assert_parity(ours, theirs, f"{widths}/refinecam")
