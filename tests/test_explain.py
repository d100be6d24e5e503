"""cam_callback.explain: rebuild the model from a CAMCallback checkpoint and explain images with it."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import _explain_models as tiny
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from cam_callback.explain import InputError, UnsafeCheckpointError, explain
from cams import CamEngine


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint saved by a real Trainer with a CAMCallback (trained once per session)."""
    return tiny.train_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    """Five normalised (3, 32, 32) crops, the model's own input format."""
    return tiny.crops_dataset(n_per_class=2).tensors[0][:5]


def _edited(ckpt: Path, tmp_path: Path, edit) -> Path:
    checkpoint = torch.load(ckpt, weights_only=True)
    edit(checkpoint)
    path = tmp_path / "edited.ckpt"
    torch.save(checkpoint, path)
    return path


def _engine_maps(ckpt: Path, x: torch.Tensor, methods=tiny.METHODS):
    model = tiny.TinyNet.load_from_checkpoint(ckpt, weights_only=True)
    return CamEngine(model, target_layers=tiny.LAYER)(x, methods=methods)


def test_explain_maps_equal_the_engine_maps_of_the_checkpointed_model(ckpt, x):
    result = explain(ckpt, x)
    reference = _engine_maps(ckpt, x)
    assert result.methods == list(tiny.METHODS)  # the callback's methods, from the checkpoint
    assert result.target_layers == [tiny.LAYER]
    for method in tiny.METHODS:
        assert result.maps[method].dtype == torch.float32
        assert torch.allclose(result.maps[method], reference[method], atol=1e-6, rtol=0)
    assert torch.equal(result.classes, reference.classes)
    assert torch.allclose(result.scores, reference.scores, atol=1e-6)


def test_image_path_is_resized_and_normalised_as_the_checkpoint_says(ckpt, tmp_path):
    path = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(path)
    result = explain(ckpt, path, "gradcam")
    by_hand = Image.fromarray(skimage.data.coffee()).resize((tiny.SIZE, tiny.SIZE), Image.BILINEAR)
    x = tiny.normalize(torch.from_numpy(np.asarray(by_hand, np.float32) / 255).permute(2, 0, 1)[None])
    assert result.names == ["coffee"]
    assert torch.allclose(result.maps["gradcam"], _engine_maps(ckpt, x, "gradcam")["gradcam"], atol=1e-6)
    assert np.array_equal(result.images[0], np.asarray(by_hand))


def test_grayscale_rgba_arrays_and_pil_images_become_one_rgb_batch(ckpt):
    rgba = Image.fromarray(skimage.data.coffee()).convert("RGBA")
    result = explain(ckpt, [skimage.data.camera(), rgba, skimage.data.astronaut()], "gradcam++")
    assert result.maps["gradcam++"].shape == (3, tiny.SIZE, tiny.SIZE)
    assert result.maps["gradcam++"].min() >= 0 and result.maps["gradcam++"].max() <= 1
    assert result.overlays["gradcam++"].shape == (3, tiny.SIZE, tiny.SIZE, 3)
    assert result.overlays["gradcam++"].dtype == np.uint8
    assert result.classes.shape == result.scores.shape == (3,)
    gray = result.images[0].astype(int)
    assert np.array_equal(gray[..., 0], gray[..., 1])  # grayscale repeated to RGB
    assert result.names == ["image0", "image1", "image2"]


def test_uint8_tensor_is_raw_pixels_like_the_same_array(ckpt):
    small = np.array(Image.fromarray(skimage.data.coffee()).resize((tiny.SIZE, tiny.SIZE)))
    from_array = explain(ckpt, small, "gradcam")
    from_tensor = explain(ckpt, torch.from_numpy(small).permute(2, 0, 1)[None], "gradcam")
    assert torch.allclose(from_tensor.maps["gradcam"], from_array.maps["gradcam"], atol=1e-6)
    assert np.array_equal(from_tensor.images, from_array.images)


def test_method_aliases_and_extra_methods_are_canonical_and_deduplicated(ckpt, x):
    result = explain(ckpt, x[:2], ["GradCAM++", "gradcam", "gradcam++"])
    assert result.methods == ["gradcam++", "gradcam"]
    with pytest.warns(DeprecationWarning, match=r"methods=.*pass method=\[...\]"):
        old = explain(ckpt, x[:2], "GradCAM++", **{"methods": ["gradcam", "gradcam++"]})
    assert old.methods == ["gradcam++", "gradcam"]


def test_explicit_target_is_the_class_explained(ckpt, x):
    result = explain(ckpt, x[:3], "gradcam", target=2)
    assert result.classes.tolist() == [2, 2, 2]
    reference = CamEngine(tiny.TinyNet.load_from_checkpoint(ckpt, weights_only=True), tiny.LAYER)
    assert torch.allclose(result.maps["gradcam"], reference(x[:3], "gradcam", targets=2)["gradcam"], atol=1e-6)
    per_image = explain(ckpt, x[:3], "gradcam", target=[0, 1, 2])
    assert per_image.classes.tolist() == [0, 1, 2]


def test_class_out_of_range_names_the_class_count(ckpt, x):
    with pytest.raises(InputError, match=r"target: targets \[3\] out of range for a model with 3 classes"):
        explain(ckpt, x[:1], target=3)


