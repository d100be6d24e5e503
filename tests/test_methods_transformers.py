"""Rollout, gradient-weighted rollout, AttnLRP, Recipro-CAM and ViT-ReciproCAM: their equations, their oracles, the
model left as found.

The expected maps are computed here, independently of the engine: a NumPy float64 forward of a tiny timm ViT
(checked against the model's own logits) gives the attention matrices, central differences of it give their
gradients, and the papers' equations are written out in NumPy. The same weights copied into torchvision's and
Hugging Face's ViT must give the same maps; AttnLRP is compared with the authors' ``lxt`` 2.1 (its rules patched
into Hugging Face's ViT), attention rollout with AutoTimm's ``AttentionRollout``.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.special
import timm
import torch
import torchvision
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from cams import CamEngine, get_method
from cams.attention_capture import attention_probabilities
from cams.methods.relevance import attnlrp_relevance
from cams.targets import resolve_targets

CLASSES = [1, 2]
DEPTH, DIM, HEADS = 2, 8, 2


def tiny_timm(size: tuple[int, int], seed: int = 0) -> nn.Module:
    """A 2-block timm ViT with 1-pixel patches (the grid is the image), every parameter redrawn ~ N(0, 0.5²)."""
    model = timm.create_model("vit_tiny_patch16_224", img_size=size, patch_size=1, embed_dim=DIM, depth=DEPTH,
                              num_heads=HEADS, mlp_ratio=2.0, num_classes=3)  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model.double().eval()


def images(size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- the NumPy reference
def _ln(t: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    mean = t.mean(-1, keepdims=True)
    return (t - mean) / np.sqrt(((t - mean) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _softmax(t: np.ndarray) -> np.ndarray:
    e = np.exp(t - t.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_vit(sd: dict[str, np.ndarray], x: np.ndarray, override: dict[int, np.ndarray] | None = None):
    """The tiny timm ViT in NumPy: ``(logits (B, 3), [A_l (B, heads, N, N)])``; ``override[l]`` replaces block l's A."""
    batch = x.shape[0]
    w = sd["patch_embed.proj.weight"][:, :, 0, 0]
    tokens = np.einsum("dc,bchw->bhwd", w, x).reshape(batch, -1, DIM) + sd["patch_embed.proj.bias"]
    t = np.concatenate([np.broadcast_to(sd["cls_token"], (batch, 1, DIM)), tokens], 1) + sd["pos_embed"]
    n, dh = t.shape[1], DIM // HEADS
    attentions = []
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = _ln(t, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        qkv = (h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(batch, n, 3, HEADS, dh)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        a = _softmax(q @ k.swapaxes(-1, -2) * dh**-0.5)
        if override is not None and i in override:
            a = override[i]
        attentions.append(a)
        mixed = (a @ v).transpose(0, 2, 1, 3).reshape(batch, n, DIM)
        t = t + mixed @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = _ln(t, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        z = h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]
        gelu = 0.5 * z * (1 + scipy.special.erf(z / np.sqrt(2)))
        t = t + gelu @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    t = _ln(t, sd["norm.weight"], sd["norm.bias"])
    return t[:, 0] @ sd["head.weight"].T + sd["head.bias"], attentions


def numpy_attention_gradients(sd, x, classes, eps: float = 1e-6) -> list[np.ndarray]:
    """``∂y_c/∂A_l`` of every block by central differences of :func:`numpy_vit`, all entries of an image at once."""
    _, attentions = numpy_vit(sd, x)
    grads = [np.zeros_like(a) for a in attentions]
    for b, c in enumerate(classes):
        for i, a in enumerate(attentions):
            entries = a[b].size
            step = np.eye(entries).reshape(entries, *a[b].shape) * eps
            both = np.concatenate([a[b] + step, a[b] - step])
            logits, _ = numpy_vit(sd, np.repeat(x[b : b + 1], 2 * entries, 0), {i: both})
            grads[i][b] = ((logits[:entries, c] - logits[entries:, c]) / (2 * eps)).reshape(a[b].shape)
    return grads


def numpy_rollout(attentions, fusion: str = "mean", discard: float = 0.0) -> np.ndarray:
    """Abnar & Zuidema's rollout as jacobgil/vit-explain writes it (row normalisation with keepdims)."""
    n = attentions[0].shape[-1]
    result = np.broadcast_to(np.eye(n), (attentions[0].shape[0], n, n))
    for a in attentions:
        fused = {"mean": a.mean(1), "max": a.max(1), "min": a.min(1)}[fusion].copy()
        for b in range(len(fused)):
            flat = fused[b].reshape(-1)
            lowest = np.argsort(flat, kind="stable")[: int(n * n * discard)]
            flat[lowest[lowest != 0]] = 0
        residual = (fused + np.eye(n)) / 2
        result = (residual / residual.sum(-1, keepdims=True)) @ result
    return result


def numpy_gradient_rollout(attentions, grads) -> np.ndarray:
    """Chefer et al.'s ``R ← R + E_h[(∇A ⊙ A)⁺] R``."""
    n = attentions[0].shape[-1]
    result = np.broadcast_to(np.eye(n), (attentions[0].shape[0], n, n))
    for a, g in zip(attentions, grads, strict=True):
        result = result + np.clip(g * a, 0, None).mean(1) @ result
    return result


def scaled(maps: np.ndarray) -> np.ndarray:
    """Each map min-max scaled to [0, 1] exactly (the engine's ``+ 1e-7`` on the range, applied per layer and once
    more after aggregating, moves a map of range 0.04 by up to 5e-6: hence ``ATOL``)."""
    flat = maps.reshape(len(maps), -1)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    return (maps - flat.min(1).reshape(shape)) / np.ptp(flat, 1).reshape(shape)


ATOL = 1e-5


def class_row(relevance: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    return scaled(relevance[:, 0, 1:].reshape(len(relevance), *grid))


@pytest.fixture(scope="module")
def reference():
    size = (4, 3)  # not square: the grid's rows and columns are told apart
    model = tiny_timm(size)
    x = images(size)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    logits, attentions = numpy_vit(sd, x.numpy())
    np.testing.assert_allclose(logits, model(x).detach().numpy(), rtol=1e-10, atol=1e-12)  # the reference is right
    return model, x, sd, attentions, size


@pytest.mark.parametrize(("fusion", "discard"), [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.5)])
def test_rollout_is_the_papers_product_of_fused_attention_plus_identity(reference, fusion, discard):
    model, x, _, attentions, size = reference
    method = get_method("rollout").with_options(head_fusion=fusion, discard_ratio=discard)
    ours = CamEngine(model)(x, methods=method)["rollout"].double().numpy()
    np.testing.assert_allclose(ours, class_row(numpy_rollout(attentions, fusion, discard), size), atol=ATOL)


def test_gradrollout_weighs_attention_by_its_gradient_as_chefer_et_al(reference):
    model, x, sd, attentions, size = reference
    grads = numpy_attention_gradients(sd, x.numpy(), CLASSES)
    ours = CamEngine(model)(x, methods="gradrollout", targets=CLASSES)["gradrollout"].double().numpy()
    np.testing.assert_allclose(ours, class_row(numpy_gradient_rollout(attentions, grads), size), atol=ATOL)


def test_gradrollout_is_class_discriminative_and_rollout_is_not(reference):
    model, x, *_ = reference
    engine = CamEngine(model)
    one = engine(x, methods=["rollout", "gradrollout"], targets=0)
    other = engine(x, methods=["rollout", "gradrollout"], targets=2)
    assert torch.equal(one["rollout"], other["rollout"])
    assert (one["gradrollout"] - other["gradrollout"]).abs().max() > 0.05


# ----------------------------------------------------------------------------- the same weights elsewhere
def copies(model: nn.Module, side: int) -> dict[str, nn.Module]:
    """``model`` (a tiny timm ViT on ``side``² images) with its weights in torchvision's and Hugging Face's ViT."""
    sd = model.state_dict()
    tv = torchvision.models.VisionTransformer(side, 1, DEPTH, HEADS, DIM, 2 * DIM, num_classes=3).double().eval()
    hf = ViTForImageClassification(ViTConfig(image_size=side, patch_size=1, hidden_size=DIM, num_hidden_layers=DEPTH,
                                             num_attention_heads=HEADS, intermediate_size=2 * DIM, num_labels=3,
                                             layer_norm_eps=1e-6, qkv_bias=True)).double().eval()  # fmt: skip
    with torch.no_grad():
        tv.conv_proj.weight.copy_(sd["patch_embed.proj.weight"]), tv.conv_proj.bias.copy_(sd["patch_embed.proj.bias"])
        tv.class_token.copy_(sd["cls_token"]), tv.encoder.pos_embedding.copy_(sd["pos_embed"])
        emb = hf.vit.embeddings
        emb.patch_embeddings.projection.weight.copy_(sd["patch_embed.proj.weight"])
        emb.patch_embeddings.projection.bias.copy_(sd["patch_embed.proj.bias"])
        emb.cls_token.copy_(sd["cls_token"]), emb.position_embeddings.copy_(sd["pos_embed"])
        for i in range(DEPTH):
            p, t, h = f"blocks.{i}.", tv.encoder.layers[i], hf.vit.layers[i]
            pairs = [(t.ln_1, h.layernorm_before, "norm1"), (t.ln_2, h.layernorm_after, "norm2"),
                     (t.self_attention.out_proj, h.attention.o_proj, "attn.proj"), (t.mlp[0], h.mlp.fc1, "mlp.fc1"),
                     (t.mlp[3], h.mlp.fc2, "mlp.fc2")]  # fmt: skip
            for a, b, key in pairs:
                for m in (a, b):
                    m.weight.copy_(sd[p + key + ".weight"]), m.bias.copy_(sd[p + key + ".bias"])
            t.self_attention.in_proj_weight.copy_(sd[p + "attn.qkv.weight"])
            t.self_attention.in_proj_bias.copy_(sd[p + "attn.qkv.bias"])
            for j, proj in enumerate((h.attention.q_proj, h.attention.k_proj, h.attention.v_proj)):
                proj.weight.copy_(sd[p + "attn.qkv.weight"][j * DIM : (j + 1) * DIM])
                proj.bias.copy_(sd[p + "attn.qkv.bias"][j * DIM : (j + 1) * DIM])
        for a in (tv.encoder.ln, hf.vit.layernorm):
            a.weight.copy_(sd["norm.weight"]), a.bias.copy_(sd["norm.bias"])
        for a in (tv.heads.head, hf.classifier):
            a.weight.copy_(sd["head.weight"]), a.bias.copy_(sd["head.bias"])
    return {"timm": model, "torchvision": tv, "hugging face": hf}


@pytest.fixture(scope="module")
def square():
    model = tiny_timm((4, 4), seed=2)
    x = images((4, 4), seed=3)
    models = copies(model, 4)
    logits = [m(x) for m in models.values()]
    for out in logits[1:]:
        torch.testing.assert_close(getattr(out, "logits", out), logits[0], rtol=1e-9, atol=1e-10)
    return models, x


TRANSFORMER_METHODS = ["rollout", "gradrollout", "attnlrp", "vitreciprocam"]


@pytest.mark.parametrize("implementation", ["torchvision", "hugging face"])
def test_every_transformer_method_gives_the_same_maps_on_timm_torchvision_and_hugging_face(square, implementation):
    models, x = square
    expected = CamEngine(models["timm"])(x, methods=TRANSFORMER_METHODS, targets=CLASSES)
    got = CamEngine(models[implementation])(x, methods=TRANSFORMER_METHODS, targets=CLASSES)
    for method in TRANSFORMER_METHODS:
        torch.testing.assert_close(got[method], expected[method], atol=1e-6, rtol=0, msg=method)


def lxt_patches() -> Any:
    """``lxt.efficient.patches`` of lxt 2.1. Its package ``__init__`` imports the patch maps of its language models,
    which need Hugging Face's ``modeling_attn_mask_utils`` (gone in transformers 5): the package is entered
    without running that ``__init__``; the rules and patches modules themselves are imported as they are."""
    import lxt

    if "lxt.efficient" not in sys.modules:
        folder = Path(lxt.__file__).parent / "efficient"
        spec = importlib.util.spec_from_file_location("lxt.efficient", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])  # fmt: skip
        assert spec is not None
        sys.modules["lxt.efficient"] = importlib.util.module_from_spec(spec)
    return importlib.import_module("lxt.efficient.patches")


def lxt_relevance(hf: nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """AttnLRP of lxt 2.1 on Hugging Face's ViT: its LayerNorm, GELU and attention patches, Gradient × Input."""
    import transformers.models.vit.modeling_vit as modeling_vit
    from transformers.activations import GELUActivation

    patches = lxt_patches()

    saved = [(nn.LayerNorm, "forward", nn.LayerNorm.forward), (GELUActivation, "forward", GELUActivation.forward),
             (modeling_vit, "eager_attention_forward", modeling_vit.eager_attention_forward)]  # fmt: skip
    model = copy.deepcopy(hf)
    model.config._attn_implementation = "eager"
    try:
        patches.patch_method(patches.layer_norm_forward, nn.LayerNorm)
        patches.patch_method(patches.non_linear_forward, GELUActivation, keep_original=True)
        modeling_vit.eager_attention_forward = patches.wrap_attention_forward(modeling_vit.eager_attention_forward)
        leaf = x.clone().requires_grad_()
        logits = model(leaf).logits
        logits[torch.arange(len(x)), classes].sum().backward()
        return (leaf * leaf.grad).sum(1).detach()
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        delattr(GELUActivation, "original_forward")


@pytest.mark.parametrize("implementation", ["timm", "torchvision", "hugging face"])
def test_attnlrp_equals_the_authors_lxt_on_the_same_weights(square, implementation):
    """Relative 6e-8 measured: lxt runs Hugging Face's eager attention, whose softmax is taken in float32."""
    models, x = square
    expected = lxt_relevance(models["hugging face"], x, CLASSES)
    target = resolve_targets(CLASSES, len(x), None)
    ours = attnlrp_relevance(models[implementation], x, target)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-6, atol=1e-6)
    assert nn.LayerNorm.forward is not None and not hasattr(nn.LayerNorm, "original_forward")


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_equals_autotimms_attention_rollout(square, fusion):
    """AutoTimm 0.7.37's ``AttentionRollout._compute_rollout`` on the attentions our tap records (its own hooks read
    ``output[1]`` of modules with ``attn_drop``, which timm's ``Attention`` does not return); batch 1, no discard
    (its ``discard_ratio`` zeroes entries below a sorted threshold, class token included, unlike vit-explain's);
    float32, as its identity matrix is."""
    from autotimm.interpretation.attention import AttentionRollout

    model, x = square[0]["timm"], square[1]
    with attention_probabilities(model) as record:
        model(x)
    maps = CamEngine(model)(x, methods=get_method("rollout").with_options(head_fusion=fusion))["rollout"]
    peer = AttentionRollout(copy.deepcopy(model), head_fusion=fusion, discard_ratio=0.0, use_cuda=False)
    for b in range(len(x)):
        peer.attention_matrices = [a[b : b + 1].detach().float() for a in record.probs]  # its identity is float32
        expected = scaled(peer._compute_rollout()[None])[0]
        np.testing.assert_allclose(maps[b].double().numpy(), expected, atol=ATOL)


# ----------------------------------------------------------------------------- Recipro-CAM
class SmallCNN(nn.Module):
    """conv → ReLU (the target layer's output) → conv → ReLU → global average pool → linear: a non-linear suffix."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.suffix = nn.Sequential(nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.suffix(self.features(x)))


@pytest.mark.parametrize("gaussian", [False, True])
def test_reciprocam_is_the_class_score_of_the_feature_map_kept_at_each_position(gaussian):
    torch.manual_seed(0)
    model = SmallCNN().double().eval()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    acts = model.features(x).detach()
    kernel = np.outer([0.25, 0.5, 0.25], [0.25, 0.5, 0.25])
    expected = np.zeros((2, 5, 4))
    for b, c in enumerate(CLASSES):
        for i in range(5):
            for j in range(4):
                mask = np.zeros((7, 6))
                if gaussian:
                    mask[i : i + 3, j : j + 3] = kernel
                else:
                    mask[i + 1, j + 1] = 1.0
                kept = acts[b : b + 1] * torch.from_numpy(mask[1:-1, 1:-1])
                expected[b, i, j] = float(model.fc(model.suffix(kept))[0, c])
    method = get_method("reciprocam").with_options(gaussian=gaussian)
    ours = CamEngine(model, "features")(x, methods=method, targets=CLASSES, batch_size=3)["reciprocam"]
    np.testing.assert_allclose(ours.double().numpy(), scaled(expected), atol=ATOL)


def test_reciprocam_equals_cam_on_a_global_average_pooled_linear_head():
    """With ``GAP → fc`` after the layer, the score with only position k kept is ``w_c · A_k / (h·w) + b_c``: CAM."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 96)
    maps = CamEngine(model, "layer4")(x, methods=["reciprocam", "cam"], targets=CLASSES)
    torch.testing.assert_close(maps["reciprocam"], maps["cam"], atol=1e-5, rtol=0)


def test_vitreciprocam_keeps_the_class_token_and_one_patch_and_runs_the_blocks_after(reference):
    model, x, _, _, size = reference
    tokens = model.blocks[0](model._pos_embed(model.patch_embed(x))).detach()
    expected = np.zeros((2, *size))
    for b, c in enumerate(CLASSES):
        for k in range(size[0] * size[1]):
            kept = torch.zeros_like(tokens[b : b + 1])
            kept[:, 0], kept[:, 1 + k] = tokens[b, 0], tokens[b, 1 + k]
            expected[b].flat[k] = float(model.forward_head(model.norm(model.blocks[1](kept)))[0, c])
    ours = CamEngine(model, "blocks.0")(x, methods="vitreciprocam", targets=CLASSES)["vitreciprocam"]
    np.testing.assert_allclose(ours.double().numpy(), scaled(expected), atol=ATOL)


# ----------------------------------------------------------------------------- promises
@pytest.mark.parametrize(
    ("name", "prefix"), [("deit_tiny_distilled_patch16_224", 2), ("vit_small_patch14_reg4_dinov2", 5)]
)
def test_rollout_reads_the_class_row_without_the_distillation_or_register_tokens(name, prefix):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, img_size=4, patch_size=1, embed_dim=DIM, depth=DEPTH,
                              num_heads=HEADS).double().eval()  # fmt: skip
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with attention_probabilities(model) as record:
        model(x)
    assert model.num_prefix_tokens == prefix and record.probs[0].shape[-1] == prefix + 16
    relevance = numpy_rollout([a.detach().double().numpy() for a in record.probs])
    maps = CamEngine(model)(x, methods="rollout")["rollout"]
    np.testing.assert_allclose(maps.double().numpy(), scaled(relevance[:, 0, prefix:].reshape(2, 4, 4)), atol=ATOL)


