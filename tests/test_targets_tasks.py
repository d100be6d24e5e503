"""Task targets against pytorch-grad-cam 1.5.7: segmentation, detection, multi-label and embeddings.

Each parity test explains a randomly initialised torchvision model with our target and the reference's
(``SemanticSegmentationTarget``, ``FasterRCNNBoxScoreTarget``, the tutorial's ``SimilarityToConceptTarget``,
and, for multi-label scores, which the reference has no class for, per-image callables computing the
documented score) and compares the maps pixel by pixel.

Tolerance: both sides run the same float32 forward and backward; they differ in the order of float32
sums (our batched ``sum``/``gather`` against the reference's per-image Python sums, our channel sum in
torch against NumPy's), each a relative error of a few ulp (≈1e-7) of terms of order 1 after min-max
scaling, amplified at most by the ratio of the map's range to its smallest nonzero weights; the largest
error measured here is 2e-6. ``TOL = 1e-4`` is the project's parity bar and leaves a factor 50.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
)
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform

from cams import CamEngine, find_layer
from cams.targets import (
    DetectionTarget,
    EmbeddingTarget,
    MultiLabelTarget,
    SegmentationTarget,
    classes_above,
    fpn_reshape,
    parse_target,
    select_rows,
)

TOL = 1e-4
REFERENCE = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM}


def reference(model, layer_module, x, method, targets, **kwargs) -> torch.Tensor:
    cls = {**REFERENCE, "scorecam": ScoreCAM, "ablationcam": AblationCAM, "eigencam": EigenCAM}[method]
    with cls(model, [layer_module], **kwargs) as cam:
        if method == "scorecam":
            cam.batch_size = 64
        out = cam(input_tensor=x, targets=targets)
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(np.asarray(out))


def assert_parity(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.shape == theirs.shape, what
    assert float(ours.max()) > 0, f"{what}: an empty map proves nothing"
    err = (ours - theirs).abs().max().item()
    assert err <= TOL, f"{what}: max |ours - reference| = {err:.2e} > {TOL}"


# ---------------------------------------------------------------------------------------------- segmentation
class OutOnly(torch.nn.Module):
    """The reference tutorial's ``SegmentationModelOutputWrapper``: torchvision's dict → its "out" tensor."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


@pytest.fixture(scope="module")
def segmenter() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=False
    ).eval()
    with torch.no_grad():  # a random head predicts one class everywhere; spread the logits so masks vary
        model.classifier[-1].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        model.classifier[-1].bias.zero_()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, x


def test_segmentation_target_on_the_predicted_mask_matches_reference(segmenter):
    model, x = segmenter
    with torch.no_grad():
        predicted = model(x)["out"].argmax(dim=1)
    counts = [(predicted == k).sum().item() for k in range(3)]
    category = 1
    assert 0 < counts[category] < predicted.numel(), f"the predicted mask must be partial: {counts}"
    methods = ("gradcam", "layercam")  # channel weights and element-wise weights: the target is what is tested
    ours = CamEngine(model, "backbone.16")(x, methods=methods, targets=SegmentationTarget(category))
    masks = (predicted == category).float().numpy()
    theirs_targets = [SemanticSegmentationTarget(category, m) for m in masks]
    for method in methods:
        theirs = reference(OutOnly(model), find_layer(model, "backbone.16"), x, method, theirs_targets)
        assert_parity(ours[method], theirs, f"deeplabv3_mobilenet_v3_large/{method}/predicted mask")


def test_segmentation_target_with_a_given_mask_per_image_matches_reference(segmenter):
    model, x = segmenter
    masks = np.zeros((2, 64, 64), dtype=np.float32)
    masks[0, 8:30, 10:40] = 1.0
    masks[1, 40:60, 5:25] = 1.0
    categories = [0, 2]
    target = SegmentationTarget(categories, mask=masks)
    ours = CamEngine(model, "backbone.16")(x, methods="gradcam", targets=target)
    theirs_targets = [SemanticSegmentationTarget(c, m) for c, m in zip(categories, masks, strict=True)]
    theirs = reference(OutOnly(model), find_layer(model, "backbone.16"), x, "gradcam", theirs_targets)
    assert_parity(ours["gradcam"], theirs, "deeplabv3_mobilenet_v3_large/gradcam/given masks")
    assert ours.classes.tolist() == categories


