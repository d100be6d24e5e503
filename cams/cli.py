"""``python -m cams``: Grad-CAM, Grad-CAM++ and guided backprop images for a torchvision network.

The command of the Grad-CAM.pytorch / pytorch-grad-cam READMEs, on this package's engine::

    python -m cams --image-path examples/pic1.jpg --network densenet121 \\
        --weight-path densenet121.pth --output-dir results

For one image and one network it writes six JPEGs into ``--output-dir``::

    <image>-<network>-heatmap.jpg     colour map of --method (default gradcam)
    <image>-<network>-cam.jpg         that map over the image
    <image>-<network>-heatmap++.jpg   colour map of gradcam++
    <image>-<network>-cam++.jpg       gradcam++ over the image
    <image>-<network>-gb.jpg          guided backpropagation
    <image>-<network>-cam_gb.jpg      guided Grad-CAM (guided backprop x the --method map)

``<image>`` is the image file's stem. Networks are built with ``weights=None`` (nothing is
downloaded); ``--weight-path`` loads a local ``state_dict`` (a torchvision ``.pth`` file or your own
fine-tuned one: the class count is read from its classifier). Without it the network is untrained
and the command says so. Images are resized to 224 x 224 (299 x 299 for inception_v3) and
normalised with the ImageNet mean and std.

Bad input (missing or unreadable image or weights, unknown network/method/layer, class id out of
range, CUDA asked for but absent) prints one line on stderr and exits with code 2; the output
directory is only touched once every image has been computed, and then all files are moved in together.

File reading and writing and the one-line errors come from :mod:`cams.io`.
"""


from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cams.engine import CamEngine
from cams.guided import guided_backprop, guided_gradcam
from cams.io import (
    InputError,
    OneLineParser,
    ProgressPrinter,
    check_output_dir,
    class_scores,
    close_matches,
    encode_image,
    exit_code,
    first_line,
    load_state_dict,
    read_image,
    write_files,
)
from cams.layer_choice import find_layer
from cams.methods import METHODS, get_method
from cams.overlay import colorize, deprocess_guided, overlay, to_uint8

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NETWORKS",
    "NetworkSpec",
    "build_network",
    "classification_networks",
    "load_input",
    "main",
    "network_spec",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NetworkSpec:
    """How ``python -m cams`` builds and explains one torchvision network.

    Attributes:
        name: torchvision model name (``torchvision.models.get_model(name)``).
        default_layer: dotted name of the layer explained when ``--layer-name`` is not given; ``None``:
            the engine's automatic choice (the last layer with a feature-map output).
        input_size: side of the square input the network expects (its torchvision weights' crop size).
        classifier: ``state_dict`` key of the last layer's weight, whose first dimension is the class
            count; ``None``: found by shape (the tensors with 1,000 rows in the ImageNet model).
        kwargs: extra constructor arguments.

    Example:
        >>> NETWORKS["resnet50"].default_layer, NETWORKS["inception_v3"].input_size
        ('layer4', 299)
        >>> network_spec("resnet18").default_layer is None, network_spec("efficientnet_b3").input_size
        (True, 300)
    """

    name: str
    default_layer: str | None
    input_size: int
    classifier: str | None
    kwargs: Mapping[str, Any] = field(default_factory=dict)


NETWORKS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        NetworkSpec("vgg16", "features", 224, "classifier.6.weight"),
        NetworkSpec("vgg19", "features", 224, "classifier.6.weight"),
        NetworkSpec("resnet50", "layer4", 224, "fc.weight"),
        NetworkSpec("resnet101", "layer4", 224, "fc.weight"),
        NetworkSpec("densenet121", "features", 224, "classifier.weight"),
        # transform_input=True is what torchvision sets for its ImageNet weights: the network itself maps
        # ImageNet-normalised input to the [-1, 1] scaling those weights were trained on.
        NetworkSpec("inception_v3", "Mixed_7c", 299, "fc.weight", {"transform_input": True, "init_weights": True}),
    )
}
"""The Grad-CAM.pytorch seed's six networks and their documented layers; :func:`network_spec` covers the rest."""

_AUX_HEADS = {"inception_v3": "AuxLogits.", "googlenet": "aux1."}


