"""The methods added from pytorch-grad-cam and torchcam: names, options, wrappers, seeded noise, shared passes."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import pytorch_grad_cam
import torch
import torchcam.methods
from conftest import TRAINER_DEFAULTS, QuadrantData, TinyNet
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import cams.engine
from cam_callback import CAMCallback
from cams import METHODS, CamEngine, get_method
from cams.dff import deep_feature_factorization
from cams.passes import Pass

RANDOMISED = sorted(n for n, m in METHODS.items() if m.randomised)
CHEAP = {"sscam": {"num_samples": 3}, "smoothgradcampp": {"num_samples": 3}}


class Net(nn.Module):
    """Conv-BN-ReLU twice, global average pooling, one linear layer (CAM's architecture)."""

    def __init__(self, classes: int = 5, dims: int = 2) -> None:
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
        self.features = nn.Sequential(
            conv(3, 8, 3, padding=1), norm(8), nn.ReLU(),
            conv(8, 12, 3, padding=1, stride=2), norm(12), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(2).mean(dim=2))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    model = Net()
    model(torch.randn(4, 3, 16, 16))  # non-trivial BatchNorm statistics
    return model.eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def method(name: str):
    spec = get_method(name)
    return spec.with_options(**CHEAP.get(spec.name, {}))


def count_forwards(model: nn.Module) -> tuple[list[int], object]:
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    return rows, handle


# ----------------------------------------------------------------------------- names
def test_every_method_class_of_both_peers_resolves_to_a_registered_method():
    not_methods = {"AblationLayer", "AblationLayerVit", "AblationLayerFasterRCNN", "GuidedBackpropReLUModel",
                   "ActivationsAndGradients", "DeepFeatureFactorization"}  # fmt: skip
    peers = {n for n in dir(pytorch_grad_cam) if isinstance(getattr(pytorch_grad_cam, n), type)} - not_methods
    peers |= set(torchcam.methods.activation.__all__) | set(torchcam.methods.gradient.__all__)
    assert len(peers) == 25 and {"KPCA_CAM", "SmoothGradCAMpp", "LeGrad", "SSCAM", "ISCAM", "CAM", "SESS"} <= peers
    for name in sorted(peers):
        assert get_method(name).name in METHODS, name


def test_method_options_have_defaults_and_a_typo_names_the_close_option():
    assert get_method("smoothgradcampp").options == {"num_samples": 4, "std": 0.3}
    assert get_method("sscam").options == {"num_samples": 35, "std": 2.0}
    assert get_method("iscam").options == {"num_samples": 10}
    with pytest.raises(ValueError, match=r"sscam: unknown option 'num_sample' \(did you mean 'num_samples'\?\)"):
        get_method("sscam").with_options(num_sample=3)
    with pytest.raises(ValueError, match="its options are: none"):
        get_method("gradcam").with_options(std=1.0)


def test_wrappers_take_any_base_method_by_name():
    assert get_method("refinecam").name == "refinecam" and get_method("refinecam").weigh is METHODS["gradcam++"].weigh
    assert get_method("RefineCAM(Layer-CAM)").name == "refinecam(layercam)"
    assert get_method("sess(gradcam++)").options["base"] is METHODS["gradcam++"]
    assert get_method("finercam(xgradcam)").inputs == ("acts", "finer_grads")
    with pytest.raises(ValueError, match="not a wrapper method"):
        get_method("gradcam(layercam)")
    with pytest.raises(ValueError, match="finercam: the base method must use gradients; 'scorecam' does not"):
        get_method("finercam(scorecam)")


def test_two_variants_of_one_method_in_one_call_are_refused(net, x):
    with pytest.raises(ValueError, match="'sscam' is given twice with different options"):
        CamEngine(net, "features")(x, methods=[get_method("sscam"), get_method("sscam").with_options(std=1.0)])


def test_refinecam_needs_several_target_layers(net, x):
    with pytest.raises(ValueError, match=r"refinecam combines the maps of at least 2 target layers; got \['features"):
        CamEngine(net, "features")(x, methods="refinecam")
    maps = CamEngine(net, ["features.2", "features"])(x, methods=["refinecam", "gradcam++"])
    assert not torch.equal(maps["refinecam"], maps["gradcam++"])


# ----------------------------------------------------------------------------- seeded randomness
@pytest.mark.parametrize("name", RANDOMISED)
def test_randomised_methods_never_read_the_global_rng(net, x, name):
    engine = CamEngine(net, "features.3")  # before a ReLU: the gradients depend on the noise
    torch.manual_seed(1)
    first = engine(x, methods=method(name))[name]
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    second = engine(x, methods=method(name))[name]
    assert torch.equal(first, second)  # the global stream differs: the maps do not
    assert torch.equal(torch.random.get_rng_state(), state)
    other = engine(x, methods=method(name), seed=1)[name]
    assert not torch.equal(first, other)


def test_a_generator_seed_advances_between_calls_and_replays_from_the_same_state(net, x):
    engine = CamEngine(net, "features")
    g = torch.Generator().manual_seed(5)
    a = engine(x, methods="randomcam", seed=g)["randomcam"]
    b = engine(x, methods="randomcam", seed=g)["randomcam"]
    c = engine(x, methods="randomcam", seed=torch.Generator().manual_seed(5))["randomcam"]
    assert not torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(ValueError, match=r"seed must be a non-negative int or a torch\.Generator; got -1"):
        engine(x, methods="randomcam", seed=-1)


def test_a_randomised_map_does_not_depend_on_the_other_methods_of_the_call(net, x):
    engine = CamEngine(net, "features.3")
    alone = engine(x, methods=method("sscam"))["sscam"]
    together = engine(x, methods=["randomcam", method("smoothgradcampp"), method("sscam")])["sscam"]
    assert torch.equal(alone, together)


def test_training_with_randomised_methods_in_the_callback_is_bitwise_identical(tmp_path: Path):
    def fit(callbacks: list[L.Callback]) -> tuple[TinyNet, torch.Tensor]:
        L.seed_everything(7, workers=True)
        model = TinyNet(dropout=0.5)  # any draw on the global RNG would change the losses
        options = dict(TRAINER_DEFAULTS, max_epochs=2, logger=CSVLogger(str(tmp_path)))
        L.Trainer(callbacks=callbacks, **options).fit(model, datamodule=QuadrantData(n_train=32, n_val=8))
        return model, torch.random.get_rng_state()

    plain, plain_rng = fit([])
    cam = CAMCallback(methods=["smoothgradcampp", "randomcam", "iscam"], num_images=4)
    watched, watched_rng = fit([cam])
    assert cam.runs == 3
    assert all(torch.equal(a, b) for a, b in zip(plain.losses, watched.losses, strict=True))
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, watched.state_dict()[name]), name
    assert torch.equal(plain_rng, watched_rng)


