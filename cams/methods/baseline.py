"""Baselines: maps that do not explain the model, to calibrate metrics against.

RandomCAM weighs the channels at random; the Sobel map is the edges of the input image. A faithfulness
or localisation score is only worth what it beats these by. RandomCAM's ``random_weights`` input is declared
here (:data:`RANDOM_WEIGHTS`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    this map is neither rounded nor saturated.

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
    image = image.float()
    channels = image.shape[1]
    luma = torch.tensor(_LUMA) if channels == 3 else torch.full((channels,), 1.0 / channels)
    smooth = torch.tensor([1.0, 2.0, 1.0])
    diff = torch.tensor([-1.0, 0.0, 1.0])
    sobel_xy = torch.stack([torch.outer(smooth, diff), torch.outer(diff, smooth)])  # (2, 3, 3)
    # grey conversion, both Sobel kernels and the ½ in one convolution: weight[o, c] = ½ luma_c · K_o
    weight = (0.5 * sobel_xy[:, None] * luma[None, :, None, None]).to(image.device)
    return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="reflect"), weight).abs().sum(dim=1)


def _random_weights(p: Pass, i: int) -> torch.Tensor:
    """RandomCAM: ``U(-1, 1)`` weights per image and channel → (B, C), from the call's seeded generator."""
    shape = p.acts[i].shape[:2]
    return torch.rand(shape, generator=p.generator("random_weights", i), device=p.x.device) * 2 - 1


#: RandomCAM: ``U(-1, 1)`` weights per image and channel ``(B, C)``, from the call's seeded generator
RANDOM_WEIGHTS = Input("random_weights", _random_weights, needs_target=False, random=True)