def test_segmentation_target_score_is_the_masked_logit_sum():
    out = torch.randn(3, 4, 5, 6)
    mask = torch.rand(5, 6) > 0.5
    scores = SegmentationTarget(2, mask=mask)({"out": out, "aux": out}, torch.tensor([0, 1, 2]))
    expected = [SemanticSegmentationTarget(2, mask.numpy())(row) for row in out]
    assert torch.allclose(scores, torch.stack(expected), atol=1e-5)


def test_segmentation_predicted_mask_is_chosen_once_from_the_unperturbed_rows():
    """Score-CAM and Ablation-CAM score masked copies: the mask chosen on the plain forward must stay."""
    target = SegmentationTarget(1).fresh()
    plain = torch.zeros(1, 2, 1, 3)
    plain[0, 1] = torch.tensor([[1.0, -1.0, 1.0]])  # class 1 predicted at x = 0 and x = 2
    assert target(plain, torch.tensor([0])).tolist() == [2.0]
    perturbed = torch.full((2, 2, 1, 3), 0.0)
    perturbed[:, 1] = 5.0  # class 1 now wins everywhere, but the mask stays {0, 2}
    assert target(perturbed, torch.tensor([0, 0])).tolist() == [10.0, 10.0]
    assert SegmentationTarget(1).fresh()(perturbed[:1], torch.tensor([0])).tolist() == [15.0]


def test_segmentation_target_warns_when_the_class_is_predicted_nowhere():
    out = torch.zeros(1, 3, 4, 4)
    out[:, 0] = 1.0
    with pytest.warns(RuntimeWarning, match="class 2 is predicted nowhere in image 0"):
        assert SegmentationTarget(2).fresh()(out, torch.tensor([0])).tolist() == [0.0]


def test_segmentation_target_with_a_given_mask_refuses_aug_smooth(segmenter):
    model, x = segmenter
    with pytest.raises(ValueError, match="aug_smooth flips the input horizontally"):
        CamEngine(model, "backbone.16")(x, targets=SegmentationTarget(1, mask=torch.ones(64, 64)), aug_smooth=True)


def test_aug_smooth_lets_each_augmented_copy_choose_its_own_mask():
    """With aug_smooth, the flipped copy's predicted mask is the flipped mask: the map equals the mean of the
    six de-augmented single calls, each with its own predicted mask."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1)
    ).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    engine = CamEngine(model, "1")
    smooth = engine(x, methods="gradcam", targets=SegmentationTarget(1), aug_smooth=True)["gradcam"]
    singles = []
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            xa = (x.flip(-1) if flip else x) * factor
            cam = engine(xa, methods="gradcam", targets=SegmentationTarget(1))["gradcam"]
            singles.append(cam.flip(-1) if flip else cam)
    assert torch.allclose(smooth, torch.stack(singles).mean(dim=0), atol=1e-6)


def test_a_target_reused_across_calls_chooses_anew_each_call():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    x1, x2 = torch.randn(2, 1, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    target = SegmentationTarget(1)
    engine = CamEngine(model, "1")
    engine(x1, targets=target)
    assert torch.equal(engine(x2, targets=target)["gradcam"], engine(x2, targets=SegmentationTarget(1))["gradcam"])


def test_fixed_segmentation_target_holds_the_predicted_masks():
    out = torch.zeros(2, 2, 2, 2)
    out[0, 1, 0, 0] = 1.0
    out[1, 1, 1, 1] = 1.0
    fixed = SegmentationTarget(1).fixed({"out": out})
    assert fixed.mask.tolist() == [[[True, False], [False, False]], [[False, False], [False, True]]]
    assert fixed.geometric and not SegmentationTarget(1).geometric


# ---------------------------------------------------------------------------------------------- detection
@pytest.fixture(scope="module")
def detector() -> tuple[torch.nn.Module, torch.Tensor, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=3,
        min_size=128,
        max_size=128,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        box_detections_per_img=30,
    ).eval()
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        detections = model(x)
    return model, x, detections


def constructed_boxes(detections) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image: two boxes near detections (labelled as their best match), one with the wrong label, one far
    from every detection; so matching, the label rule and the IoU threshold all count."""
    all_boxes, all_labels = [], []
    for det in detections:
        near = det["boxes"][[0, 3]] + torch.tensor([1.0, -1.0, 2.0, 0.5])
        best = torchvision.ops.box_iou(near, det["boxes"]).argmax(dim=1)
        labels = det["labels"][best]
        wrong = det["boxes"][5:6] + 0.5
        wrong_label = (det["labels"][torchvision.ops.box_iou(wrong, det["boxes"]).argmax(dim=1)] % 2) + 1
        far = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        all_boxes.append(torch.cat([near, wrong, far]))
        all_labels.append(torch.cat([labels, wrong_label, torch.tensor([1])]))
    return all_boxes, all_labels