def test_every_transformer_method_leaves_the_model_exactly_as_found():
    torch.manual_seed(0)
    models = {
        "timm": timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, drop_rate=0.5),
        "torchvision": torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32, dropout=0.5, num_classes=3),
        "hugging face": ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=16,
                                                            num_hidden_layers=2, num_attention_heads=2,
                                                            intermediate_size=32, num_labels=3,
                                                            hidden_dropout_prob=0.5)),
    }  # fmt: skip
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name, model in models.items():
        model.train()
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.25)
        before = copy.deepcopy(model.state_dict())
        attrs = [(m, dict(vars(m))) for m in model.modules()]
        config = getattr(model, "config", None)
        implementation = config._attn_implementation if config is not None else None
        rng = torch.random.get_rng_state()
        CamEngine(model)(x, methods=[*TRANSFORMER_METHODS, "gradcam"])
        assert torch.equal(torch.random.get_rng_state(), rng), name
        assert all(m.training for m in model.modules()), name
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), name
        assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters()), name
        for module, saved in attrs:
            assert not module._forward_hooks and not module._forward_pre_hooks, name
            assert {k: v for k, v in vars(module).items() if not isinstance(v, dict)} == {
                k: v for k, v in saved.items() if not isinstance(v, dict)
            }, (name, type(module).__name__)
        if config is not None:
            assert config._attn_implementation == implementation
        assert nn.MultiheadAttention.forward.__module__ == "torch.nn.modules.activation"