def classification_networks() -> list[str]:
    """Every torchvision classification model name (``torchvision.models.list_models(module=torchvision.models)``).

    Example:
        >>> {"resnet18", "vit_b_16", "vgg16"} <= set(classification_networks())
        True
    """
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def network_spec(name: str) -> NetworkSpec:
    """The seed's spec for its six networks, else one for any torchvision classification model.

    Other networks are explained at the engine's automatic layer, at the input size their torchvision
    weights were trained at (read from the weights' metadata: nothing is downloaded).

    Raises:
        InputError: ``name`` is not a torchvision classification model (close matches named).
    """
    if name in NETWORKS:
        return NETWORKS[name]
    names = classification_networks()
    if name not in names:
        raise InputError(
            f"--network {name!r} is not supported{close_matches(name, names)}; choose a torchvision "
            f"classification model ({len(names)}: torchvision.models.list_models(module=torchvision.models)), "
            f"e.g. {', '.join(NETWORKS)}"
        )
    from torchvision import models

    try:
        size = int(models.get_model_weights(name).DEFAULT.transforms().crop_size[0])
    except (AttributeError, IndexError, TypeError, ValueError):
        size = 224
    kwargs = {"transform_input": True, "init_weights": True} if name == "googlenet" else {}
    return NetworkSpec(name, None, size, None, kwargs)


# --------------------------------------------------------------------------- networks


def build_network(
    name: str, state_dict: Mapping[str, torch.Tensor] | None = None
) -> tuple[nn.Module, NetworkSpec, int]:
    """Build ``torchvision.models.<name>(weights=None)`` and load ``state_dict`` into it.

    The class count is read from the ``state_dict``'s classifier weight (1000 without one);
    an auxiliary head (inception_v3, googlenet) is kept only if the ``state_dict`` has it.

    Returns:
        ``(model in eval mode, its spec, number of classes)``.

    Raises:
        InputError: unknown network (close matches named) or a ``state_dict`` that does not fit.

    Example:
        >>> net, spec, classes = build_network("resnet50")
        >>> spec.default_layer, classes
        ('layer4', 1000)
    """
    from torchvision import models

    spec = network_spec(name)
    kwargs: dict[str, Any] = dict(spec.kwargs)
    num_classes = 1000
    if state_dict is not None:
        num_classes = _class_count(spec, state_dict)
        if name in _AUX_HEADS:
            kwargs["aux_logits"] = any(k.startswith(_AUX_HEADS[name]) for k in state_dict)
    elif name == "googlenet":
        kwargs["aux_logits"] = False
    model: nn.Module = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            missing = sorted(set(model.state_dict()) - set(state_dict))
            unexpected = sorted(set(state_dict) - set(model.state_dict()))
            detail = (
                f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
                if missing or unexpected
                else first_line(exc)
            )
            raise InputError(f"--weight-path does not fit {name}: {detail}") from exc
    return model.eval(), spec, num_classes


def _class_count(spec: NetworkSpec, state_dict: Mapping[str, torch.Tensor]) -> int:
    """The class count of a ``state_dict`` for ``spec``'s network: its classifier's first dimension."""
    if spec.classifier is not None:
        keys = [spec.classifier]
    else:  # the ImageNet model's tensors with 1,000 rows are the classifier's (weight, bias)
        from torchvision import models

        with torch.device("meta"):
            reference = models.get_model(spec.name, weights=None, **spec.kwargs).state_dict()
        keys = [k for k, v in reference.items() if v.dim() >= 1 and v.shape[0] == 1000 and not k.startswith("aux")]
    weight = next((state_dict[k] for k in reversed(keys) if k in state_dict), None)
    if weight is None:
        raise InputError(
            f"--weight-path has no {keys[-1] if keys else 'classifier'!r} tensor: it is not a {spec.name} state_dict"
        )
    return int(weight.shape[0])


