"""Long passes say how far they are: Score-CAM and Ablation-CAM call ``progress``; the command lines print it.

Library calls are silent unless given ``progress``; ``python -m cams`` and ``cam-callback explain`` pass a
:class:`cams.io.ProgressPrinter` (stderr).
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import cams.cli
from cams import CamEngine
from cams.io import ProgressPrinter


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4),
    ).eval()


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_perturbation_methods_report_each_chunk_up_to_the_total(method):
    reports: list[tuple[str, int, int]] = []
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    maps = CamEngine(_net(), "3")(x, method, batch_size=4, progress=lambda *r: reports.append(r))
    assert maps[method].shape == (3, 12, 12)
    steps, done, totals = zip(*reports, strict=True)
    assert set(steps) == {f"{method} on 3"}
    assert len(set(totals)) == 1 and done[-1] == totals[0]
    assert list(done) == sorted(done) and len(reports) >= 3  # one report per chunk of 4
    if method == "ablationcam":
        assert totals[0] == 3 * 5  # every channel of every image


def test_library_calls_report_nothing_and_gradient_methods_never_call_progress(capsys):
    x = torch.randn(2, 3, 12, 12)
    calls = []
    CamEngine(_net(), "3")(x, ("gradcam", "xgradcam"), progress=lambda *r: calls.append(r))
    CamEngine(_net(), "3")(x, "scorecam")
    assert calls == []
    assert capsys.readouterr() == ("", "")


def test_printer_writes_the_first_and_last_report_and_throttles_the_rest():
    out = io.StringIO()
    report = ProgressPrinter(out, every=3600)
    for done in range(1, 101):
        report("scorecam on layer4", done, 100)
    lines = out.getvalue().splitlines()
    assert lines[0] == "scorecam on layer4: 1/100 forwards (1%)"
    assert lines[-1].startswith("scorecam on layer4: 100/100 forwards (100%) in ")
    assert len(lines) == 2


def test_python_m_cams_scorecam_prints_progress_on_stderr(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "grey.png"
    Image.new("RGB", (32, 32), (90, 120, 150)).save(image)
    argv = ["--image-path", str(image), "--network", "mobilenet_v3_small", "--method", "scorecam"]
    argv += ["--layer-name", "features.0"]  # 16 channels: 16 masked forwards
    assert cams.cli.main([*argv, "--output-dir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "scorecam on features.0: " in err and "16/16 forwards (100%) in " in err