def test_save_writes_heatmap_overlay_pngs_raw_maps_and_summary(ckpt, tmp_path):
    path = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    result = explain(ckpt, [path, skimage.data.camera()], ["gradcam", "xgradcam"])
    out = tmp_path / "out"
    written = result.save(out)
    expected = {
        f"{stem}-{method}-{kind}.png"
        for stem in ("astronaut", "image1")
        for method in ("gradcam", "xgradcam")
        for kind in ("heatmap", "overlay")
    } | {"gradcam.npy", "xgradcam.npy", "explanation.json"}
    assert {p.name for p in written} == expected == {p.name for p in out.iterdir()}
    assert np.array_equal(np.load(out / "xgradcam.npy"), result.maps["xgradcam"].numpy())
    overlay = np.asarray(Image.open(out / "astronaut-gradcam-overlay.png"))
    assert np.array_equal(overlay, result.overlays["gradcam"][0])
    summary = json.loads((out / "explanation.json").read_text())
    assert summary["names"] == ["astronaut", "image1"]
    assert summary["classes"] == result.classes.tolist()


def test_checkpoint_without_cam_state_asks_for_model(ckpt, tmp_path, x):
    bare = _edited(ckpt, tmp_path, lambda c: c.pop("cam_callback"))
    with pytest.raises(InputError, match=r"no 'cam_callback' state.*--model-class path/to/script.py:ClassName.*model="):
        explain(bare, x)


def test_model_class_or_instance_supplies_the_model_for_a_plain_checkpoint(ckpt, tmp_path, x):
    bare = _edited(ckpt, tmp_path, lambda c: c.pop("cam_callback"))
    reference = _engine_maps(ckpt, x, "gradcam")["gradcam"]
    from_class = explain(bare, x, "gradcam", model=tiny.TinyNet, target_layers=tiny.LAYER)
    instance = tiny.TinyNet()  # fresh weights: explain loads the checkpoint's into it
    from_instance = explain(bare, x, "gradcam", model=instance, target_layers=tiny.LAYER)
    assert torch.allclose(from_class.maps["gradcam"], reference, atol=1e-6)
    assert torch.allclose(from_instance.maps["gradcam"], reference, atol=1e-6)


def test_missing_constructor_arguments_are_named(ckpt, tmp_path, x):
    with pytest.raises(InputError, match=r"NeedsArgs: its constructor needs \['depth'\].*save_hyperparameters"):
        explain(ckpt, x, model=tiny.NeedsArgs)


def test_unimportable_module_class_is_named(ckpt, tmp_path, x):
    def edit(c):
        c["cam_callback"]["module_class"] = "no_such_package.models.Net"

    with pytest.raises(InputError, match=r"'no_such_package.models.Net' cannot be imported.*model="):
        explain(_edited(ckpt, tmp_path, edit), x)


def test_unknown_layer_and_method_suggest_close_matches(ckpt, x):
    with pytest.raises(InputError, match=r"target_layers: .*'features.30'.*did you mean"):
        explain(ckpt, x, target_layers="features.30")
    with pytest.raises(InputError, match=r"gradcam\+\+\+.*did you mean"):
        explain(ckpt, x, "gradcam+++")


def test_hyperparameters_beyond_plain_data_need_trusted(ckpt, tmp_path, x):
    unsafe = _edited(ckpt, tmp_path, lambda c: c["hyper_parameters"].update(data_dir=pathlib.Path("/data")))
    with pytest.raises(UnsafeCheckpointError, match=r"refuses \(pathlib\.\w*Path\); .*trusted=True"):
        explain(unsafe, x)
    trusted = explain(unsafe, x, "gradcam", trusted=True)  # TinyNet takes no data_dir: it is left out
    assert torch.allclose(trusted.maps["gradcam"], _engine_maps(ckpt, x, "gradcam")["gradcam"], atol=1e-6)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", r"is not a readable torch checkpoint"), (b"PK\x03\x04 truncated", r"is not a readable torch checkpoint")],
)
def test_corrupt_checkpoint_is_reported(tmp_path, x, content, message):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        explain(path, x)


def test_missing_files_raise_file_not_found(ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*no such file"):
        explain(tmp_path / "nope.ckpt", skimage.data.camera())
    with pytest.raises(FileNotFoundError, match=r"image .*nope.png.*no such file"):
        explain(ckpt, tmp_path / "nope.png")


def test_scores_are_logits_with_their_probabilities_and_probability_maps_are_on_request(ckpt, x):
    from cams.targets import ClassTarget

    model = tiny.TinyNet.load_from_checkpoint(ckpt, weights_only=True).eval()
    with torch.no_grad():
        logits = model(x)
    by_logit = explain(ckpt, x, "gradcam")
    rows = torch.arange(len(x))
    assert by_logit.score == "logit"
    assert torch.allclose(by_logit.scores, logits[rows, by_logit.classes], atol=1e-5)
    assert torch.allclose(by_logit.probabilities, logits.softmax(1)[rows, by_logit.classes], atol=1e-6)
    by_probability = explain(ckpt, x, "gradcam", score="probability")
    expected = CamEngine(model, tiny.LAYER)(x, "gradcam", targets=ClassTarget(by_logit.classes, softmax=True))
    assert by_probability.score == "probability"
    assert torch.allclose(by_probability.maps["gradcam"], expected["gradcam"], atol=1e-6)
    assert torch.allclose(by_probability.scores, by_logit.scores)
    assert torch.equal(by_probability.classes, by_logit.classes)
    with pytest.raises(InputError, match=r"score='prob': expected 'logit' or 'probability'"):
        explain(ckpt, x, score="prob")


def test_target_layer_is_a_deprecated_name_for_target_layers(ckpt, x):
    with pytest.warns(DeprecationWarning, match="pass target_layers="):
        same = explain(ckpt, x, "gradcam", **{"target_layer": tiny.LAYER})
    assert torch.equal(same.maps["gradcam"], explain(ckpt, x, "gradcam", target_layers=tiny.LAYER).maps["gradcam"])
    with pytest.raises(InputError, match="one argument under two names"):
        explain(ckpt, x, target_layers=tiny.LAYER, **{"target_layer": tiny.LAYER})
