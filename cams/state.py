"""Leave the model as found: modes, RNG and grad mode are restored after every CAM call."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["autograd_kernels", "eager", "frozen_model", "model_device", "rng_guard"]


@contextlib.contextmanager
def rng_guard(device: torch.device | None = None) -> Iterator[None]:
    """Restore the global CPU (and, if used, CUDA) RNG state on exit.

    A CAM run must not draw on the random stream the training loop uses (dropout masks,
    augmentations, samplers). Modules that sample (dropout in ``train`` mode) are switched to
    ``eval`` by :func:`frozen_model`, so this is a second line of defence.

    Example:
        >>> import torch
        >>> before = torch.random.get_rng_state()
        >>> with rng_guard():
        ...     _ = torch.rand(3)
        >>> bool(torch.equal(before, torch.random.get_rng_state()))
        True
    """
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices, enabled=True, device_type="cuda"):
        yield


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run ``torch.compile``'d models and functions eagerly (their original forward) for the duration.

    A compiled graph does not call the hooks that CAMs register after compilation, and every new batch
    size of the perturbation passes would recompile it. ``torch.compiler.set_stance("force_eager")``
    (torch >= 2.6) runs the original Python code instead, with the same parameters, so the maps equal
    those of the uncompiled model; the compiled code and its caches are untouched and used again when
    the block ends. On older torch this is a no-op (hooks that do not fire are then reported as errors).

    Example:
        >>> import torch
        >>> f = torch.compile(lambda t: t + 1)
        >>> with eager():
        ...     f(torch.zeros(1)).tolist()
        [1.0]
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield


@contextlib.contextmanager
def autograd_kernels() -> Iterator[None]:
    """The forwards of a call run the kernels autograd runs: ``nn.MultiheadAttention``'s and
    ``nn.TransformerEncoderLayer``'s fused inference path (taken under ``no_grad``, which the layers before the
    first target layer run in) is switched off for the call, and restored.

    That path computes the same function with other rounding (a few 1e-6 on torchvision's ViT-B/16 at its last
    block); XGrad-CAM's weights divide by channel sums that nearly cancel on signed layers (condition number
    ~1000 at a LayerNorm output) and turn it into 1e-4 per pixel. With it off, the target layer's activations are
    those of a training-mode forward (and of pytorch-grad-cam's, which runs with autograd on): bitwise equal.
    """
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


@contextlib.contextmanager
def frozen_model(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in ``eval`` mode and restore every module's ``training`` flag afterwards.

    BatchNorm running statistics are not updated in ``eval`` mode, dropout does not sample,
    the global RNG is restored on exit (also when the body raises), and ``torch.compile``'d code runs
    eagerly (:func:`eager`), so hooks fire and the maps equal the uncompiled model's. Modules sharded with
    FSDP2 (``torch.distributed.fsdp.fully_shard``) whose parameters were sharded on entry are resharded on
    exit: a forward without a backward (Eigen-CAM, Score-CAM's masked forwards) would otherwise leave the
    root's gathered parameters in memory.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with frozen_model(net):
        ...     net[1].training
        False
        >>> net[1].training
        True
    """
    flags = [(module, module.training) for module in model.modules()]
    device = model_device(model)
    sharded = _sharded_fsdp_modules(model)
    try:
        with rng_guard(device), eager():
            model.eval()
            yield model
    finally:
        for module, flag in flags:
            module.training = flag
        for module in sharded:
            module.reshard()  # type: ignore[operator]


def _sharded_fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The FSDP2 modules of ``model`` whose own parameters are sharded (``DTensor``) now."""
    if "torch.distributed.fsdp" not in sys.modules:  # nothing was sharded in this process: skip the import
        return []
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    found = []
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        nested = [n for n, m in module.named_modules() if m is not module and isinstance(m, FSDPModule)]
        own = [
            p for n, p in module.named_parameters()
            if not any(n == inner or n.startswith(inner + ".") for inner in nested)
        ]  # fmt: skip
        if own and all(isinstance(p, DTensor) for p in own):
            found.append(module)
    return found


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