def load_input(path: str | os.PathLike[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image file → ``(x, rgb)``: ``x`` (1, 3, size, size) ImageNet-normalised, ``rgb`` the same in [0, 1].

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> f = Path(tempfile.mkdtemp()) / "gray.png"
        >>> Image.new("L", (40, 30)).save(f)
        >>> x, rgb = load_input(f, 224)
        >>> tuple(x.shape), float(rgb.max())
        ((1, 3, 224, 224), 0.0)
    """
    from PIL import Image

    image = read_image(path, what="--image-path").convert("RGB").resize((size, size), Image.BILINEAR)
    rgb = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std, rgb


# --------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m cams`` parser: the seeds' flags, ``--aug_smooth`` and ``--aug-smooth`` alike."""
    parser = OneLineParser(
        prog="python -m cams",
        description="Grad-CAM, Grad-CAM++, guided backprop and guided Grad-CAM images of a torchvision net.",
        epilog="Writes <image>-<network>-{heatmap,cam,heatmap++,cam++,gb,cam_gb}.jpg into --output-dir.",
    )
    parser.add_argument("--image-path", required=True, help="image file to explain")
    parser.add_argument(
        "--method",
        default="gradcam",
        help=f"CAM method of heatmap/cam/cam_gb: one of {', '.join(METHODS)} (default gradcam)",
    )
    parser.add_argument(
        "--network",
        default="resnet50",
        help="any torchvision classification model, e.g. resnet18, efficientnet_b0, convnext_tiny (default "
        f"resnet50; {', '.join(NETWORKS)} are explained at the seed's layers, others at the automatic one)",
    )
    parser.add_argument("--weight-path", help="local state_dict file; without it the network is untrained")
    parser.add_argument(
        "--layer-name",
        help="dotted layer name (default: the seed's layer for its six networks, else the last layer with a "
        "feature-map output)",
    )
    parser.add_argument("--class-id", type=int, help="class to explain (default: the predicted class)")
    parser.add_argument("--output-dir", default="results", help="folder for the images (default results)")
    parser.add_argument(
        "--aug_smooth",
        "--aug-smooth",
        dest="aug_smooth",
        action="store_true",
        help="test-time augmentation smoothing (6 passes)",
    )
    parser.add_argument(
        "--eigen_smooth",
        "--eigen-smooth",
        dest="eigen_smooth",
        action="store_true",
        help="first principal component of activations x weights",
    )
    parser.add_argument("--use-cuda", "--use_cuda", dest="use_cuda", action="store_true", help="run on CUDA")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m cams`` with ``argv`` (default ``sys.argv[1:]``) → exit code (0, or 2 on bad input).

    Example:
        >>> main(["--image-path", "/nonexistent.jpg"])
        2
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (one line on stderr) and --help
        return exit_code(exc)
    try:
        _, lines = _run(args, say=print)
    except (InputError, FileNotFoundError) as exc:
        print(f"python -m cams: error: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


def _run(args: argparse.Namespace, say: Callable[[str], None]) -> tuple[list[Path], list[str]]:
    """Validate everything, compute every image, then write them all. Returns (files, report lines)."""
    # 1. Validate the cheap things first, so a typo costs no network construction.
    spec = network_spec(args.network)  # raises the InputError with close matches
    try:
        method = get_method(args.method).name
    except ValueError as exc:
        raise InputError(f"--method: {exc}") from exc
    out_dir = check_output_dir(args.output_dir)
    if args.use_cuda and not torch.cuda.is_available():
        raise InputError("--use-cuda: CUDA is not available on this machine; leave the flag out to run on the CPU")
    device = torch.device("cuda" if args.use_cuda else "cpu")
    x, rgb = load_input(args.image_path, spec.input_size)
    state_dict = load_state_dict(args.weight_path) if args.weight_path else None

    # 2. The network, its layer, the class.
    model, spec, num_classes = build_network(args.network, state_dict)
    layer = args.layer_name or spec.default_layer
    if layer is not None:
        try:
            find_layer(model, layer)
        except ValueError as exc:
            raise InputError(f"--layer-name: {exc}") from exc
    if args.class_id is not None and not 0 <= args.class_id < num_classes:
        raise InputError(
            f"--class-id {args.class_id} is out of range: {args.network} has {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
    if state_dict is None:
        say(
            f"note: no --weight-path given, so {args.network} is randomly initialised (untrained): "
            "its maps show no learned evidence"
        )

    # 3. Compute everything.
    model.to(device)
    x = x.to(device)
    engine = CamEngine(model, target_layers=layer)
    methods = tuple(dict.fromkeys((method, "gradcam++")))
    maps = engine(
        x,
        methods=methods,
        targets=args.class_id,
        aug_smooth=args.aug_smooth,
        eigen_smooth=args.eigen_smooth,
        progress=ProgressPrinter(),  # Score-CAM and Ablation-CAM report how far they are, on stderr
    )
    classes = maps.classes
    gb = guided_backprop(model, x, targets=classes)
    cam_gb = guided_gradcam(gb, maps[method])
    rgb = rgb.to(device)
    images = {
        "heatmap": colorize(maps[method]),
        "cam": overlay(rgb, maps[method]),
        "heatmap++": colorize(maps["gradcam++"]),
        "cam++": overlay(rgb, maps["gradcam++"]),
        "gb": deprocess_guided(gb),
        "cam_gb": deprocess_guided(cam_gb),
    }
    stem = f"{Path(args.image_path).stem}-{args.network}"
    encoded = {f"{stem}-{kind}.jpg": encode_image(to_uint8(img)[0], "JPEG") for kind, img in images.items()}

    # 4. Write them all at once.
    files = write_files(out_dir, encoded)
    lines = [
        f"{args.network} layer {', '.join(engine.layer_names)}: class {int(classes[0])} "
        f"({class_scores(maps.logits, classes)[0]}), method {method}",
        *(f"wrote {f}" for f in files),
    ]
    return files, lines
