"""CAMCallback across processes: each rank explains its slice, rank 0 logs what one process would have.

The fits run in subprocesses (``_distributed_fits.py``: Lightning's ``ddp`` launcher re-runs the command
line, which inside pytest would be pytest itself), on the CPU with gloo. What a single process would
have logged is computed here: the same callback, in this process, explains the weights of each
distributed run in turn (``trainer.validate``), so maps, drift, pointing game and faithfulness come from
the single-process code path that ``test_callback.py`` checks against the engine and the metrics.

Tolerances: the maps of the distributed runs and of the replay come from the same float32 arithmetic on
the same weights, except that each image is computed in a batch of another size (``k`` rows per rank
instead of ``N``); for these 16x16 maps of a two-layer network that changes sums of at most 72 products
by float32 rounding (~1e-7 relative), well inside 1e-5 after min-max scaling. Scalars are means of
such values (1e-5 too). The overlays are uint8 colour-mapped images: a map value that moves across a
colour-map bin boundary by 1e-7 changes a pixel by one bin (a few levels), so images are compared by
their mean absolute difference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import torch.distributed as dist
from _distributed_fits import ENGINE_METHODS, SCENARIOS, _recorder, callback_options
from conftest import TRAINER_DEFAULTS, QuadrantData, TinyNet
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from cam_callback import CAMCallback
from cam_callback._distributed import check_strategy, gather_rows, rows_for, together
from cams import CamEngine

HERE = Path(__file__).parent
needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


def run_scenario(name: str, folder: Path) -> list[dict[str, Any]]:
    """Run one scenario of ``_distributed_fits.py`` in a subprocess; every rank's saved state."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, str(HERE / "_distributed_fits.py"), name, str(folder)],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,  # a hang fails here instead of blocking the suite
    )
    assert done.returncode == 0, done.stderr[-6000:]
    files = sorted(folder.glob("rank*.pt"))
    return [torch.load(f, weights_only=False) for f in files]