def test_detection_target_scores_equal_the_reference_box_score_target(detector):
    _, _, detections = detector
    boxes, labels = constructed_boxes(detections)
    ours = DetectionTarget(boxes, labels)(detections, torch.arange(2))
    theirs = [
        FasterRCNNBoxScoreTarget(lb.numpy(), b.numpy())(det)[0]
        for b, lb, det in zip(boxes, labels, detections, strict=True)
    ]
    assert torch.allclose(ours, torch.stack(theirs), atol=1e-6)
    assert bool((ours > 2.0).all()), "two matched boxes per image, each IoU + score > 1"


def test_detection_target_gradcam_matches_reference_on_fasterrcnn(detector):
    model, x, detections = detector
    boxes, labels = constructed_boxes(detections)
    layer = "backbone.body.16"
    ours = CamEngine(model, layer)(x, methods="gradcam", targets=DetectionTarget(boxes, labels))
    targets = [FasterRCNNBoxScoreTarget(lb.numpy(), b.numpy()) for b, lb in zip(boxes, labels, strict=True)]
    theirs = reference(model, find_layer(model, layer), x, "gradcam", targets)
    assert_parity(ours["gradcam"], theirs, "fasterrcnn_mobilenet_v3_large_fpn/gradcam/box score")


def test_fpn_reshape_eigencam_matches_the_reference_tutorial(detector):
    """The reference's Faster R-CNN tutorial: EigenCAM on the backbone's feature pyramid, reshaped."""
    from test_parity import reference_sign_rule

    model, x, detections = detector
    ours = CamEngine(model, "backbone", reshape_transform=fpn_reshape)(x, methods="eigencam")
    boxes, labels = constructed_boxes(detections)
    targets = [FasterRCNNBoxScoreTarget(lb.numpy(), b.numpy()) for b, lb in zip(boxes, labels, strict=True)]
    with reference_sign_rule():
        theirs = reference(
            model, model.backbone, x, "eigencam", targets, reshape_transform=fasterrcnn_reshape_transform
        )
    assert_parity(ours["eigencam"], theirs, "fasterrcnn_mobilenet_v3_large_fpn/eigencam/fpn_reshape")
    levels = {"0": torch.randn(1, 2, 8, 8), "1": torch.randn(1, 2, 4, 4), "pool": torch.randn(1, 2, 2, 2)}
    assert torch.equal(fpn_reshape(levels), fasterrcnn_reshape_transform(levels))


def test_gradients_flow_through_a_feature_pyramid_with_its_own_detections(detector):
    """Beyond the reference (which records no gradient for dict outputs): Grad-CAM on the whole pyramid."""
    model, x, _ = detector
    maps = CamEngine(model, "backbone", reshape_transform=fpn_reshape)(
        x, methods="gradcam", targets=DetectionTarget(score_threshold=0.0)
    )
    assert maps["gradcam"].shape == (2, 128, 128)
    assert bool((maps["gradcam"].flatten(1).max(dim=1).values > 0.99).all()), "not an empty map"