def test_rollout_and_the_recipro_methods_work_in_inference_mode_and_on_inference_tensors():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32).eval()
    cnn = torchvision.models.resnet18(num_classes=3).eval()
    with torch.inference_mode():
        x = torch.randn(2, 3, 32, 32)
        maps = CamEngine(vit)(x, methods=["rollout", "gradrollout", "vitreciprocam", "attnlrp"])
        recipro = CamEngine(cnn)(x, methods="reciprocam")["reciprocam"]
    assert all(m.shape == (2, 32, 32) and bool(torch.isfinite(m).all()) for m in maps.values())
    assert recipro.shape == (2, 32, 32) and float(recipro.amax()) == pytest.approx(1.0, abs=1e-5)


def test_rollout_takes_one_forward_and_reciprocam_forwards_only_after_its_layer():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32).eval()
    rows: list[int] = []
    handle = vit.patch_embed.register_forward_hook(lambda m, a, o: rows.append(len(a[0])))
    try:
        CamEngine(vit)(torch.randn(3, 3, 32, 32), methods=["rollout", "gradrollout"])
        assert rows == [3]
        rows.clear()
        CamEngine(vit, "blocks.10")(torch.randn(2, 3, 32, 32), methods="vitreciprocam", batch_size=16)
    finally:
        handle.remove()
    assert rows == [2, 1, 1]  # the shared forward, then one image per chunk of 16 positions: the blocks before run once


