"""The public names stay importable where the README and users import them from."""

from __future__ import annotations

import importlib

import pytest

import cam_callback
import cams
import cams.metrics


@pytest.mark.parametrize(("module", "names"), [
    (cams, cams.__all__),
    (cams.metrics, cams.metrics.__all__),
    (cam_callback, cam_callback.__all__),
])
def test_every_public_name_imports(module, names):
    assert names, f"{module.__name__}.__all__ is empty"
    for name in names:
        assert getattr(module, name) is not None, f"{module.__name__}.{name}"
        exec(f"from {module.__name__} import {name}", {})


def test_the_metrics_public_names_of_0_1_are_still_there():
    expected = {
        "average_drop", "cosine_similarity", "deletion_auc", "drift", "energy_pointing_game", "faithfulness",
        "gaussian_blur", "increase_in_confidence", "insertion_auc", "pointing_game", "randomized_copy",
        "sanity_check", "spearman",
    }
    assert expected <= set(cams.metrics.__all__)
    assert all(callable(getattr(cams.metrics, name)) for name in expected)


@pytest.mark.parametrize("module", [
    "cams.io", "cams.targets", "cams.hooks", "cams.passes", "cams.metrics.similarity", "cams.metrics.localisation",
    "cams.metrics.faithfulness", "cams.metrics.sanity", "cams.cli", "cam_callback.explain", "cam_callback.cli",
])
def test_every_module_declares_what_it_exports(module):
    mod = importlib.import_module(module)
    assert all(hasattr(mod, name) for name in mod.__all__)
