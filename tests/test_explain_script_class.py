"""explain finds a LightningModule defined in a training script (``__main__.Net`` while it trained).

The checkpoint records the class's file (``module_file``, and ``module_file_relative`` from where
training ran); ``explain`` loads the class from it as a module that is not ``__main__``, or from the
file the user names (``model="train.py:Net"``, ``--model-class train.py:Net``). The README's newcomer
test (tests/test_readme.py) does the same with a real run of ``examples/cluttered_digits.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import cam_callback.cli
from cam_callback._module_class import load_class, source_of
from cam_callback.explain import InputError, explain
from cams import CamEngine

SCRIPT = '''\
"""A training script: the class below is __main__.Net while it trains."""
from pathlib import Path

import lightning as L
from torch import nn


class Net(L.LightningModule):
    def __init__(self, width: int = 4):
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))

    def forward(self, x):
        return self.head(self.features(x))


if __name__ == "__main__":
    Path(__file__).with_suffix(".trained").write_text("the main block ran")
'''


def _project(root: Path) -> tuple[Path, Path, torch.nn.Module]:
    """``root/train.py`` and a checkpoint of its ``Net`` in ``root/lightning_logs/version_0/checkpoints``."""
    script = root / "train.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(SCRIPT)
    torch.manual_seed(0)
    model = load_class(f"{script}:Net", "test")(width=6)
    ckpt = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": {"width": 6},
            "cam_callback": {  # as the callback writes it for a class run as a script from `root`
                "version": 1,
                "module_class": "__main__.Net",
                "module_file": str(script.resolve()),
                "module_file_relative": "train.py",
                "target_layers": ["features"],
                "methods": ["gradcam"],
                "input_size": [3, 16, 16],
                "mean": None,
                "std": None,
                "target": "pred",
                "aug_smooth": False,
                "eigen_smooth": False,
            },
        },
        ckpt,
    )
    return script, ckpt, model


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_class_defined_in_a_script_is_loaded_from_the_recorded_file(tmp_path, x):
    script, ckpt, model = _project(tmp_path / "project")
    result = explain(ckpt, x)
    expected = CamEngine(model, "features")(x, "gradcam")
    assert torch.allclose(result.maps["gradcam"], expected["gradcam"], atol=1e-6)
    assert not script.with_suffix(".trained").exists()  # the script's `if __name__ == "__main__":` did not run


def test_a_moved_project_finds_the_script_above_the_checkpoint(tmp_path, x, monkeypatch):
    _, _, model = _project(tmp_path / "project")
    moved = tmp_path / "elsewhere" / "project"
    shutil.move(tmp_path / "project", moved)  # the recorded absolute path no longer exists
    monkeypatch.chdir(tmp_path)  # nor is train.py in the current folder
    result = explain(moved / "lightning_logs/version_0/checkpoints/last.ckpt", x)
    assert torch.allclose(result.maps["gradcam"], CamEngine(model, "features")(x, "gradcam")["gradcam"], atol=1e-6)


def test_a_missing_script_is_named_with_the_command_line_flag(tmp_path, x, monkeypatch):
    script, ckpt, _ = _project(tmp_path / "project")
    script.unlink()
    monkeypatch.chdir(tmp_path)
    message = r"'__main__.Net' was defined in the script .*train.py.*--model-class train.py:Net"
    with pytest.raises(InputError, match=message):
        explain(ckpt, x)
    assert cam_callback.cli.main(["explain", str(ckpt), "img.png", "--output-dir", str(tmp_path / "out")]) == 2


def test_model_and_model_class_name_the_script_and_its_class(tmp_path, x, monkeypatch, capsys):
    script, ckpt, model = _project(tmp_path / "project")
    moved = script.rename(tmp_path / "renamed_train.py")
    monkeypatch.chdir(tmp_path)
    expected = CamEngine(model, "features")(x, "gradcam")["gradcam"]
    assert torch.allclose(explain(ckpt, x, model=f"{moved}:Net").maps["gradcam"], expected, atol=1e-6)
    assert torch.allclose(explain(ckpt, x, model=str(moved)).maps["gradcam"], expected, atol=1e-6)  # class: Net
    from PIL import Image

    image = tmp_path / "red.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    argv = ["explain", str(ckpt), str(image), "--output-dir", str(tmp_path / "out")]
    assert cam_callback.cli.main([*argv, "--model-class", "renamed_train.py:Net"]) == 0
    assert "class " in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=r"--model-class.*no such file 'nope.py'"):
        explain(ckpt, x, model="nope.py:Net")


def test_the_checkpoint_records_the_file_that_defines_the_class(monkeypatch):
    from conftest import TinyNet

    here = source_of(TinyNet)
    assert Path(here["module_file"]) == (Path(__file__).parent / "conftest.py").resolve()
    monkeypatch.chdir(Path(__file__).parent)
    assert source_of(TinyNet)["module_file_relative"] == "conftest.py"
    monkeypatch.chdir("/")
    assert source_of(TinyNet)["module_file_relative"] == str(Path(here["module_file"]).relative_to("/"))
