"""``cam-callback`` command line: ``cam-callback explain CKPT IMAGE [IMAGE ...] --output-dir DIR`` and
``cam-callback report RUN_DIR [RUN_DIR ...] -o report.html``.

``explain`` runs :func:`cam_callback.explain.explain` on a checkpoint saved by a ``Trainer`` with a
``CAMCallback`` and writes, for each image stem and method, ``<stem>-<method>-heatmap.png`` and
``<stem>-<method>-overlay.png``, plus ``<method>.npy`` (all maps, float32 ``(B, H, W)``) and
``explanation.json`` (classes, scores, layers). Everything is computed before anything is written and
the files are moved into ``--output-dir`` together.

``report`` writes one self-contained HTML page of the runs (:func:`cam_callback.report.build_report`), read from
what their callbacks logged, side by side; the page is written whole or not at all.

Exit codes: 0 done; 2 bad input (missing file, not an image, unreadable or unsafe checkpoint, unknown
method or layer, class id out of range; a folder with no callback data, a corrupt event file, an output that
cannot be written), reported in one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cam_callback._pictures import Preprocess
from cam_callback.explain import explain
from cam_callback.report import read_runs
from cam_callback.report.page import render_page
from cams import METHODS
from cams.io import (
    InputError,
    OneLineParser,
    ProgressPrinter,
    check_output_dir,
    check_output_file,
    exit_code,
    write_file,
)

__all__ = ["build_parser", "main"]

PROG = "cam-callback"


def build_parser() -> argparse.ArgumentParser:
    """The ``cam-callback`` parser with its ``explain`` subcommand.

    Example:
        >>> args = build_parser().parse_args(["explain", "last.ckpt", "cat.png", "--output-dir", "out"])
        >>> args.images, args.method, args.aug_smooth
        (['cat.png'], None, None)
    """
    from cams import __version__

    parser = OneLineParser(prog=PROG, description="Class activation maps for Lightning checkpoints.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    ex = commands.add_parser(
        "explain",
        help="CAM images for a checkpoint saved with a CAMCallback",
        description="Write heat maps, overlays and raw maps of CKPT's model for each IMAGE.",
        epilog="Files: <stem>-<method>-heatmap.png, <stem>-<method>-overlay.png, <method>.npy, explanation.json.",
    )
    ex.add_argument("checkpoint", metavar="CKPT", help="checkpoint written by a Trainer with a CAMCallback")
    ex.add_argument("images", metavar="IMAGE", nargs="+", help="image files (any format Pillow reads)")
    ex.add_argument("--method", help=f"one of {', '.join(METHODS)} (default: the checkpoint's methods)")
    ex.add_argument("--methods", nargs="+", metavar="METHOD", help="more methods")
    ex.add_argument(
        "--class-id", type=int, help="class to explain (default: the callback's fixed class, else the predicted one)"
    )
    ex.add_argument(
        "--target",
        metavar="SPEC",
        help="what to explain instead of a class: seg:CLASS (a segmentation class over its predicted mask), "
        "multilabel:CLASS, multilabel:all (every class above probability 0.5), multilabel:all@THRESHOLD",
    )
    ex.add_argument(
        "--target-layers",
        "--target-layer",
        dest="target_layers",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="dotted layer name(s) (default: the checkpoint's layers)",
    )
    ex.add_argument(
        "--score",
        choices=("logit", "probability"),
        default="logit",
        help="what the maps explain: the class's logit (default) or its softmax probability; both are printed",
    )
    ex.add_argument(
        "--aug-smooth",
        dest="aug_smooth",
        action=argparse.BooleanOptionalAction,
        help="test-time augmentation smoothing (default: as the callback was set)",
    )
    ex.add_argument(
        "--eigen-smooth",
        dest="eigen_smooth",
        action=argparse.BooleanOptionalAction,
        help="principal-component smoothing (default: as the callback was set)",
    )
    ex.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    ex.add_argument("--output-dir", required=True, metavar="DIR", help="folder for the files (created)")
    ex.add_argument(
        "--model-class",
        metavar="CLASS",
        help="the LightningModule class: path/to/script.py:ClassName or package.module.ClassName "
        "(default: the class the checkpoint names, imported by name or loaded from the script that defined it)",
    )
    ex.add_argument(
        "--callback",
        metavar="NAME",
        help="which CAMCallback's settings to use, for a checkpoint of a Trainer with several (their names)",
    )
    ex.add_argument(
        "--trusted",
        action="store_true",
        help="load the checkpoint with full unpickling (weights_only=False); only for files you trust",
    )
    rep = commands.add_parser(
        "report",
        help="one HTML page of runs trained with a CAMCallback, side by side",
        description="Write one self-contained HTML page (images embedded, nothing loaded from the network) of each "
        "RUN_DIR's attention: timelines, charts over the training steps, each fixed image over the runs, the "
        "warnings and the configuration, read from what the callback logged.",
    )
    rep.add_argument(
        "run_dirs",
        metavar="RUN_DIR",
        nargs="+",
        help="a run's log folder (lightning_logs/version_0, or the callback's PNG folder), or a folder of them",
    )
    rep.add_argument("-o", "--output", required=True, metavar="FILE", help="the HTML file to write, e.g. report.html")
    rep.add_argument("--title", help="the page's title (default: the runs' names)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cam-callback`` with ``argv`` (default ``sys.argv[1:]``) → exit code (0, or 2 on bad input).

    Example:
        >>> main(["explain", "/nonexistent.ckpt", "cat.png", "--output-dir", "out"])
        2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (one line on stderr) and --help / --version
        return exit_code(exc)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"{PROG} {args.command}"
    try:
        lines = _report(args) if args.command == "report" else _explain(args)
    except (InputError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


def _explain(args: argparse.Namespace) -> list[str]:
    if args.target is not None and args.class_id is not None:
        raise InputError(
            f"give --class-id or --target, not both (got --class-id {args.class_id} --target {args.target})"
        )
    out_dir = check_output_dir(args.output_dir)
    result = explain(
        args.checkpoint,
        list(args.images),
        [*([args.method] if args.method else []), *(args.methods or [])],
        target=args.target if args.target is not None else args.class_id,
        target_layers=args.target_layers,
        score=args.score,
        aug_smooth=args.aug_smooth,
        eigen_smooth=args.eigen_smooth,
        model=args.model_class,
        trusted=args.trusted,
        callback=args.callback,
        preprocess=Preprocess(device=args.device),
        progress=ProgressPrinter(),
    )
    files = result.save(out_dir)
    lines = [
        f"{image}: {f'class {int(c)}' if int(c) >= 0 or not result.target else result.target} "
        + (f"(logit {float(s):.4g}, probability {float(p):.3g})" if p == p else f"(score {float(s):.4g})")
        for image, c, s, p in zip(args.images, result.classes, result.scores, result.probabilities, strict=True)
    ]
    lines.append(
        f"methods {', '.join(result.methods)} on layer {', '.join(result.target_layers)}, explaining each "
        f"class's {result.score}: "
        f"wrote {len(files)} files to {out_dir}"
    )
    return lines


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _report(args: argparse.Namespace) -> list[str]:
    check_output_file(args.output)  # before anything is read
    runs = read_runs(args.run_dirs)
    path = write_file(args.output, render_page(runs, args.title).encode("utf-8"))
    lines = [
        f"{run.label}: {_count(len(run.runs), 'CAM run')} of {', '.join(run.methods)} (steps {run.runs[0].step}-"
        f"{run.runs[-1].step}), {_count(sum(w.message is not None for w in run.warnings), 'warning')}"
        for run in runs
    ]
    return [*lines, f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)"]


if __name__ == "__main__":
    raise SystemExit(main())