def replay(scenario: str, weights: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """What one process logs when the same callback explains each of ``weights`` in turn."""
    cam = CAMCallback(**callback_options(scenario))
    model = TinyNet()
    runs = []
    for state in weights:
        model.load_state_dict(state)
        recorder = _recorder()
        options = dict(TRAINER_DEFAULTS, logger=recorder)
        L.Trainer(callbacks=[cam], **options).validate(model, datamodule=QuadrantData(as_dict=True), verbose=False)
        (call,) = recorder.run_calls()
        scalars = {tag: value for tag, value in call[1].items() if not tag.startswith("cam_cost/")}
        images = recorder.images_by_tag()
        runs.append({"maps": cam.last_maps, "scalars": scalars, "images": images})
    return runs


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Each scenario's ranks, run once per test session on first use."""
    done: dict[str, list[dict[str, Any]]] = {}

    def get(name: str) -> list[dict[str, Any]]:
        if name not in done:
            done[name] = run_scenario(name, tmp_path_factory.mktemp(name))
        return done[name]

    return get


# ---------------------------------------------------------------------- who explains what (one process)
def test_slices_cover_the_batch_in_rank_order_with_equal_sizes() -> None:
    for n in range(1, 12):
        for world in range(1, 6):
            slices = [rows_for(n, world, rank) for rank in range(world)]
            assert len({len(s) for s in slices}) == 1  # all_gather needs equal shapes
            assert torch.cat(slices)[:n].tolist() == list(range(n))  # the padding comes last
            assert int(torch.cat(slices).max()) == n - 1


def test_one_process_gathers_nothing_and_raises_its_own_error() -> None:
    trainer: Any = SimpleNamespace(world_size=1, strategy=None)  # no collective may be called
    parts = {"map/gradcam": torch.rand(3, 4, 4), "pred": torch.tensor([2, 0, 1])}
    whole = gather_rows(trainer, parts, 3)
    assert torch.equal(whole["map/gradcam"], parts["map/gradcam"]) and torch.equal(whole["pred"], parts["pred"])
    with pytest.raises(KeyError, match="boom"):
        together(trainer, lambda: {}["boom"])
    assert together(trainer, lambda: 7) == 7


# ---------------------------------------------------------------------- strategies refused at setup
def _stub(strategy: Any) -> Any:
    return SimpleNamespace(strategy=strategy)


def test_fsdp1_is_refused_with_the_strategy_to_use_instead() -> None:
    with pytest.raises(MisconfigurationException, match=r"FSDPStrategy .*ModelParallelStrategy.*fully_shard"):
        check_strategy(_stub(FSDPStrategy()), sanity=False)


def test_deepspeed_zero3_is_refused_and_stages_1_and_2_pass() -> None:
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # deepspeed itself is not installed
    strategy.config = {"zero_optimization": {"stage": 3}}
    with pytest.raises(MisconfigurationException, match=r"ZeRO stage 3.*stage 1 or 2"):
        check_strategy(_stub(strategy), sanity=False)
    strategy.config = {"zero_optimization": {"stage": 2}}
    check_strategy(_stub(strategy), sanity=False)


def test_tensor_parallelism_and_sanity_check_with_sharded_parameters_are_refused() -> None:
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    strategy._device_mesh = {"tensor_parallel": SimpleNamespace(size=lambda: 2)}  # as on 2 devices
    with pytest.raises(MisconfigurationException, match="tensor-parallel size of 2"):
        check_strategy(_stub(strategy), sanity=False)
    strategy._device_mesh = {"tensor_parallel": SimpleNamespace(size=lambda: 1)}
    check_strategy(_stub(strategy), sanity=False)
    with pytest.raises(MisconfigurationException, match=r"measures=\[..., 'sanity'\]"):
        check_strategy(_stub(strategy), sanity=True)


def test_labels_out_of_range_stop_the_fit_before_training(make_trainer) -> None:
    images = torch.randn(3, 1, 16, 16)
    cam = CAMCallback(images=(images, torch.tensor([0, 1, 9])), target="label")  # TinyNet has 4 classes
    with pytest.raises(MisconfigurationException, match=r"image 2 of the fixed batch .* has label 9"):
        make_trainer([cam]).fit(TinyNet(), datamodule=QuadrantData())


# ---------------------------------------------------------------------- DDP on the CPU
@needs_gloo
@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["ddp2", "ddp3", "ddp2task"])
def test_ddp_rank_zero_logs_what_one_process_logs(fits: Any, scenario: str) -> None:
    ranks = fits(scenario)
    rank0 = ranks[0]
    assert rank0["world_size"] == SCENARIOS[scenario]["world"] == len(ranks)
    expected = replay(scenario, rank0["weights"])
    logged_images = rank0["images"]
    assert len(rank0["scalars"]) == len(expected) == rank0["runs"]
    for i, (run, (_, scalars)) in enumerate(zip(expected, rank0["scalars"], strict=True)):
        assert "cam_cost/overhead" in scalars  # a fit's runs say their share of it; the replay validates
        scalars = {tag: value for tag, value in scalars.items() if not tag.startswith("cam_cost/")}
        assert scalars.keys() == run["scalars"].keys()
        assert any(k.endswith("pointing_game") for k in scalars) and any("faithfulness" in k for k in scalars)
        if scenario == "ddp2":
            assert {"cam_drift/gradcam/noise_floor", "cam_axioms/gradcam/conservation"} <= scalars.keys()
            assert "cam_faithfulness/baseline_random/average_drop" in scalars
        for tag, value in scalars.items():
            assert value == pytest.approx(run["scalars"][tag], abs=1e-5, nan_ok=True), (i, tag)
        for method in callback_options(scenario)["methods"]:
            image, want = logged_images[f"cam/{method}"][i], run["images"][f"cam/{method}"][0]
            assert image.shape == want.shape
            assert (image.float() - want.float()).abs().mean() < 0.05, (i, method)
    for method, cam in rank0["last_maps"].items():
        assert cam.shape[0] == SCENARIOS[scenario]["num_images"]
        assert float((cam - expected[-1]["maps"][method]).abs().max()) <= 1e-5


