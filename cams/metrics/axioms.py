r"""XGrad-CAM's axioms: does a CAM's channel weighting account for the class score?

Fu, Hu, Dong, Guo, Gao and Ji, *Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of
CNNs*, BMVC 2020, https://arxiv.org/abs/2008.02312, section 3 (and ``Proof_verify.py`` in the authors'
repository). For a target layer with feature maps :math:`A_k` and a method's weighted activations
:math:`\alpha_k A_k` (what :data:`cams.METHODS` ``[name].weigh`` returns, before the channel sum), with
:math:`S` the class score (the logit):

- **Conservation**: the map's total should be the score, :math:`\sum_k \sum_{x,y} \alpha_k A_k(x, y) = S`.
  Measured as the relative error :math:`|S - \sum_{k,x,y} \alpha_k A_k| / |S|` (0: the axiom holds).
- **Sensitivity**: each channel's share of the map should be the score it carries,
  :math:`\sum_{x,y} \alpha_k A_k(x, y) = S - S(A \setminus A_k)`, where :math:`A \setminus A_k` sets
  channel :math:`k` to zero (Ablation-CAM's forwards give these drops). Measured as the relative L1
  error :math:`\sum_k |\Delta_k - c_k| / \sum_k |\Delta_k|` with :math:`c_k` the contribution and
  :math:`\Delta_k` the drop (0: the axiom holds).

For a ReLU network whose head after the target layer is global average pooling and a linear layer
*without bias*, :math:`S = \sum_k w_k \operatorname{mean}(A_k)` is linear in the activations, and Grad-CAM
and XGrad-CAM satisfy both axioms exactly (XGrad-CAM's are the weights the axioms ask for in general).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cams.hooks import capture, grad_capable, prepare
from cams.layer_choice import find_layer
from cams.methods import get_method
from cams.methods.perturbation import ablated_scores
from cams.passes import Pass, score_rows
from cams.state import frozen_model, model_device
from cams.targets import Targets, resolve_targets

__all__ = ["axioms", "conservation", "sensitivity"]


def _weighted(weighted: Tensor) -> Tensor:
    if not isinstance(weighted, Tensor) or weighted.dim() < 3:
        shape = tuple(weighted.shape) if isinstance(weighted, Tensor) else type(weighted).__name__
        raise ValueError(f"weighted must be weighted activations (B, C, *spatial), got {shape}")
    return weighted.detach().double()


def conservation(weighted: Tensor, scores: Tensor) -> Tensor:
    r"""Relative conservation error :math:`|S - \sum_{k,x,y} \alpha_k A_k| / |S|` of each image.

    Args:
        weighted: a method's weighted activations :math:`\alpha_k A_k`, ``(B, C, *spatial)``.
        scores: the class scores :math:`S` (logits), ``(B,)``.

    Returns:
        ``(B,)`` float32, ``>= 0``; ``nan`` where :math:`S = 0`.

    Example:
        >>> weighted = torch.ones(2, 3, 2, 2)                 # the map sums to 12
        >>> conservation(weighted, torch.tensor([12.0, 10.0]))
        tensor([0.0000, 0.2000])
    """
    weighted = _weighted(weighted)
    scores = torch.as_tensor(scores, device=weighted.device).double().reshape(-1)
    if scores.shape[0] != weighted.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} values for {weighted.shape[0]} images; pass one per image")
    total = weighted.flatten(1).sum(dim=1)
    error = (scores - total).abs() / scores.abs()
    return torch.where(scores == 0, torch.nan, error).float()


def sensitivity(weighted: Tensor, drops: Tensor) -> Tensor:
    r"""Relative sensitivity error :math:`\sum_k |\Delta_k - c_k| / \sum_k |\Delta_k|` of each image.

    Args:
        weighted: a method's weighted activations, ``(B, C, *spatial)``; :math:`c_k` is the sum of
            channel :math:`k`.
        drops: :math:`\Delta_k = S - S(A \setminus A_k)`, the score lost when channel :math:`k` is set to
            zero, ``(B, C)`` (see :func:`axioms`).

    Returns:
        ``(B,)`` float32, ``>= 0``; ``nan`` where no channel changes the score.

    Example:
        >>> weighted = torch.tensor([[[[1.0]], [[2.0]]]])     # contributions 1 and 2
        >>> sensitivity(weighted, torch.tensor([[1.0, 2.0]])), sensitivity(weighted, torch.tensor([[2.0, 2.0]]))
        (tensor([0.]), tensor([0.2500]))
    """
    weighted = _weighted(weighted)
    drops = torch.as_tensor(drops, device=weighted.device).double()
    if drops.shape != weighted.shape[:2]:
        raise ValueError(f"drops must be (B, C) = {tuple(weighted.shape[:2])}, got {tuple(drops.shape)}")
    contributions = weighted.flatten(2).sum(dim=2)
    scale = drops.abs().sum(dim=1)
    error = (drops - contributions).abs().sum(dim=1) / scale
    return torch.where(scale == 0, torch.nan, error).float()


def axioms(
    model: nn.Module,
    x: Tensor,
    target_layer: str | nn.Module,
    method: str = "xgradcam",
    targets: Targets = None,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    """Both axioms for ``method`` at ``target_layer``: one forward, its backward, and one per channel removed.

    The class score is the raw output (the logit), as in the paper. The weighted activations come from
    the method's own weighing function with the same inputs the engine gives it; the drops from
    forwards with each channel of the layer set to zero (Ablation-CAM's batched forwards of the layers
    after the target).

    Args:
        model: the classifier; run in eval mode and left as found (modes, ``.grad``, hooks, global RNG).
        x: images ``(B, C, H, W)`` as the model takes them.
        target_layer: the layer (a module or a dotted name) whose output is ``(B, C, h, w)`` (volumes:
            ``(B, C, d, h, w)``).
        method: a method that weighs channels and sums them (not Eigen-CAM's projection).
        targets: as in :class:`cams.CamEngine` (``None``: each image's predicted class).
        batch_size: ablated copies per forward (default: up to 256 MiB of them).

    Returns:
        ``{"conservation": (B,), "sensitivity": (B,)}`` float32 relative errors on ``x``'s device.

    Raises:
        ValueError: an unknown method (with close matches), a projecting method, or an unknown layer.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 3, bias=False))
        >>> result = axioms(net, torch.randn(2, 1, 8, 8), "1", method="gradcam")
        >>> bool(result["conservation"].max() < 1e-5), bool(result["sensitivity"].max() < 1e-5)
        (True, True)
    """
    spec = get_method(method, argument="method")
    if spec.project:
        raise ValueError(
            f"method={method!r} projects on a principal component instead of summing weighted channels; the "
            "axioms need a channel-sum method such as 'gradcam' or 'xgradcam'"
        )
    if isinstance(target_layer, str):
        name, module = target_layer, find_layer(model, target_layer)
    else:
        name = next((n for n, m in model.named_modules() if m is target_layer), type(target_layer).__name__)
        module = target_layer
    out_device = x.device
    with grad_capable(), frozen_model(model):
        x = prepare(x, model_device(model))
        rows = torch.arange(x.shape[0], device=x.device)
        with capture([module], [name], grad=spec.needs_grads) as records, torch.no_grad():
            output = model(x)
        target = resolve_targets(targets, x.shape[0], output)
        score = score_rows(target, output, rows, x.shape[0])
        grads = None
        if spec.needs_grads:
            (grad,) = torch.autograd.grad(score.sum(), records.outputs, allow_unused=True)
            grads = [torch.zeros_like(records.outputs[0]) if grad is None else grad.float()]
        raw = records.values[0].detach()
        if raw.dim() != x.dim():
            raise ValueError(
                f"target_layer={name!r} gives {tuple(raw.shape)}; the axioms need feature maps (B, C, *spatial) "
                f"like the input {tuple(x.shape)}"
            )
        scores = score.detach().float()
        state = Pass(model, x, [(name, module)], [raw], [raw.float()], grads, target, scores, batch_size,
                     inputs={i.name: i for i in spec.declared_inputs})  # fmt: skip
        weighted = spec.weigh(*(state.get(input_name, 0) for input_name in spec.inputs))
        if batch_size is None:
            batch_size = max(1, min(raw.shape[1], (256 << 20) // (raw[0].numel() * raw.element_size())))
        removed = ablated_scores(model, module, x, raw, target, batch_size, fill=0.0)
        drops = scores[:, None] - removed
    return {
        "conservation": conservation(weighted, scores).to(out_device),
        "sensitivity": sensitivity(weighted, drops).to(out_device),
    }
