"""The command lines: ``cam-callback explain`` and ``python -m cams`` (the seeds' standalone command)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from pathlib import Path

import _explain_models as tiny
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import cam_callback.cli
import cams.cli
import cams.io
from cam_callback.explain import explain
from cams import CamEngine, find_layer
from cams.overlay import colorize, to_uint8

TESTS = Path(__file__).parent
SEED_KINDS = ("heatmap", "cam", "heatmap++", "cam++", "gb", "cam_gb")


def _cam_callback_command() -> list[str]:
    """The installed ``cam-callback`` console script (pyproject's entry point), else ``python -m``."""
    script = Path(sys.executable).with_name("cam-callback")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cam_callback.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``args`` (a command, or ``-m module ...`` for this Python) on two threads."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "2",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    command = list(args) if not args[0].startswith("-") else [sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint saved by a real Trainer with a CAMCallback (trained once per session)."""
    return tiny.train_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """skimage pictures as files (RGB astronaut, grayscale camera) and a file that is not an image."""
    folder = tmp_path_factory.mktemp("pictures")
    files = {"astronaut": folder / "astronaut.png", "camera": folder / "camera.jpg", "text": folder / "notes.png"}
    Image.fromarray(skimage.data.astronaut()).save(files["astronaut"])
    Image.fromarray(skimage.data.camera()).save(files["camera"])
    files["text"].write_text("not an image")
    return files


def _one_error_line(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(rf"{prog}( explain)?: error: ", lines[0]), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- cam-callback explain


def test_cam_callback_explain_writes_files_whose_maps_equal_explain(ckpt, pictures, tmp_path):
    out = tmp_path / "out"
    images = [str(pictures["astronaut"]), str(pictures["camera"])]
    proc = _run(
        *_cam_callback_command(), "explain", str(ckpt), *images, "--method", "gradcam++", "--methods", "gradcam",
        "--output-dir", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = {
        f"{stem}-{method}-{kind}.png"
        for stem in ("astronaut", "camera")
        for method in ("gradcam++", "gradcam")
        for kind in ("heatmap", "overlay")
    } | {"gradcam++.npy", "gradcam.npy", "explanation.json"}
    assert {p.name for p in out.iterdir()} == expected
    in_process = explain(ckpt, images, ["gradcam++", "gradcam"])
    for method in ("gradcam++", "gradcam"):
        assert np.allclose(np.load(out / f"{method}.npy"), in_process.maps[method].numpy(), atol=1e-6)
    assert "astronaut.png: class" in proc.stdout


def test_cam_callback_bad_image_exits_2_with_one_line_and_no_output(ckpt, pictures, tmp_path):
    out = tmp_path / "out"
    proc = _run(
        *_cam_callback_command(), "explain", str(ckpt), str(pictures["text"]), "--output-dir", str(out), cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "notes.png' is not an image" in _one_error_line(proc.stderr, "cam-callback explain")
    assert not out.exists()


def _corrupt(tmp_path: Path) -> str:
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    return str(path)


def _unsafe(ckpt: Path, tmp_path: Path) -> str:
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["data_dir"] = pathlib.Path("/data")
    path = tmp_path / "unsafe.ckpt"
    torch.save(checkpoint, path)
    return str(path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing checkpoint", r"checkpoint '.*nope.ckpt': no such file"),
        ("corrupt checkpoint", r"corrupt.ckpt' is not a readable torch checkpoint"),
        ("unsafe checkpoint", r"safe loading .* refuses \(pathlib.*--trusted"),
        ("missing image", r"image '.*nope.png': no such file"),
        ("not an image", r"notes.png' is not an image"),
        ("unknown method", r"'gradcamm' is not a known CAM method; did you mean 'gradcam'"),
        ("unknown layer", r"target_layers: .*'features.9'.*did you mean"),
        ("class id out of range", r"target: targets \[7\] out of range for a model with 3 classes: class index 7"),
        ("unknown flag", r"unrecognized arguments: --colour"),
    ],
)
def test_cam_callback_bad_input_exits_2_with_one_clear_line(ckpt, pictures, tmp_path, capsys, case, message):
    image = str(pictures["astronaut"])
    argv = {
        "missing checkpoint": [str(tmp_path / "nope.ckpt"), image],
        "corrupt checkpoint": [_corrupt(tmp_path), image],
        "unsafe checkpoint": [_unsafe(ckpt, tmp_path), image],
        "missing image": [str(ckpt), str(tmp_path / "nope.png")],
        "not an image": [str(ckpt), image, str(pictures["text"])],
        "unknown method": [str(ckpt), image, "--method", "gradcamm"],
        "unknown layer": [str(ckpt), image, "--target-layer", "features.9"],
        "class id out of range": [str(ckpt), image, "--class-id", "7"],
        "unknown flag": [str(ckpt), image, "--colour", "red"],
    }[case]
    out = tmp_path / "out"
    assert cam_callback.cli.main(["explain", *argv, "--output-dir", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err, "cam-callback")  # usage errors come from the top parser
    assert re.search(message, line), line
    assert not out.exists()


def test_cam_callback_failure_leaves_existing_output_dir_untouched(ckpt, pictures, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier run")
    code = cam_callback.cli.main(
        ["explain", str(ckpt), str(pictures["astronaut"]), "--class-id", "9", "--output-dir", str(out)]
    )
    assert code == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind either
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cam_callback_model_class_flag_explains_a_checkpoint_without_cam_state(ckpt, pictures, tmp_path, capsys):
    checkpoint = torch.load(ckpt, weights_only=True)
    del checkpoint["cam_callback"]
    bare = tmp_path / "bare.ckpt"
    torch.save(checkpoint, bare)
    argv = ["explain", str(bare), str(pictures["camera"]), "--target-layer", tiny.LAYER, "--output-dir", str(tmp_path)]
    assert cam_callback.cli.main(argv) == 2
    assert "--model-class" in _one_error_line(capsys.readouterr().err, "cam-callback")
    assert cam_callback.cli.main([*argv, "--model-class", "_explain_models.TinyNet"]) == 0
    assert (tmp_path / "camera-gradcam-overlay.png").exists()  # gradcam: the default without checkpoint state


def test_cam_callback_trusted_flag_loads_checkpoint_refused_by_safe_loading(ckpt, pictures, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "explain",
        _unsafe(ckpt, tmp_path),
        str(pictures["camera"]),
        "--method",
        "gradcam",
        "--output-dir",
        str(out),
    ]
    assert cam_callback.cli.main([*argv, "--trusted"]) == 0
    assert (out / "camera-gradcam-overlay.png").exists()


def test_cam_callback_smoothing_flags_default_to_the_checkpoint_and_can_be_forced():
    parser = cam_callback.cli.build_parser()
    base = ["explain", "a.ckpt", "b.png", "--output-dir", "o"]
    assert parser.parse_args(base).aug_smooth is None  # None: as the callback was configured
    assert parser.parse_args([*base, "--aug-smooth"]).aug_smooth is True
    assert parser.parse_args([*base, "--eigen-smooth"]).eigen_smooth is True
    assert parser.parse_args([*base, "--no-aug-smooth"]).aug_smooth is False


def test_cam_callback_without_subcommand_prints_help_and_exits_2(capsys):
    assert cam_callback.cli.main([]) == 2
    assert "explain" in capsys.readouterr().err


# --------------------------------------------------------------------------- python -m cams


def test_python_m_cams_resnet50_writes_the_seed_images_and_says_untrained(pictures, tmp_path):
    out = tmp_path / "results"
    proc = _run(
        "-m",
        "cams",
        "--image-path",
        str(pictures["astronaut"]),
        "--network",
        "resnet50",
        "--output-dir",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {f"astronaut-resnet50-{kind}.jpg" for kind in SEED_KINDS}
    for kind in SEED_KINDS:
        assert Image.open(out / f"astronaut-resnet50-{kind}.jpg").size == (224, 224)
    assert "untrained" in proc.stdout


def test_python_m_cams_inception_v3_takes_299_inputs_local_weights_and_class_id(pictures, tmp_path, capsys):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, num_classes=5, aux_logits=False, init_weights=False, transform_input=True)
    weights = tmp_path / "inception5.pth"
    torch.save(net.state_dict(), weights)
    out = tmp_path / "results"
    argv = ["--image-path", str(pictures["camera"]), "--network", "inception_v3", "--weight-path", str(weights)]
    assert cams.cli.main([*argv, "--class-id", "4", "--method", "GradCAM", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "class 4" in printed and "untrained" not in printed
    assert {p.name for p in out.iterdir()} == {f"camera-inception_v3-{kind}.jpg" for kind in SEED_KINDS}
    heatmap = np.asarray(Image.open(out / "camera-inception_v3-heatmap.jpg"), dtype=np.float32)
    assert heatmap.shape == (299, 299, 3)
    # The same map straight from the engine (inputs prepared as the command documents), colourised.
    x, _ = cams.cli.load_input(pictures["camera"], 299)
    maps = CamEngine(net.eval(), "Mixed_7c")(x, "gradcam", targets=4)
    expected = to_uint8(colorize(maps["gradcam"]))[0].astype(np.float32)
    assert np.abs(heatmap - expected).mean() < 4  # JPEG round trip only


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-path", "nope.png"], r"--image-path 'nope.png': no such file"),
        (["--image-path", "{text}"], r"notes.png' is not an image"),
        (["--network", "resnet5"], r"--network 'resnet5' is not supported \(did you mean 'resnet50'"),
        (["--method", "gradcam+"], r"--method: .*'gradcam\+' is not a known CAM method; did you mean"),
        (["--layer-name", "layer5"], r"--layer-name: .*'layer5'; did you mean .*'layer4'"),
        (["--class-id", "1000"], r"--class-id 1000 is out of range: resnet50 has 1000 classes"),
        (["--weight-path", "{text}"], r"--weight-path '.*notes.png' is not a readable torch file"),
        (["--output-dir", "{image}"], r"--output-dir '.*astronaut.png' exists and is not a folder"),
    ],
)
def test_python_m_cams_bad_input_exits_2_with_one_clear_line(pictures, tmp_path, capsys, flags, message):
    flags = [f.format(text=pictures["text"], image=pictures["astronaut"]) for f in flags]
    argv = ["--image-path", str(pictures["astronaut"]), "--output-dir", str(tmp_path / "results")]
    assert cams.cli.main([*argv, *flags]) == 2
    assert re.search(message, _one_error_line(capsys.readouterr().err, "python -m cams"))
    assert not (tmp_path / "results").exists()


def test_python_m_cams_use_cuda_without_cuda_is_bad_input(pictures, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cams.cli.main(["--image-path", str(pictures["astronaut"]), "--use-cuda", "--output-dir", str(tmp_path)]) == 2
    assert "CUDA is not available" in _one_error_line(capsys.readouterr().err, "python -m cams")


def test_python_m_cams_takes_seed_and_dashed_smoothing_flags():
    parser = cams.cli.build_parser()
    seed = parser.parse_args(["--image-path", "a.jpg", "--aug_smooth", "--eigen_smooth", "--use-cuda"])
    dashed = parser.parse_args(["--image-path", "a.jpg", "--aug-smooth", "--eigen-smooth", "--use-cuda"])
    assert vars(seed) == vars(dashed)
    assert seed.aug_smooth and seed.eigen_smooth and seed.use_cuda
    assert (seed.network, seed.method, seed.output_dir) == ("resnet50", "gradcam", "results")


@pytest.mark.parametrize("name", list(cams.cli.NETWORKS))
def test_default_layer_is_the_block_holding_the_last_convolution(name):
    from torchvision import models

    spec = cams.cli.NETWORKS[name]
    with torch.device("meta"):  # construction only: no weights initialised, nothing run
        net = (
            getattr(models, name)(weights=None, init_weights=False)
            if "inception" in name or "vgg" in name
            else getattr(models, name)(weights=None)
        )
    find_layer(net, spec.default_layer)
    last_conv = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert last_conv.startswith(spec.default_layer + ".")
    assert spec.input_size == (299 if name == "inception_v3" else 224)


def test_write_files_is_all_or_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        cams.io.write_files(tmp_path / "out", {"a.jpg": b"1", "missing-folder/b.jpg": b"2"})
    assert list(tmp_path.iterdir()) == []  # neither the output folder nor the staging folder
    written = cams.io.write_files(tmp_path / "out", {"a.jpg": b"1", "b.jpg": b"2"})
    assert [p.read_bytes() for p in written] == [b"1", b"2"]


def test_python_m_cams_takes_any_torchvision_classifier_at_its_automatic_layer(pictures, tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["--image-path", str(pictures["astronaut"]), "--network", "resnet18", "--output-dir", str(out)]
    assert cams.cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"resnet18 layer layer4: class \d+ \(logit [-\d.e+]+, probability [\d.e-]+\)", printed)
    assert {p.name for p in out.iterdir()} == {f"astronaut-resnet18-{kind}.jpg" for kind in SEED_KINDS}
    assert cams.cli.network_spec("resnet18").default_layer is None  # the seeds' six keep theirs
    assert set(cams.cli.NETWORKS) <= set(cams.cli.classification_networks())


def test_python_m_cams_reads_the_class_count_of_any_classifier_from_its_weights():
    from torchvision.models import mobilenet_v3_small

    state = mobilenet_v3_small(num_classes=3).state_dict()
    model, spec, classes = cams.cli.build_network("mobilenet_v3_small", state)
    assert classes == 3 and spec.input_size == 224
    assert torch.equal(model.state_dict()["classifier.3.weight"], state["classifier.3.weight"])