def test_detection_target_warns_for_an_image_whose_boxes_match_nothing():
    det = [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}]
    target = DetectionTarget(torch.tensor([[10.0, 10.0, 20.0, 20.0]]), torch.tensor([1])).fresh()
    with pytest.warns(RuntimeWarning, match="no detection of image 0 matches its boxes"):
        assert target(det, torch.tensor([0])).tolist() == [0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target(det, torch.tensor([0]))  # perturbed rows of a seen image: no second warning


def test_detector_outputs_index_by_image():
    det = [{"scores": torch.tensor([0.1])}, {"scores": torch.tensor([0.2, 0.3])}, {"scores": torch.tensor([])}]
    assert [len(d["scores"]) for d in select_rows(det, torch.tensor([2, 1]))] == [0, 2]
    assert select_rows(det, slice(1, 2))[0] is det[1]


# ---------------------------------------------------------------------------------------------- multi-label
@pytest.fixture(scope="module")
def multilabel() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval(), torch.randn(
        2, 3, 64, 64, generator=torch.Generator().manual_seed(4)
    )


def _selected_sum(selected: torch.Tensor, sigmoid: bool = False):
    def score(row: torch.Tensor) -> torch.Tensor:
        values = row.sigmoid() if sigmoid else row
        return (values * selected.to(values.dtype)).sum()

    return score


def test_multilabel_class_targets_match_reference(multilabel):
    model, x = multilabel
    engine = CamEngine(model, "layer4")
    layer = model.layer4
    methods = ("gradcam", "gradcam++")
    ours = engine(x, methods=methods, targets=MultiLabelTarget([3, 1]))
    for method in methods:
        theirs = reference(model, layer, x, method, [ClassifierOutputTarget(3), ClassifierOutputTarget(1)])
        assert_parity(ours[method], theirs, f"resnet18 multi-label/{method}/class logit")
    ours = engine(x, methods="gradcam", targets=MultiLabelTarget(2, sigmoid=True))
    theirs = reference(model, layer, x, "gradcam", [lambda row: row.sigmoid()[2]] * 2)
    assert_parity(ours["gradcam"], theirs, "resnet18 multi-label/gradcam/class sigmoid")


def test_multilabel_every_class_above_threshold_matches_reference(multilabel):
    model, x = multilabel
    with torch.no_grad():
        logits = model(x)
    threshold = 0.5
    selected = logits.sigmoid() > threshold
    assert bool(selected.any(dim=1).all()) and not bool(selected.all()), "a partial selection per image"
    methods = ("xgradcam", "layercam")
    ours = CamEngine(model, "layer4")(x, methods=methods, targets=MultiLabelTarget(threshold=threshold))
    targets = [_selected_sum(s) for s in selected]
    for method in methods:
        theirs = reference(model, model.layer4, x, method, targets)
        assert_parity(ours[method], theirs, f"resnet18 multi-label/{method}/classes above {threshold}")


def test_multilabel_choice_stays_fixed_across_perturbed_forwards():
    """Score-CAM and Ablation-CAM score perturbed forwards: the classes chosen on the plain forward must be the
    ones scored (a small multi-label CNN keeps the reference's per-channel forwards cheap)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(12, 6),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        selected = model(x).sigmoid() > 0.5
    assert bool(selected.any(dim=1).all()) and not bool(selected.all())
    ours = CamEngine(model, "3")(x, methods=["scorecam", "ablationcam"], targets=MultiLabelTarget())
    for method, kwargs in (("scorecam", {}), ("ablationcam", {"batch_size": 64})):
        theirs = reference(model, model[3], x, method, [_selected_sum(s) for s in selected], **kwargs)
        assert_parity(ours[method], theirs, f"multi-label CNN/{method}/classes above 0.5")


def test_multilabel_image_without_a_class_above_threshold_explains_its_top_class():
    logits = torch.tensor([[-3.0, -1.0, -2.0]])
    assert MultiLabelTarget(threshold=0.5).fresh()(logits, torch.tensor([0])).tolist() == [-1.0]
    assert MultiLabelTarget().fixed(logits).selection.tolist() == [[False, True, False]]


def test_classes_above_gives_one_row_per_image_and_class(multilabel):
    model, x = multilabel
    with torch.no_grad():
        logits = model(x)
    images, classes = classes_above(logits, 0.5)
    assert images.tolist() == (logits.sigmoid() > 0.5).nonzero()[:, 0].tolist()
    per_pair = CamEngine(model, "layer4")(x[images], methods="gradcam", targets=classes)
    first = CamEngine(model, "layer4")(x[images[:1]], methods="gradcam", targets=classes[:1])
    assert torch.allclose(per_pair["gradcam"][:1], first["gradcam"], atol=1e-6)
    assert per_pair.classes.tolist() == classes.tolist()


# ---------------------------------------------------------------------------------------------- embeddings
def test_embedding_target_matches_the_reference_tutorial_concept_target():
    """The reference's "pixel attribution for embeddings" tutorial: cosine similarity to a concept."""

    class SimilarityToConceptTarget:  # verbatim from the pytorch-grad-cam tutorial
        def __init__(self, features):
            self.features = features

        def __call__(self, model_output):
            cos = torch.nn.CosineSimilarity(dim=0)
            return cos(model_output, self.features)

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        concept = model(x[2:])[0]
    methods = ("gradcam", "layercam")
    ours = CamEngine(model, "layer4")(x[:2], methods=methods, targets=EmbeddingTarget(concept))
    for method in methods:
        theirs = reference(model, model.layer4, x[:2], method, [SimilarityToConceptTarget(concept)] * 2)
        assert_parity(ours[method], theirs, f"resnet18 embedding/{method}/concept similarity")


# ---------------------------------------------------------------------------------------------- wrong outputs, forms
@pytest.mark.parametrize(
    ("target", "output", "fits"),
    [
        (SegmentationTarget(1), torch.zeros(2, 5), "MultiLabelTarget"),
        (MultiLabelTarget(), torch.zeros(2, 5, 4, 4), "SegmentationTarget"),
        (MultiLabelTarget(), {"out": torch.zeros(2, 5, 4, 4)}, "SegmentationTarget"),
        (EmbeddingTarget(torch.ones(5)), torch.zeros(2, 5, 4, 4), "SegmentationTarget"),
        (DetectionTarget(), torch.zeros(2, 5), "ClassTarget"),
        (SegmentationTarget(1), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}],
         "DetectionTarget"),
    ],
)
def test_a_wrong_output_shape_names_the_shape_and_the_target_that_fits(target, output, fits):
    with pytest.raises(TypeError) as info:
        target.fresh()(output, torch.arange(2))
    message = str(info.value)
    assert type(target).__name__ in message and fits in message
    if isinstance(output, torch.Tensor):
        assert str(tuple(output.shape)) in message


