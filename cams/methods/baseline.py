"""Baselines: maps that do not explain the model, to calibrate metrics against.

RandomCAM weighs the channels at random; the Sobel map is the edges of the input image. A faithfulness
or localisation score is only worth what it beats these by. RandomCAM's ``random_weights`` input is declared
here (:data:`RANDOM_WEIGHTS`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cams.ops import one_thread
from cams.passes import Input, Pass

__all__ = ["RANDOM_WEIGHTS", "random_cam", "sobel"]

#: ITU-R BT.601 luma, as OpenCV's ``COLOR_RGB2GRAY``
_LUMA = (0.299, 0.587, 0.114)


def random_cam(acts: torch.Tensor, random_weights: torch.Tensor) -> torch.Tensor:
    """RandomCAM (pytorch-grad-cam's baseline): ``α_k ~ U(-1, 1)`` per image and channel;  map ``= ReLU(Σ_k α_k A_k)``.

    ``random_weights`` (B, C) are drawn from the call's seeded generator, never from the global RNG.

    Example:
        >>> random_cam(torch.ones(1, 2, 1, 1), torch.tensor([[0.5, -0.25]])).flatten().tolist()
        [0.5, -0.25]
    """
    return random_weights.view(*random_weights.shape, *(1,) * (acts.dim() - 2)) * acts


def sobel(image: torch.Tensor) -> torch.Tensor:
    """Sobel edge map of the input (pytorch-grad-cam's ``sobel_cam``) → (B, H, W).

    The image (B, C, H, W) is made grey (BT.601 luma for 3 channels, the channel mean otherwise), and
    ``map = ½|G_x| + ½|G_y|`` with the 3×3 Sobel kernels and reflected borders (OpenCV's
    ``BORDER_REFLECT_101``). The reference works on 8-bit images and rounds and saturates at 255;
    this map is neither rounded nor saturated. Computed in float32 as the separable kernels are,
    ``G_x = [1, 2, 1]ᵀ ∗ [−1, 0, 1]`` and ``G_y = [−1, 0, 1]ᵀ ∗ [1, 2, 1]``: a handful of shifted sums on the
    grey image (a 2-output convolution of a 3- or 1-channel image is several times slower on the CPU). On the
    CPU they run on one thread, restored afterwards: each is a memory-bound pass over a few MB, for which
    waking the intra-op thread pool costs more than it saves (on a loaded 2-core machine, 100 times more).

    Example:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> x[..., 2:] = 1.0
        >>> sobel(x)[0, 0].tolist()
        [0.0, 2.0, 2.0, 0.0]
    """
    if image.dim() != 4:
        raise ValueError(f"sobel: the Sobel map needs images (B, C, H, W); got shape {tuple(image.shape)}")
    if image.shape[-1] < 2 or image.shape[-2] < 2:
        raise ValueError(f"sobel: the image must be at least 2×2; got {tuple(image.shape[-2:])}")
    with one_thread(image.device):
        return _sobel(image.float())


def _sobel(image: torch.Tensor) -> torch.Tensor:
    """:func:`sobel`'s arithmetic on a float32 image (B, C, H, W) → (B, H, W)."""
    if image.shape[1] == 3:  # the ½ of both terms folded into the grey image
        red, green, blue = image.unbind(1)
        grey = torch.mul(red, 0.5 * _LUMA[0]).add_(green, alpha=0.5 * _LUMA[1]).add_(blue, alpha=0.5 * _LUMA[2])
    else:
        grey = image.mean(dim=1).mul_(0.5)
    padded = F.pad(grey[:, None], (1, 1, 1, 1), mode="reflect")[:, 0]  # (B, H + 2, W + 2)
    across = padded[..., 2:] - padded[..., :-2]  # [−1, 0, 1] along the rows: (B, H + 2, W)
    along = torch.add(padded[..., :-2], padded[..., 2:]).add_(padded[..., 1:-1], alpha=2)  # [1, 2, 1]
    grad_x = torch.add(across[:, :-2], across[:, 2:]).add_(across[:, 1:-1], alpha=2)
    grad_y = along[:, 2:] - along[:, :-2]
    return grad_x.abs_().add_(grad_y.abs_())


def _random_weights(p: Pass, i: int) -> torch.Tensor:
    """RandomCAM: ``U(-1, 1)`` weights per image and channel → (B, C), from the call's seeded generator."""
    shape = p.acts[i].shape[:2]
    return torch.rand(shape, generator=p.generator("random_weights", i), device=p.x.device) * 2 - 1


#: RandomCAM: ``U(-1, 1)`` weights per image and channel ``(B, C)``, from the call's seeded generator
RANDOM_WEIGHTS = Input("random_weights", _random_weights, needs_target=False, random=True)