@needs_gloo
@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["ddp2", "ddp3", "ddp2task"])
def test_ddp_every_rank_explains_its_share_and_holds_the_same_state(fits: Any, scenario: str) -> None:
    ranks = fits(scenario)
    rank0 = ranks[0]
    n, world = SCENARIOS[scenario]["num_images"], len(ranks)
    data = QuadrantData(as_dict=True).val_set
    assert torch.equal(rank0["fixed_images"], data.images[:n])
    for rank in ranks:  # its slice, padded to the common size; with a task target, the whole batch
        mine = list(range(n)) if scenario == "ddp2task" else rows_for(n, world, rank["rank"]).tolist()
        assert rank["rows"] == [mine] * rank["slices"]
    for other in ranks[1:]:
        assert other["runs"] == rank0["runs"] and other["slices"] == rank0["slices"]
        assert torch.equal(other["fixed_images"], rank0["fixed_images"])
        for method in rank0["last_maps"]:
            assert torch.equal(other["last_maps"][method], rank0["last_maps"][method])
            assert torch.equal(other["first_maps"][method], rank0["first_maps"][method])
        assert other["scalars"] == [] and other["images"] == {}  # only rank 0 logs


@needs_gloo
@pytest.mark.slow
def test_ddp_ranks_decide_together_and_fail_together(fits: Any) -> None:
    ranks = fits("ddp3")
    # runs: the baseline, after epoch 0 (rank 2 alone found it due), after epoch 1 (failed on rank 1 only,
    # skipped on every rank), after epoch 3
    assert [r["runs"] for r in ranks] == [3, 3, 3]
    # logged at Lightning's own step for the end of a training epoch (global step - 1), like its epoch metrics
    assert [step for step, _ in ranks[0]["scalars"]] == [0, 1, 7]
    failures = [w for w in ranks[0]["warnings"] if "failed and was skipped" in w]
    assert len(failures) == 1 and "failed on global rank 1: ValueError: injected failure on rank 1" in failures[0]


# ---------------------------------------------------------------------- sharded parameters (FSDP2) on the CPU
@needs_gloo
@pytest.mark.slow
def test_fsdp2_engine_on_a_sharded_model_gives_the_unsharded_maps_and_leaves_it_as_found(tmp_path: Path) -> None:
    for rank in run_scenario("engine", tmp_path):
        assert max(rank["max_diff"].values()) <= 1e-5, rank["max_diff"]
        assert set(rank["max_diff"]) == set(ENGINE_METHODS)
        assert rank["classes_equal"]
        assert rank["sharded"] and rank["shards_equal"] and rank["buffers_equal"]  # resharded, values unchanged
        assert rank["grads_none"] and rank["training"]  # no parameter gradient, modes restored
        assert rank["trains"]


@needs_gloo
@pytest.mark.slow
def test_model_parallel_fsdp2_fit_explains_on_every_rank_and_logs_the_unsharded_maps(fits: Any) -> None:
    ranks = fits("fsdp2")
    rank0 = ranks[0]
    assert [r["runs"] for r in ranks] == [3, 3]  # baseline + 2 epochs, no hang
    assert all(r["still_sharded"] for r in ranks)
    model = TinyNet()
    model.load_state_dict(rank0["final_weights"])
    methods = callback_options("fsdp2")["methods"]
    labels = rank0["fixed_labels"]
    fresh = CamEngine(model, rank0["layer_names"])(rank0["fixed_images"], methods=methods, targets=labels)
    for method in methods:
        assert float((fresh[method] - rank0["last_maps"][method]).abs().max()) <= 1e-5
        assert torch.equal(ranks[1]["last_maps"][method], rank0["last_maps"][method])
    expected = replay("fsdp2", rank0["weights"])
    for (_, scalars), run in zip(rank0["scalars"], expected, strict=True):
        scalars = {tag: value for tag, value in scalars.items() if not tag.startswith("cam_cost/")}  # fits only
        assert scalars == pytest.approx(run["scalars"], abs=1e-5, nan_ok=True)
