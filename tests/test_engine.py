"""The engine's promises: shapes, one shared pass, a model left exactly as found, actionable errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import cams.engine
from cams import METHODS, CamEngine, get_method, guided_backprop, guided_gradcam
from cams.ops import first_principal_component

# every method that runs on one convolutional target layer (transformer methods need attention or tokens, refinecam
# two layers)
ALL = sorted(n for n, m in METHODS.items() if m.min_layers == 1 and not m.transformer)
GRADIENT = ["gradcam", "gradcam++", "xgradcam", "layercam", "eigencam", "eigengradcam"]


class SmallNet(nn.Module):
    """BatchNorm, dropout, in-place ReLU and functional ReLU: everything a CAM could disturb."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        )
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.features(x)).mean(dim=(2, 3))
        return self.head(self.drop(h))


class DictNet(SmallNet):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": super().forward(x)}


@pytest.fixture
def net() -> SmallNet:
    torch.manual_seed(0)
    model = SmallNet()
    model(torch.randn(4, 3, 16, 16))  # non-trivial BatchNorm statistics
    return model


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "hooks": hook_count(model),
        "rng": torch.random.get_rng_state().clone(),
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    assert torch.equal(before["rng"], after["rng"])
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"buffer or parameter {k} changed"
    for k, g in before["grads"].items():
        h = after["grads"][k]
        assert (g is None and h is None) or torch.equal(g, h), f".grad of {k} changed"


# ----------------------------------------------------------------------------- output contract
def test_every_method_returns_float32_maps_in_unit_range_at_input_size(net, x):
    maps = CamEngine(net, "features")(x, methods=ALL)
    assert sorted(maps) == ALL
    for name, m in maps.items():
        assert m.shape == (3, 16, 16) and m.dtype == torch.float32, name
        assert m.min() >= 0 and m.max() <= 1, name


def test_one_method_name_is_accepted_as_a_string(net, x):
    assert list(CamEngine(net, "features")(x, methods="xgradcam")) == ["xgradcam"]


def test_maps_report_the_explained_class_score_and_logits(net, x):
    maps = CamEngine(net, "features")(x, methods="gradcam", targets=[0, 1, 2])
    assert maps.classes.tolist() == [0, 1, 2]
    logits = net.eval()(x)
    assert torch.allclose(maps.logits, logits, atol=1e-5)
    assert torch.allclose(maps.scores, logits[torch.arange(3), torch.tensor([0, 1, 2])], atol=1e-5)


def test_default_target_is_each_images_predicted_class(net, x):
    engine = CamEngine(net, "features")
    predicted = net.eval()(x).argmax(1)
    assert torch.equal(engine(x).classes, predicted)
    assert torch.equal(engine(x)["gradcam"], engine(x, targets=predicted)["gradcam"])


def test_reference_style_per_image_callables_equal_class_indices(net, x):
    engine = CamEngine(net, "features")
    a = engine(x, methods=("gradcam", "scorecam"), targets=[2, 0, 4])
    b = engine(x, methods=("gradcam", "scorecam"), targets=[ClassifierOutputTarget(c) for c in (2, 0, 4)])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6)


def test_callable_target_explains_models_with_dict_outputs(net, x):
    dict_net = DictNet()
    dict_net.load_state_dict(net.state_dict())
    ours = CamEngine(dict_net, "features")(x, methods=("gradcam", "ablationcam"), targets=lambda o: o["logits"][:, 1])
    plain = CamEngine(net, "features")(x, methods=("gradcam", "ablationcam"), targets=1)
    for k in ours:
        assert torch.allclose(ours[k], plain[k], atol=1e-6)
    assert ours.classes is None


def test_maps_of_one_image_do_not_depend_on_the_rest_of_the_batch(net, x):
    engine = CamEngine(net, "features")
    methods = [m for m in ALL if not METHODS[m].randomised]  # their draws depend on the image's place
    batch = engine(x, methods=methods, targets=1)
    alone = engine(x[1:2], methods=methods, targets=1)
    for k in methods:
        assert torch.allclose(batch[k][1], alone[k][0], atol=1e-5), k


