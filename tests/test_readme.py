"""The README's newcomer path: every command and Python snippet runs as written, right after the set-up line.

The fast tests read the README: every command calls the virtual environment the set-up line makes (nothing
needs activating), CI runs the README's own set-up and test commands, and every Python snippet compiles.

The slow test walks the path in a fresh folder, in the README's order, each step in a subprocess and each
command exactly as the README writes it (through ``bash``, so globs expand as in a terminal): the main job
(with a short setting appended), TensorBoard (started, answered, stopped), the ``cam-callback explain``
command on the checkpoint that run saved, ``python -m cams`` on a real photo, every other command, then every
Python snippet as a script. The folder holds ``.venv`` (a link to the running environment) and ``examples``
(a link to the repository's), as a clone after the set-up line does; the set-up line itself is what CI runs.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _terminal import screen_lines

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETUP = 'python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[test]"'
#: appended to the main job's command: one short epoch (the README's run takes minutes)
SHORT_MAIN_JOB = "--epochs 1 --train-size 600 --val-size 64 --test-size 64 --num-images 8"
#: a README block preceded by this comment is not run (say why in the comment)
SKIP_MARK = "<!-- readme-test: skip"


def blocks(language: str, text: str | None = None) -> list[str]:
    """The README's fenced ``language`` blocks, in order, without those marked with :data:`SKIP_MARK`."""
    text = README.read_text() if text is None else text
    found = []
    for match in re.finditer(rf"(?P<before>[^\n]*)\n```{language}\n(?P<body>.*?)\n```", text, re.S):
        if not match.group("before").startswith(SKIP_MARK):
            found.append(match.group("body"))
    return found


def commands(text: str | None = None) -> list[str]:
    """Every command line of the README's bash blocks (continuations joined, comments dropped)."""
    lines = []
    for block in blocks("bash", text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"\s{2,}", " ", line)
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_blocks_and_commands_are_read_as_a_reader_sees_them() -> None:
    text = (
        "intro\n```bash\n# set up\n.venv/bin/a x \\\n    --y 1   # note\n```\n"
        "<!-- readme-test: skip (gpu) -->\n```bash\nb\n```\n"
    )
    assert commands(text) == [".venv/bin/a x --y 1"]


# --------------------------------------------------------------------------------------------- fast
def test_every_command_uses_the_environment_the_setup_line_makes() -> None:
    found = commands()
    assert found[0] == SETUP
    for command in found[1:]:
        assert command.startswith(".venv/bin/"), f"{command!r} needs an activated environment; write .venv/bin/..."


def test_ci_runs_the_readme_setup_and_test_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    tests = [c for c in commands() if " -m pytest" in c]
    assert tests == [".venv/bin/python -m pytest", ".venv/bin/python -m pytest --full"]
    assert SETUP in ci
    assert ".venv/bin/python -m pytest --full" in ci  # CI runs the full suite, slow tests included


def test_every_python_snippet_compiles() -> None:
    snippets = blocks("python")
    assert len(snippets) >= 4
    for snippet in snippets:
        ast.parse(snippet)


def test_readme_times_are_filled_in() -> None:
    assert not re.search(r"\bTIME_\w+|TIMES_MACHINE|SETUP_SIZE", README.read_text())


# --------------------------------------------------------------------------------------------- slow
def _run(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{command}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _tensorboard(command: str, cwd: Path, timeout: float = 120) -> str:
    """Start the README's TensorBoard command, wait until it serves, stop it; what it printed."""
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "http://" in line:
                return "".join(seen)
        pytest.fail(f"{command} did not start serving:\n{''.join(seen)[-2000:]}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return "".join(seen)


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as a clone after the set-up line: ``.venv`` and ``examples``."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "cam-callback").exists():
        pytest.skip(f"the running Python ({sys.prefix}) is not an environment with cam-callback installed")
    home = tmp_path_factory.mktemp("newcomer")
    (home / ".venv").symlink_to(venv, target_is_directory=True)
    (home / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    return home


@pytest.mark.slow
def test_a_newcomer_follows_the_readme_from_the_main_job_to_every_snippet(newcomer: Path) -> None:
    steps = [c for c in commands() if c != SETUP and " -m pytest" not in c]
    main = next(c for c in steps if "examples/cluttered_digits.py" in c)
    explain_command = next(c for c in steps if "cam-callback explain" in c)
    assert steps.index(main) < steps.index(explain_command)

    for command in steps:
        if command == main:
            out = _run(f"{command} {SHORT_MAIN_JOB}", newcomer).stdout
            lines = [line for line in screen_lines(out) if line.strip()]
            assert lines[0].startswith("Training DigitNet"), out[:500]  # before any data or training
            assert any(line.startswith("epoch 1 ") for line in lines), out[-2000:]
            assert (newcomer / "lightning_logs/version_0/checkpoints/last.ckpt").is_file()
            # it ends by printing the README's explain command for what it saved
            assert lines[-1].strip() == explain_command, lines[-3:]
        elif command.startswith(".venv/bin/tensorboard"):
            assert "http://" in _tensorboard(command, newcomer)
        else:
            proc = _run(command, newcomer)
            if command == explain_command:
                canvases = sorted((newcomer / "lightning_logs/version_0/test_canvases").glob("*.png"))
                assert len(canvases) == 4
                for canvas in canvases:
                    line = rf"{canvas.name}: class \d+ \(logit [-\d.e+]+, probability [\d.e-]+\)"
                    assert re.search(line, proc.stdout), proc.stdout
                assert {f"{c.stem}-xgradcam-overlay.png" for c in canvases} <= set(
                    os.listdir(newcomer / "explanations")
                )
            elif "-m cams" in command and "--image-path cat.png" in command:
                network = shlex.split(command)[shlex.split(command).index("--network") + 1]
                assert re.search(rf"{network} layer \S+: class \d+ \(logit", proc.stdout), proc.stdout
                assert "untrained" in proc.stdout or "--weight-path" in command
                if "scorecam" in command or "ablationcam" in command:
                    assert "forwards (100%)" in proc.stderr  # the perturbation methods tell how far they are

    assert (newcomer / "results" / "cat-resnet18-cam.jpg").is_file()  # python -m cams on a real photo

    for i, snippet in enumerate(blocks("python")):
        script = newcomer / f"readme_snippet_{i}.py"
        script.write_text(snippet + "\n")
        _run(f".venv/bin/python {script.name}", newcomer)