@pytest.mark.parametrize("method", ["rollout", "gradrollout", "attnlrp"])
def test_an_attention_method_on_a_cnn_names_the_methods_that_fit(method):
    model = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(ValueError, match=rf"{method} .*ResNet has no self-attention.*for convolutional networks use"):
        CamEngine(model)(torch.randn(1, 3, 32, 32), methods=method)


def test_the_recipro_methods_refuse_the_other_layout_and_say_which_to_use():
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32).eval()
    with pytest.raises(ValueError, match=r"reciprocam masks positions of a feature map.*use 'vitreciprocam'"):
        CamEngine(vit)(torch.randn(1, 3, 32, 32), methods="reciprocam")
    cnn = torchvision.models.resnet18(num_classes=3).eval()
    with pytest.raises(ValueError, match=r"vitreciprocam masks the tokens.*use 'reciprocam'"):
        CamEngine(cnn)(torch.randn(1, 3, 32, 32), methods="vitreciprocam")


def test_rollout_on_windowed_attention_says_why_it_cannot_multiply_the_matrices():
    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=3, img_size=56, embed_dim=24,
                             depths=(1, 1), num_heads=(1, 2), window_size=7).eval()  # fmt: skip
    with pytest.raises(ValueError, match=r"rollout multiplies attention matrices of one size.*windowed or pooled"):
        CamEngine(swin)(torch.randn(1, 3, 56, 56), methods="rollout")