# ----------------------------------------------------------------------------- shared passes, batched samples
def test_methods_of_activations_and_gradients_share_the_one_forward_and_backward(net, x, monkeypatch):
    grads = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: grads.append(1) or real(*a, **k))
    rows, handle = count_forwards(net)
    try:
        shared = ["gradcam", "segeigencam", "fem", "kpcacam", "cam", "randomcam"]
        CamEngine(net, "features")(x, methods=shared)
        assert (rows, len(grads)) == ([2], 1)
        CamEngine(net, "features")(x, methods=["gradcam", "shapleycam", "finercam"])
        assert (rows, len(grads)) == ([2, 2], 1 + 3)  # + the Hessian-vector product, + Finer-CAM's own score
    finally:
        handle.remove()


def test_smooth_gradcampp_puts_all_noisy_copies_in_one_forward_and_one_backward(net, x, monkeypatch):
    grads = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: grads.append(1) or real(*a, **k))
    rows, handle = count_forwards(net)
    try:
        CamEngine(net, "features")(x, methods=["gradcam", "smoothgradcampp"])
    finally:
        handle.remove()
    assert rows == [2, 4 * 2]  # the shared forward, then the 4 noisy copies of each image at once
    assert len(grads) == 2


def test_sscam_and_iscam_score_every_sample_in_chunked_forwards(net, x):
    rows, handle = count_forwards(net)
    try:
        CamEngine(net, "features")(x, methods=get_method("sscam").with_options(num_samples=3), batch_size=50)
    finally:
        handle.remove()
    assert rows[0] == 2 and sum(rows[1:]) == 3 * 2 * 12 and max(rows[1:]) == 50