@pytest.mark.parametrize(
    ("ctor", "expected"),
    [
        (torchvision.models.resnet18, "layer4"),
        (torchvision.models.vgg11, "features"),
        (torchvision.models.densenet121, "features"),
        (torchvision.models.mobilenet_v3_small, "features"),
    ],
)
def test_automatic_layer_is_the_last_spatial_feature_map(ctor, expected):
    engine = CamEngine(ctor(num_classes=3))
    assert engine.layer_names == [expected]  # chosen for a 224×224 image before any call
    assert engine.resolve_layers(torch.randn(1, 3, 64, 64)) == [expected]


# ----------------------------------------------------------------------------- the shared pass
def test_all_gradient_methods_share_one_forward_and_one_autograd_grad(net, x, monkeypatch):
    calls = {"forward": 0, "grad": 0}
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(cams.engine.torch.autograd, "grad", counting_grad)
    engine = CamEngine(net, "features")
    handle = net.register_forward_pre_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    try:
        engine(x, methods=[*GRADIENT, "hirescam", "gradcamelementwise"])
    finally:
        handle.remove()
    assert calls == {"forward": 1, "grad": 1}


def test_ablation_runs_the_layers_before_the_target_once_per_chunk_not_per_channel():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    calls = {"conv1": 0}
    handle = model.conv1.register_forward_hook(lambda *a: calls.__setitem__("conv1", calls["conv1"] + 1))
    try:
        CamEngine(model, "layer4")(torch.randn(2, 3, 64, 64), methods="ablationcam", batch_size=128)
    finally:
        handle.remove()
    # 1 shared forward + 2 images x ceil(512 / 128) chunks; the reference runs conv1 on all 2 x 512 rows.
    assert calls["conv1"] == 1 + 2 * 4


def test_gradient_does_not_flow_into_layers_before_the_target(net, x):
    seen = []
    handle = net.features[0].register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    try:
        CamEngine(net, "features.3")(x, methods="gradcam")
    finally:
        handle.remove()
    assert seen == [False]


# ----------------------------------------------------------------------------- leave the model as found
@pytest.mark.parametrize("aug_smooth", [False, True])
def test_call_leaves_grads_modes_buffers_hooks_and_rng_bitwise_unchanged(net, x, aug_smooth):
    net.train()
    net.features[1].eval()  # a mixed state must come back exactly
    net.head.weight.grad = torch.full_like(net.head.weight, 0.25)
    before = snapshot(net)
    CamEngine(net, "features")(x, methods=ALL, aug_smooth=aug_smooth)
    guided_backprop(net, x)
    assert_same(before, snapshot(net))


def test_a_failing_call_leaves_no_hooks_and_restores_modes(net, x):
    net.train()
    before = snapshot(net)
    with pytest.raises(ValueError, match="out of range"):
        CamEngine(net, "features")(x, methods="gradcam", targets=99)
    assert_same(before, snapshot(net))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_inside_no_grad_and_inference_mode(net, x, context):
    engine = CamEngine(net, "features")
    expected = engine(x, methods=("gradcam", "layercam"))
    with context():
        got = engine(x, methods=("gradcam", "layercam"))
    for k in expected:
        assert torch.equal(expected[k], got[k])


