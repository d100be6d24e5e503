"""Model outputs that are not a ``(B, classes)`` tensor: Hugging Face ``ModelOutput``, dicts, tuples, callables.

The default target (each image's predicted class) and class indices read the logits from a dict's
``"logits"``/``"out"`` entry, a ``.logits`` attribute or a tuple's first element, and the maps are those of
the plain tensor model; anything else is a ``TypeError`` naming what the model returned. The callback takes
a callable ``target`` as the engine does.
"""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from conftest import QuadrantData, TinyNet
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from cam_callback import CAMCallback
from cams import CamEngine
from cams.targets import logits_of

METHODS = ("gradcam", "xgradcam", "scorecam", "ablationcam")
Pair = namedtuple("Pair", ["logits", "features"])


class Wrapped(nn.Module):
    """The same CNN, its logits handed back inside another container."""

    def __init__(self, net: nn.Module, wrap) -> None:
        super().__init__()
        self.net, self.wrap = net, wrap

    def forward(self, x: torch.Tensor):
        return self.wrap(self.net(x))


WRAPS = {
    "hugging_face_model_output": lambda logits: ImageClassifierOutput(logits=logits),
    "dict_logits": lambda logits: {"logits": logits, "aux": logits.detach() * 0},
    "dict_out": lambda logits: {"out": logits},
    "tuple": lambda logits: (logits, logits.sum()),
    "named_tuple": lambda logits: Pair(logits, None),
}


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("kind", list(WRAPS))
def test_the_default_target_and_class_indices_read_the_logits(net, kind):
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    plain = CamEngine(net)(x, methods=METHODS)
    wrapped = CamEngine(Wrapped(net, WRAPS[kind]), "net.3")
    maps = wrapped(x, methods=METHODS)
    assert torch.equal(maps.classes, plain.classes) and torch.equal(maps.logits, plain.logits)
    for method in METHODS:
        assert torch.equal(maps[method], plain[method]), method
    fixed = wrapped(x, methods="gradcam", targets=[4, 0, 2])
    assert torch.equal(fixed["gradcam"], CamEngine(net)(x, methods="gradcam", targets=[4, 0, 2])["gradcam"])


@pytest.mark.parametrize(
    ("output", "named"),
    [
        ({"embedding": torch.zeros(2, 5)}, r"a dict with keys \['embedding'\]"),
        ({"out": torch.zeros(2, 5, 4, 4)}, r"a dict with keys \['out'\] \(Tensor \(2, 5, 4, 4\) under 'out'\)"),
        ((torch.zeros(2, 5, 7), 3), r"a tuple of 2 \(Tensor \(2, 5, 7\), int\)"),
        (torch.zeros(2, 5, 7), r"a tensor of shape \(2, 5, 7\)"),
        ("text", r"a str"),
    ],
)
def test_outputs_without_logits_are_a_type_error_naming_what_came_back(output, named):
    with pytest.raises(TypeError, match=named + r".*pass a callable target"):
        logits_of(output)


def test_a_callable_target_explains_what_it_scores(net):
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    model = Wrapped(net, lambda logits: {"scores": logits})
    maps = CamEngine(model, "net.3")(x, methods=("gradcam", "ablationcam"), targets=lambda out: out["scores"][:, 1])
    plain = CamEngine(net, "3")(x, methods=("gradcam", "ablationcam"), targets=1)
    for method in ("gradcam", "ablationcam"):
        assert torch.equal(maps[method], plain[method]), method


def score_of_class_two(output: torch.Tensor) -> torch.Tensor:
    return output[:, 2]


def test_the_callback_takes_a_callable_target(make_trainer):
    callback = CAMCallback(
        target=score_of_class_two,
        methods=["gradcam"],
        on_error="raise",
        measures=["noise_floor", "baselines", "faithfulness"],
    )
    assert "callable:score_of_class_two" in callback.state_key
    trainer = make_trainer(callbacks=[callback], max_epochs=1)
    trainer.fit(TinyNet(), datamodule=QuadrantData(n_train=32, n_val=8))
    assert callback.runs == 2 and float(callback.last_maps["gradcam"].std()) > 0
    trainer.save_checkpoint(trainer.default_root_dir + "/last.ckpt")  # a callable target must not break pickling
    summary = torch.load(trainer.default_root_dir + "/last.ckpt", weights_only=False)["cam_callback"]
    assert summary["target"] == "callable:score_of_class_two"


@pytest.mark.parametrize("bad", [-1, "logits", 2.5, True])
def test_a_target_that_is_neither_a_class_nor_a_callable_is_rejected(bad):
    with pytest.raises(ValueError, match="callable"):
        CAMCallback(target=bad)