def test_fullgrad_ignores_target_layers_and_takes_every_bias_gradient_from_one_backward(net, x, monkeypatch):
    grads = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: grads.append(1) or real(*a, **k))
    rows, handle = count_forwards(net)
    engine = CamEngine(net)
    try:
        maps = engine(x, methods="fullgrad")
    finally:
        handle.remove()
    assert rows == [2, 2] and len(grads) == 1  # the shared forward (for the targets), FullGrad's own
    # no target layer was needed, none was chosen for the call: the names are still the guess made before any call
    assert engine.layer_names == CamEngine(net).layer_names
    assert maps["fullgrad"].shape == (2, 16, 16)


def test_fullgrad_without_any_bias_is_an_error(x):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="has no 2-D convolution or BatchNorm layer with a bias"):
        CamEngine(model)(x, methods="fullgrad")


def test_shapleycam_is_gradcam_when_the_score_is_linear_after_the_layer(net, x):
    maps = CamEngine(net, "features")(x, methods=["shapleycam", "gradcam"])
    assert torch.equal(maps["shapleycam"], maps["gradcam"])


def test_finercam_with_alpha_zero_on_one_comparison_is_gradcam_of_the_class_score(net, x):
    """``Σ w (y_m − 0·y_d) / Σ w = y_m``: the gradients are the target's own."""
    finer = get_method("finercam").with_options(alpha=0.0, comparisons=(1,))
    maps = CamEngine(net, "features")(x, methods=[finer, "gradcam"], targets=[1, 2])
    torch.testing.assert_close(maps["finercam"], maps["gradcam"], atol=1e-5, rtol=0)


def test_kpcacam_with_a_linear_kernel_is_eigencam(net, x):
    maps = CamEngine(net, "features")(x, methods=[get_method("kpcacam").with_options(kernel="linear"), "eigencam"])
    torch.testing.assert_close(maps["kpcacam"], maps["eigencam"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="kernel='gauss' is not supported"):
        CamEngine(net, "features")(x, methods=get_method("kpcacam").with_options(kernel="gauss"))


# ----------------------------------------------------------------------------- CAM
def test_cam_reads_the_fully_connected_layer_and_needs_class_targets(net, x):
    maps = CamEngine(net, "features")(x, methods="cam", targets=[0, 4])
    assert maps.classes.tolist() == [0, 4]
    with pytest.raises(ValueError, match="cam reads the fully connected weights of a class"):
        CamEngine(net, "features")(x, methods="cam", targets=lambda out: out[:, 0])


def test_cam_without_pooling_and_one_linear_layer_is_an_error_or_a_warning(net, x):
    with pytest.raises(ValueError, match=r"no nn.Linear taking the target layer's 8 channels.*fc_layer='fc'"):
        CamEngine(net, "features.2")(x, methods="cam")
    net.fc = nn.Sequential(nn.Tanh(), nn.Linear(12, 5))  # not a linear function of the pooled features
    with pytest.warns(UserWarning, match=r"the model's logits are not fc.1\(global average of 'features'\)"):
        CamEngine(net, "features")(x, methods="cam")


def test_cam_weights_are_gradcams_times_the_map_size_on_a_pooled_linear_head(net, x):
    """Grad-CAM generalises CAM: after global pooling and a linear layer ``∂y_c/∂A_k = W[c, k] / (h·w)``."""
    from cams.methods.activation import cam
    from cams.methods.gradient import grad_cam

    acts = net.features(x).detach().requires_grad_()
    score = net.fc(acts.flatten(2).mean(dim=2))[:, 1].sum()
    (grads,) = torch.autograd.grad(score, acts)
    hw = acts.shape[2] * acts.shape[3]
    weights = net.fc.weight.detach()[[1, 1]]
    torch.testing.assert_close(cam(acts.detach(), weights), grad_cam(acts.detach(), grads) * hw)


# ----------------------------------------------------------------------------- LeGrad, Sobel, SESS
@pytest.fixture
def vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32,
                             num_classes=4).eval()  # fmt: skip


def test_legrad_joins_the_shared_forward_and_leaves_no_hook(vit):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    tokens = lambda t: t[:, 1:].reshape(len(t), 4, 4, -1).permute(0, 3, 1, 2)  # noqa: E731
    rows, handle = count_forwards(vit)
    try:
        maps = CamEngine(vit, blocks, reshape_transform=tokens)(x, methods=["legrad", "gradcam"])
    finally:
        handle.remove()
    assert rows == [2] and maps["legrad"].shape == (2, 32, 32)
    alone = CamEngine(vit, blocks)(x, methods="legrad")["legrad"]
    assert torch.equal(alone, maps["legrad"])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in vit.modules())