def test_works_on_a_tensor_created_in_inference_mode(net, x):
    with torch.inference_mode():
        frozen = x.clone()
    assert frozen.is_inference()
    engine = CamEngine(net, "features.0")  # the first layer: autograd would need to save the input itself
    assert torch.equal(engine(frozen)["gradcam"], engine(x)["gradcam"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_float32_maps(net, x, dtype):
    half = copy.deepcopy(net).to(dtype)
    maps = CamEngine(half, "features")(x.to(dtype), methods=("gradcam", "eigencam"), targets=1)
    full = CamEngine(net, "features")(x, methods=("gradcam", "eigencam"), targets=1)
    for k in maps:
        assert maps[k].dtype == torch.float32
        assert (maps[k] - full[k]).abs().mean() < 0.05


def test_autocast_gives_float32_maps(net, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = CamEngine(net, "features")(x, methods="gradcam++", targets=0)
    assert maps["gradcam++"].dtype == torch.float32


def test_maps_come_back_on_the_input_device(net, x):
    maps = CamEngine(net, "features")(x, methods="gradcam")
    assert maps["gradcam"].device == x.device


# ----------------------------------------------------------------------------- eigen sign rule
def test_eigen_sign_rule_makes_the_largest_magnitude_positive():
    a = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(3))
    p = first_principal_component(a, sign="max")
    assert torch.all(p.flatten(1).max(1).values >= p.flatten(1).min(1).values.abs())
    assert torch.allclose(first_principal_component(-a, sign="max"), p, atol=1e-5)
    raw = first_principal_component(a, sign="none")
    assert torch.allclose(raw.abs(), p.abs(), atol=1e-6)


# ----------------------------------------------------------------------------- guided backprop
def test_guided_backprop_covers_functional_relu_and_whole_batch(net, x):
    gb = guided_backprop(net, x, targets=[0, 1, 2])
    assert gb.shape == x.shape and gb.dtype == torch.float32
    alone = guided_backprop(net, x[2:], targets=[2])
    assert torch.allclose(gb[2], alone[0], atol=1e-6)
    plain = torch.autograd.functional.jacobian(lambda t: net.eval()(t)[0, 0], x[:1])[0]
    assert not torch.allclose(gb[0], plain, atol=1e-6)  # the guided rule changed the gradient


def test_guided_gradcam_multiplies_gradients_by_the_map(net, x):
    gb = guided_backprop(net, x)
    cam = CamEngine(net, "features")(x)["gradcam"]
    assert torch.equal(guided_gradcam(gb, cam), gb * cam[:, None])


# ----------------------------------------------------------------------------- actionable errors
def test_unknown_method_suggests_close_names(net, x):
    with pytest.raises(ValueError, match=r"methods='gradcamm'.*did you mean 'gradcam'"):
        CamEngine(net, "features")(x, methods="gradcamm")


def test_method_aliases_are_forgiven():
    assert get_method("GradCAMPlusPlus").name == "gradcam++"
    assert get_method("xgrad_cam").name == "xgradcam"
    assert get_method("Score-CAM").name == "scorecam"


def test_unknown_layer_suggests_close_names(net):
    with pytest.raises(ValueError, match=r"no layer named 'feature'.*did you mean 'features'"):
        CamEngine(net, "feature")


def test_a_module_from_another_model_is_rejected(net):
    with pytest.raises(ValueError, match="not a sub-module"):
        CamEngine(net, nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("bad", [torch.randn(3, 16, 16), torch.randn(1, 1, 1, 3, 16, 16)])  # 5-D = volumes
def test_input_that_is_neither_images_nor_volumes_is_rejected_with_its_shape(net, bad):
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        CamEngine(net, "features")(bad)


def test_integer_input_is_rejected(net):
    with pytest.raises(TypeError, match="floating-point"):
        CamEngine(net, "features")(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_class_index_out_of_range_names_the_valid_range(net, x):
    with pytest.raises(ValueError, match=r"class index 7 is out of range.*valid: 0..4"):
        CamEngine(net, "features")(x, targets=[0, 7, 1])


def test_wrong_number_of_targets_is_rejected(net, x):
    with pytest.raises(ValueError, match="2 class indices for a batch of 3"):
        CamEngine(net, "features")(x, targets=[0, 1])


class EmbeddingNet(SmallNet):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"embedding": super().forward(x)}


def test_non_classifier_output_without_callable_target_is_a_type_error(x):
    with pytest.raises(TypeError, match=r"returned a dict with keys \['embedding'\].*pass a callable target"):
        CamEngine(EmbeddingNet(), "features")(x)


def test_callable_target_with_wrong_shape_is_rejected(net, x):
    with pytest.raises(ValueError, match="one score per image"):
        CamEngine(net, "features")(x, targets=lambda out: out.sum())


def test_bad_batch_size_and_sign_are_rejected(net, x):
    engine = CamEngine(net, "features")
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 0"):
        engine(x, methods="scorecam", batch_size=0)
    with pytest.raises(ValueError, match="eigen_sign"):
        engine(x, methods="eigencam", eigen_sign="positive")


def test_layer_with_non_spatial_output_is_rejected(net, x):
    with pytest.raises(ValueError, match=r"\(B, C, h, w\) feature maps"):
        CamEngine(net, "head")(x)