def test_attnlrp_refuses_an_attention_whose_projections_are_not_modules():
    beit = timm.create_model("beit_base_patch16_224", num_classes=3, img_size=32, embed_dim=16, depth=1,
                             num_heads=2).eval()  # fmt: skip
    with pytest.raises(ValueError, match=r"attnlrp: the attention 'blocks.0.attn' computes its projections without"):
        CamEngine(beit)(torch.randn(1, 3, 32, 32), methods="attnlrp")


def test_rollout_options_are_checked():
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32).eval()
    with pytest.raises(ValueError, match=r"head_fusion='median'; expected 'mean', 'max' or 'min'"):
        CamEngine(vit)(torch.randn(1, 3, 32, 32), methods=get_method("rollout").with_options(head_fusion="median"))
    with pytest.raises(ValueError, match=r"discard_ratio=1.0; expected a value in \[0, 1\)"):
        CamEngine(vit)(torch.randn(1, 3, 32, 32), methods=get_method("rollout").with_options(discard_ratio=1.0))


def test_a_zero_initialised_head_is_a_warning_not_a_silent_empty_map():
    vit = torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=3).eval()  # head starts at zero
    x = torch.randn(1, 3, 32, 32)
    for method in ("gradrollout", "attnlrp", "vitreciprocam"):
        with pytest.warns(RuntimeWarning, match=rf"{method}: .*image\(s\) \[0\]"):
            CamEngine(vit)(x, methods=method)