def test_legrad_on_a_layer_that_is_not_a_transformer_block_says_what_to_pass(vit):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"'conv_proj' \(Conv2d\) is not a transformer block.*encoder_layer_"):
        CamEngine(vit, "conv_proj")(x, methods="legrad")


def test_sobel_needs_no_model_layer_and_refuses_volumes():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 1.0
    edges = CamEngine(nn.Identity())(x, methods="sobel")["sobel"][0]
    assert edges[:, 3:5].min() > 0.999 and edges[:, :2].max() == 0
    with pytest.raises(ValueError, match="the Sobel map needs images"):
        CamEngine(nn.Identity())(torch.zeros(1, 1, 4, 4, 4), methods="sobel")


def test_sess_scores_and_explains_every_patch_in_the_same_forward(net, x):
    rows, handle = count_forwards(net)
    try:
        maps = CamEngine(net, "features")(x, methods=get_method("sess").with_options(scales=(16, 20)), batch_size=8)
    finally:
        handle.remove()
    # the shared forward, then 2 images x (1 + 4 windows) patches in chunks of 8 (the reference: twice as many)
    assert rows == [2, 8, 2] and maps["sess"].shape == (2, 16, 16)


def test_sess_options_are_checked_and_change_the_fusion(net, x):
    engine = CamEngine(net, "features")
    small = get_method("sess").with_options(scales=(16, 24))
    mean = engine(x, methods=small)["sess"]
    peak = engine(x, methods=small.with_options(pool="max"))["sess"]
    assert not torch.equal(mean, peak)
    with pytest.raises(ValueError, match="every scale must be at least the window size 16"):
        engine(x, methods=small.with_options(scales=(12,)))
    with pytest.raises(ValueError, match=r"pre_filter_ratio=1.0; expected a value in \[0, 1\)"):
        engine(x, methods=small.with_options(pre_filter_ratio=1.0))


# ----------------------------------------------------------------------------- volumes
def test_methods_that_work_per_channel_work_on_volumes():
    torch.manual_seed(0)
    model = Net(dims=3).eval()
    x = torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    names = ["cam", "fem", "kpcacam", "fullgrad", "shapleycam", "finercam", "segeigencam", "randomcam", "iscam",
             "smoothgradcampp", "sscam", "reciprocam"]  # fmt: skip
    assert {n for n, m in METHODS.items() if not m.volumes} == {
        "sobel", "sess", "legrad", "rollout", "gradrollout", "attnlrp", "vitreciprocam"
    }
    maps = CamEngine(model, "features")(x, methods=[method(n) for n in names])
    for name in names:
        assert maps[name].shape == (2, 8, 8, 8) and bool(torch.isfinite(maps[name]).all()), name


# ----------------------------------------------------------------------------- deep feature factorization
def test_deep_feature_factorization_leaves_the_model_and_the_global_rng_as_found(net, x):
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    result = deep_feature_factorization(net, x, "features", 3, head=net.fc)
    assert net.training and torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert result.concepts.shape == (12, 3) and result.maps.shape == (2, 3, 16, 16) and result.scores.shape == (3, 5)
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    torch.manual_seed(4)
    again = deep_feature_factorization(net, x, "features", 3, head=net.fc)
    assert torch.equal(again.concepts, result.concepts)  # its random start comes from `seed`, not the global RNG


def test_the_seeded_generator_of_an_input_is_independent_of_the_layer_and_input_name():
    p = Pass(model=nn.Identity(), x=torch.zeros(1), layers=[], raw=[], acts=[], grads=None, target=None, scores=None,
             seed=3)  # fmt: skip
    draws = {(n, i): torch.rand(4, generator=p.generator(n, i)) for n in ("a", "b") for i in (0, 1)}
    assert len({tuple(v.tolist()) for v in draws.values()}) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(torch.rand(4, generator=p.generator("a", 0)), draws[("a", 0)])


def test_engine_module_exposes_seed_in_its_signature():
    import inspect

    assert inspect.signature(cams.engine.CamEngine.__call__).parameters["seed"].default == 0