def test_bad_target_arguments_are_named():
    with pytest.raises(ValueError, match="category 7 is out of range for an output with 3 classes"):
        SegmentationTarget(7)(torch.zeros(1, 3, 2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"the mask has shape \(3, 3\), the output's classes are \(2, 2\)"):
        SegmentationTarget(0, mask=torch.ones(3, 3))(torch.zeros(1, 3, 2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="threshold must be a probability"):
        MultiLabelTarget(threshold=1.5)
    with pytest.raises(ValueError, match="class 9 is out of range"):
        MultiLabelTarget(9)(torch.zeros(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="give boxes and labels together"):
        DetectionTarget(boxes=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="the concept has 3 dimensions, the model's embeddings 5"):
        EmbeddingTarget(torch.ones(3))(torch.zeros(1, 5), torch.tensor([0]))


def test_text_forms_name_the_targets_and_round_trip():
    assert parse_target("pred") is None and parse_target("4") == 4
    assert parse_target("seg:3").spec == "seg:3" and parse_target("segmentation:3").spec == "seg:3"
    assert parse_target("multilabel:2").spec == "multilabel:2"
    assert parse_target("multilabel:all").spec == "multilabel:all"
    assert parse_target("multilabel:all@0.3").threshold == 0.3
    with pytest.raises(ValueError, match=r"target 'sge:3' is not a target form \(did you mean 'seg'"):
        parse_target("sge:3")
    with pytest.raises(ValueError, match="threshold must be a probability"):
        parse_target("multilabel:all@2")
