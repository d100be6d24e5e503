"""``cam-callback report`` and ``CAMCallback(report=True)``: one self-contained page per fit, from what was logged.

Run folders are written by the callback's own writer without training (``tests/_report_runs.py``), or by a tiny
fit; the page is read back with :mod:`html.parser`. ``tests/test_report_ui.py`` opens it in Chromium.
"""

from __future__ import annotations

import json
import shutil
import warnings
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from _helpers import RecordingLogger, read_events
from _report_runs import write_run
from conftest import QuadrantData, TinyNet
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from cam_callback import CAMCallback
from cam_callback._record import read_record
from cam_callback.cli import main
from cam_callback.report import build_report, read_runs
from cam_callback.report.events import EVENT_GLOB
from cam_callback.report.events import read_events as read_event_files
from cams.io import InputError

RUNS = 4


class Page(HTMLParser):
    """The parts of a report a test reads: every element with its attributes and the ``data-`` context above it."""

    VOID = frozenset({"img", "meta", "br", "line", "circle", "rect", "polyline", "polygon", "input"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.stack: list[dict[str, str]] = []
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        own = {k: v or "" for k, v in attrs}
        context = {k: v for frame in self.stack for k, v in frame.items() if k.startswith("data-")}
        self.elements.append((tag, {**context, **own}))
        if tag not in self.VOID:
            self.stack.append(own)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def find(self, tag: str, cls: str | None = None, **data: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and (cls is None or cls in a.get("class", "").split())
                and all(a.get(f"data-{k}") == v for k, v in data.items())]  # fmt: skip

    def counts(self, run: str, chart: str) -> dict[str, int]:
        """Points per series of one chart of one run."""
        return {g["data-series"]: int(g["data-count"]) for g in self.find("g", "series", run=run, chart=chart)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "shortcut": write_run(root / "shortcut", runs=RUNS, shortcut=True, methods=("gradcam", "xgradcam")),
            "clean": write_run(root / "clean", runs=RUNS, methods=("gradcam", "xgradcam"), seed=1),
        }


@pytest.fixture(scope="module")
def named(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the two run folders, named for their runs (as ``lightning_logs/{shortcut,clean}``)."""
    folder = tmp_path_factory.mktemp("lightning_logs")
    for name, run in runs.items():
        shutil.copytree(run, folder / name)
    return folder


@pytest.fixture(scope="module")
def page(named: Path, tmp_path_factory: pytest.TempPathFactory) -> Page:
    out = build_report([named / "shortcut", named / "clean"], tmp_path_factory.mktemp("out") / "report.html")
    return Page(out.read_text())


# ------------------------------------------------------------------------------------------------ the record
def test_the_record_holds_the_configuration_each_run_its_scalars_and_the_warnings(runs: dict[str, Path]) -> None:
    lines = read_record(runs["shortcut"] / "cam_record.jsonl")
    assert [line["type"] for line in lines[:3]] == ["config", "run", "scalars"]
    assert sum(line["type"] == "run" for line in lines) == RUNS
    config = lines[0]["config"]
    assert config["methods"] == ["gradcam", "xgradcam"] and {"torch", "lightning", "cam_callback"} <= set(config)
    assert lines[0]["labels"] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert lines[1]["title"] == "before training" and len(lines[1]["preds"]) == 8
    (warning,) = [line for line in lines if line["type"] == "warning"]
    assert warning["kind"] == "shortcut" and "possible shortcut" in warning["message"] and warning["step"] > 0


def test_the_record_scalars_are_what_tensorboard_got(runs: dict[str, Path]) -> None:
    events = read_events(runs["shortcut"])
    lines = read_record(runs["shortcut"] / "cam_record.jsonl")
    logged = [(line["step"], value) for line in lines if line["type"] == "scalars"
              for tag, value in line["values"].items() if tag == "cam_shortcut/gradcam/energy"]  # fmt: skip
    assert logged == [(e.step, pytest.approx(e.value)) for e in events.Scalars("cam_shortcut/gradcam/energy")]


def test_the_event_reader_reads_what_tensorboards_event_accumulator_reads(runs: dict[str, Path]) -> None:
    ours = read_event_files(sorted(runs["clean"].glob(EVENT_GLOB)), lambda tag: "all")
    theirs = read_events(runs["clean"])
    for tag in theirs.Tags()["scalars"]:
        assert ours.scalars[tag] == [(e.step, pytest.approx(e.value)) for e in theirs.Scalars(tag)], tag
    for tag in theirs.Tags()["images"]:
        assert [data for _, data in ours.images[tag]] == [e.encoded_image_string for e in theirs.Images(tag)], tag


# ------------------------------------------------------------------------------------------------ the page
def test_the_page_shows_one_timeline_per_method_and_run(page: Page) -> None:
    timelines = {(a["data-run"], a["data-method"]) for a in page.find("figure", "timeline")}
    assert timelines == {(run, m) for run in ("shortcut", "clean") for m in ("gradcam", "xgradcam")}
    assert all(a["src"].startswith("data:image/webp;base64,") for a in page.find("img") if "src" in a)


def test_each_chart_has_a_point_per_logged_value(page: Page, runs: dict[str, Path]) -> None:
    events = read_events(runs["shortcut"])
    for method, chart, tags in (
        ("gradcam", "drift", ("cam_drift/gradcam/vs_previous", "cam_drift/gradcam/vs_first",
                              "cam_drift/gradcam/noise_floor")),
        ("gradcam", "shortcut", ("cam_shortcut/gradcam/energy", "cam_shortcut/baseline_random/energy")),
        ("xgradcam", "energy", ("cam_localisation/xgradcam/energy", "cam_localisation/baseline_centre/energy")),
    ):  # fmt: skip
        for tag in tags:
            drawn = page.find("g", "series", run="shortcut", chart=chart, method=method)
            (series,) = [g for g in drawn if g["data-series"] == tag]
            assert int(series["data-count"]) == len(events.Scalars(tag)), tag
    assert page.counts("shortcut", "drift")["cam_drift/gradcam/vs_previous"] == RUNS - 1  # none at the baseline
    assert page.counts("clean", "shortcut") == {"cam_shortcut/gradcam/energy": RUNS,
                                                 "cam_shortcut/xgradcam/energy": RUNS,
                                                 "cam_shortcut/baseline_centre/energy": RUNS,
                                                 "cam_shortcut/baseline_random/energy": RUNS}  # fmt: skip
    assert page.counts("shortcut", "accuracy") == {"val_acc": RUNS}  # Lightning's own scalars of the same run
    circles = [a for a in page.find("circle", run="clean", chart="energy", method="gradcam")]
    assert len(circles) == 3 * RUNS  # the method, the centre map, the random map


def test_runs_side_by_side_share_each_charts_axes(page: Page) -> None:
    for chart in ("drift", "energy", "shortcut_ratio", "accuracy"):
        ticks = {}
        for run in ("shortcut", "clean"):
            labels = [a for a in page.find("text", "tick", run=run, chart=chart)]
            ticks[run] = [(a.get("x"), a.get("y")) for a in labels]
        assert ticks["shortcut"] and ticks["shortcut"] == ticks["clean"], chart


def test_each_fixed_image_has_a_tile_per_run_with_the_predicted_class(page: Page) -> None:
    strips = page.find("div", "strip", run="shortcut", method="gradcam")
    assert [s["data-image"] for s in strips] == [str(i) for i in range(8)]
    tiles = page.find("span", "tile", run="shortcut", method="gradcam", image="0")
    assert len(tiles) == RUNS and tiles[0]["title"].startswith("before: predicted ")
    (picture,) = page.find("img", run="shortcut", method="gradcam", image="0")
    assert (picture["width"], picture["height"]) == (str(RUNS * (64 + 2) - 2), "64")  # 32-pixel images enlarged x2
    changed = page.find("span", "changed", method="gradcam")
    assert changed and all("predicted" in t["title"] for t in changed)


def test_the_warnings_section_lists_the_shortcut_warning_of_the_shortcut_run_only(page: Page) -> None:
    (shortcut,) = page.find("div", "warnings", run="shortcut")
    (clean,) = page.find("div", "warnings", run="clean")
    assert shortcut["data-count"] == "1" and clean["data-count"] == "0"
    assert [row["data-kind"] for row in page.find("tr", "warning", run="shortcut")] == ["shortcut"]


def test_the_configuration_names_the_versions_each_run_was_trained_with(runs: dict[str, Path], tmp_path: Path) -> None:
    html = build_report([runs["shortcut"]], tmp_path / "r.html").read_text()
    import lightning
    import torch

    for row in (f"<td>torch</td><td>{torch.__version__}</td>", f"<td>lightning</td><td>{lightning.__version__}</td>",
                "<td>methods</td><td>gradcam, xgradcam</td>", "<td>cam_callback</td>"):  # fmt: skip
        assert row in html, row


def test_the_page_loads_nothing_from_anywhere(page: Page, runs: dict[str, Path], tmp_path: Path) -> None:
    html = build_report([runs["clean"]], tmp_path / "r.html").read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    assert "<script" not in html and "<link" not in html
    (policy,) = [a for a in page.find("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert policy["content"].startswith("default-src 'none'; img-src data:")
    assert all(a["src"].startswith("data:") for a in page.find("img"))


def test_a_png_fallback_run_and_a_csv_logger_run_give_the_same_page_as_tensorboard(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folders = {kind: write_run(tmp_path / kind, runs=3, shortcut=True, logger=kind)
                   for kind in ("tensorboard", "csv", "none")}  # fmt: skip
    pages = {kind: Page(build_report([run], tmp_path / f"{kind}.html").read_text()) for kind, run in folders.items()}
    label = {"tensorboard": "run", "csv": "run", "none": "none"}  # the folder holding cams/
    for kind, found in pages.items():
        assert found.counts(label[kind], "shortcut") == pages["tensorboard"].counts("run", "shortcut"), kind
        assert len(found.find("span", "tile", run=label[kind], image="0")) == 3, kind
        assert [r["data-kind"] for r in found.find("tr", "warning")] == ["shortcut"], kind
        assert len(found.find("figure", "timeline")) == 1, kind
    assert pages["csv"].counts("run", "accuracy") == {"val_acc": 3}  # from the CSVLogger's metrics.csv


def test_a_folder_of_run_folders_reports_each_of_them(named: Path) -> None:
    assert [run.label for run in read_runs([named])] == ["clean", "shortcut"]


def test_a_folder_logged_into_twice_shows_the_latest_fit_and_says_so(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_run(tmp_path, runs=5, shortcut=True)
        folder = write_run(tmp_path, runs=3)  # the same version folder again, e.g. version="shortcut"
    (run,) = read_runs([folder])
    assert len(run.runs) == 3 and run.warnings == []
    assert len([g for g in run.grids["gradcam"] if g is not None]) == 3
    assert any("1 earlier fit" in note for note in run.notes)


def test_a_log_without_a_record_is_read_from_tensorboard_alone_and_says_what_it_lacks(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "old"
    shutil.copytree(runs["shortcut"], folder)
    (folder / "cam_record.jsonl").unlink()
    (run,) = read_runs([folder])
    assert [r.step for r in run.runs] == [0, 10, 20, 30] and run.methods == ["gradcam", "xgradcam"]
    logged = read_events(folder).Scalars("cam_shortcut/gradcam/energy")
    assert [r.scalars["cam_shortcut/gradcam/energy"] for r in run.runs] == [pytest.approx(e.value) for e in logged]
    assert any("no cam_record.jsonl" in note for note in run.notes)


def test_degenerate_maps_logged_by_the_health_measure_are_listed_as_warnings(tmp_path: Path) -> None:
    from cam_callback._record import RunRecord

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = write_run(tmp_path, runs=2)
    record = RunRecord(folder)
    record.scalars(10, {"cam_health/gradcam/degenerate": 0.25})  # the share of degenerate maps at that run
    (run,) = read_runs([folder])
    assert [(w.step, w.kind) for w in run.warnings] == [(10, "degenerate")] and "25%" in str(run.warnings[0].message)


# ------------------------------------------------------------------------------------------------ bad input
def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cam-callback report: error: "), err
    return err


def test_a_folder_with_no_callback_data_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    err = _one_line_error(capsys, ["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")])
    assert "holds no CAMCallback data" in err and "lightning_logs/version_0" in err
    assert not (tmp_path / "r.html").exists()
    err = _one_line_error(capsys, ["report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")])
    assert "does not exist" in err


def test_a_corrupt_event_file_is_one_clear_error_and_nothing_is_written(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "corrupt"
    shutil.copytree(runs["clean"], folder)
    (events,) = folder.glob(EVENT_GLOB)
    data = bytearray(events.read_bytes())
    data[60] ^= 0xFF  # a byte of a small record (the file's first events are small)
    events.write_bytes(bytes(data))
    err = _one_line_error(capsys, ["report", str(folder), "-o", str(tmp_path / "r.html")])
    assert "is corrupt at byte" in err and events.name in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt"]  # no page, no partial file


def test_a_corrupt_record_line_is_one_clear_error_naming_the_line(runs: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(runs["clean"], folder)
    record = folder / "cam_record.jsonl"
    record.write_text("{not json\n" + record.read_text())
    with pytest.raises(InputError, match=r"cam_record.jsonl' line 1 is not a CAMCallback record line"):
        read_runs([folder])


def test_a_record_cut_short_by_a_killed_process_still_gives_a_report(runs: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "killed"
    shutil.copytree(runs["clean"], folder)
    record = folder / "cam_record.jsonl"
    record.write_text(record.read_text() + '{"type": "run", "step": 40, "ti')
    (run,) = read_runs([folder])
    assert len(run.runs) == RUNS


def test_an_output_that_cannot_be_written_fails_before_anything_is_read(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    err = _one_line_error(capsys, ["report", "/nonexistent", "-o", str(tmp_path / "file" / "r.html")])
    assert "is a file, not a folder" in err  # said before the missing RUN_DIR: nothing was read
    err = _one_line_error(capsys, ["report", str(runs["clean"]), "-o", str(tmp_path)])
    assert "is a folder" in err
    err = _one_line_error(capsys, ["report", str(runs["clean"]), "-o", "/proc/cam_report.html"])
    assert "cannot write" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_the_command_prints_what_it_reported(named: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(named / "shortcut"), str(named / "clean"), "-o", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["shortcut: 4 CAM runs of gradcam, xgradcam (steps 0-30), 1 warning",
                       "clean: 4 CAM runs of gradcam, xgradcam (steps 0-30), 0 warnings"]  # fmt: skip
    assert out[-1].startswith(f"wrote {tmp_path / 'r.html'} (")


# ------------------------------------------------------------------------------------------------ report=True
def _fit(tmp_path: Path, logger: Any = None, **options: Any) -> tuple[CAMCallback, Any]:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    callback = CAMCallback(num_images=4, report=True, **options)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_train_batches=2,
                        logger=logger if logger is not None else TensorBoardLogger(str(tmp_path), name="tb"),
                        callbacks=[callback], default_root_dir=str(tmp_path))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyNet(), datamodule=QuadrantData(n_train=32, n_val=8))
    return callback, trainer


def test_report_true_writes_the_runs_page_into_its_log_folder_at_the_end_of_fit(tmp_path: Path) -> None:
    _, trainer = _fit(tmp_path)
    folder = Path(trainer.logger.log_dir)
    page = Page((folder / "cam_report.html").read_text())
    assert len(page.find("figure", "timeline", method="gradcam")) == 1
    assert len(page.find("span", "tile", image="0")) == 2  # the baseline and the epoch
    assert page.counts("version_0", "accuracy") == {} and page.counts("version_0", "loss")["val_loss"] == 1
    assert json.loads((folder / "cam_record.jsonl").read_text().splitlines()[0])["type"] == "config"
    assert not [p for p in folder.iterdir() if ".partial-" in p.name]


def test_report_true_with_loggers_that_keep_their_files_elsewhere_fails_at_setup(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"report=True.*RecordingLogger.*add a TensorBoardLogger"):
        _fit(tmp_path, RecordingLogger())


def test_report_is_a_flag(tmp_path: Path) -> None:
    assert CAMCallback(report=True).settings.report and not CAMCallback().settings.report
    with pytest.raises(TypeError, match=r"CAMCallback\(report='yes'\): expected True or False"):
        CAMCallback(report="yes")  # type: ignore[arg-type]


def test_runs_skipped_under_the_budget_are_listed_each_with_its_step(tmp_path: Path) -> None:
    _, trainer = _fit(tmp_path, max_overhead=1e-9, every_n_steps=1)
    (run,) = read_runs([trainer.logger.log_dir])
    skipped = [w for w in run.warnings if w.kind == "skipped"]
    assert [w.step for w in skipped] == [0, 1]  # the runs due after optimizer steps 1 and 2, at their log steps
    assert "max_overhead" in str(skipped[0].message) and skipped[1].message is None  # warned once, noted each time
    assert [r.title for r in run.runs] == ["before training"]


def test_a_named_callback_writes_its_own_record_and_report(tmp_path: Path) -> None:
    _, trainer = _fit(tmp_path, name="ood")
    folder = Path(trainer.logger.log_dir)
    assert {p.name for p in folder.glob("cam_*")} == {"cam_record-ood.jsonl", "cam_report-ood.html"}
    page = Page((folder / "cam_report-ood.html").read_text())
    timelines = [(a["data-run"], a["data-method"]) for a in page.find("figure", "timeline")]
    assert timelines == [("version_0 · ood", "gradcam")]
    assert len(page.find("span", "tile", image="0")) == 2
