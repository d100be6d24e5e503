"""The README and the ``docs/`` pages: every command and Python snippet runs as written, right after the set-up line.

The fast tests read the pages: every command calls the virtual environment the set-up line makes (nothing
needs activating), CI runs the README's own set-up and test commands, every Python snippet compiles, the
README stays a quick tour that links every page of ``docs/``, every relative link and anchor resolves, and
every block the walk skips says why.

The slow test walks the path in a fresh folder: the README first, then each page of ``docs/`` in name order,
each block in the page's order, each step in a subprocess and each command exactly as the page writes it
(through ``bash``, so globs expand as in a terminal): the main job (with a short setting appended), TensorBoard
(started, answered, stopped), the ``cam-callback explain`` command on the checkpoint that run saved,
``python -m cams`` on a real photo, every other command, and every Python snippet as a script. The folder holds
``.venv`` (a link to the running environment) and ``examples`` (a link to the repository's), as a clone after
the set-up line does; the set-up line itself, the linter and the test suites are what CI runs (``.ci/run``).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _terminal import screen_lines

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SETUP = 'python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[test]"'
#: the README may grow to this many lines: a quick tour (torchcam's README has 314, pytorch-grad-cam's 393)
README_MAX_LINES = 300
#: appended to an example's command in the walk: the pages' runs take minutes each
SHORT_SETTINGS = {
    "examples/cluttered_digits.py": "--epochs 1 --train-size 600 --val-size 64 --test-size 64 --num-images 8",
    "examples/shortcut.py": "--epochs 1 --train-size 300 --val-size 64",
    "examples/volumes.py": "--epochs 1 --train-size 64 --val-size 16 --num-images 8",
}
#: what the walk leaves to CI, which runs it in the repository itself (.ci/run): the set-up, linter and suites
CI_COMMANDS = (
    SETUP,
    ".venv/bin/ruff check .",
    ".venv/bin/python -m pytest",
    ".venv/bin/python -m pytest --full",
)
#: a block preceded by this comment is not run (say why in the comment, in parentheses)
SKIP_MARK = "<!-- readme-test: skip"
_FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<language>\w*)\n(?P<body>.*?)\n```", re.S)
#: ``VAR=value`` assignments before a command (``OMP_NUM_THREADS=1 .venv/bin/python ...``)
_ENV_PREFIX = re.compile(r"^(?:\w+=\S*\s+)*")


def pages() -> list[Path]:
    """The README, then every page of ``docs/`` in name order: the walk's order."""
    return [README, *sorted(DOCS.glob("*.md"))]


def _fenced(text: str, skipped: bool = False) -> Iterator[tuple[str, str]]:
    """``(language, body)`` of each fenced block in order; with ``skipped``, the blocks marked with SKIP_MARK too."""
    for match in _FENCE.finditer(text):
        if skipped or not match.group("before").startswith(SKIP_MARK):
            yield match.group("language"), match.group("body")


def _command_lines(block: str) -> list[str]:
    """The command lines of a bash block: continuations joined, comments and extra spaces dropped."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        line = re.sub(r"\s{2,}", " ", line)
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def blocks(language: str, text: str | None = None, skipped: bool = False) -> list[str]:
    """A page's fenced ``language`` blocks (default: the README's), in order, without those marked with SKIP_MARK."""
    text = README.read_text() if text is None else text
    return [body for lang, body in _fenced(text, skipped) if lang == language]


def commands(text: str | None = None, skipped: bool = False) -> list[str]:
    """Every command line of a page's bash blocks (default: the README's)."""
    return [line for block in blocks("bash", text, skipped) for line in _command_lines(block)]


def steps(text: str) -> list[tuple[str, str]]:
    """What a reader of the page runs, in the page's order: ``("bash", command)`` and ``("python", snippet)``."""
    found: list[tuple[str, str]] = []
    for language, body in _fenced(text):
        if language == "bash":
            found += [("bash", line) for line in _command_lines(body)]
        elif language == "python":
            found.append(("python", body))
    return found


def example_run(command: str) -> str | None:
    """The example a command runs (``examples/shortcut.py`` for ``.venv/bin/python examples/shortcut.py``), or None."""
    words = shlex.split(_ENV_PREFIX.sub("", command))
    if len(words) > 1 and words[0] == ".venv/bin/python" and words[1].startswith("examples/"):
        return words[1]
    return None


def all_commands(skipped: bool = True) -> list[tuple[str, str]]:
    """``(page name, command)`` for every command of every page."""
    return [(page.name, command) for page in pages() for command in commands(page.read_text(), skipped)]


def test_blocks_and_commands_are_read_as_a_reader_sees_them() -> None:
    text = (
        "intro\n```bash\n# set up\n.venv/bin/a x \\\n    --y 1   # note\n```\n"
        "<!-- readme-test: skip (gpu) -->\n```bash\nb\n```\n"
        "```python\nprint(1)\n```\n```\nplain\n```\n"
    )
    assert commands(text) == [".venv/bin/a x --y 1"]
    assert commands(text, skipped=True) == [".venv/bin/a x --y 1", "b"]
    assert steps(text) == [("bash", ".venv/bin/a x --y 1"), ("python", "print(1)")]


# --------------------------------------------------------------------------------------------- fast
def test_every_command_uses_the_environment_the_setup_line_makes() -> None:
    found = all_commands()
    assert found[0] == ("README.md", SETUP)
    for page, command in found[1:]:
        assert command != SETUP, f"{page}: the set-up line belongs to the README alone"
        bare = _ENV_PREFIX.sub("", command)
        assert bare.startswith(".venv/bin/"), f"{page}: {command!r} needs an activated environment; write .venv/bin/..."


def test_ci_runs_the_readme_setup_and_test_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    tests = [c for c in commands() if " -m pytest" in c]
    assert tests == [".venv/bin/python -m pytest", ".venv/bin/python -m pytest --full"]
    assert SETUP in ci
    assert ".venv/bin/python -m pytest --full" in ci  # CI runs the full suite, slow tests included


def test_what_the_walk_leaves_to_ci_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in CI_COMMANDS:
        assert command in ci or command == ".venv/bin/python -m pytest", f".ci/run does not run {command!r}"
    for page, command in all_commands():
        if " -m pytest" in command or "/ruff" in command:
            assert command in CI_COMMANDS, f"{page}: the walk leaves {command!r} to CI, which does not run it"


def test_every_example_the_pages_run_has_a_short_setting() -> None:
    runs = [(page, command, example_run(command)) for page, command in all_commands(skipped=False)]
    assert {script for _, _, script in runs} >= {"examples/cluttered_digits.py", "examples/shortcut.py"}
    for page, command, script in runs:
        assert script is None or script in SHORT_SETTINGS, f"{page}: {command!r} would train at full length"


def test_every_python_snippet_compiles() -> None:
    assert len(blocks("python")) >= 2  # the README: the callback and the engine
    for page in pages():
        for snippet in blocks("python", page.read_text(), skipped=True):
            try:
                ast.parse(snippet)
            except SyntaxError as error:
                pytest.fail(f"{page.name}: {error}\n{snippet}")


def test_readme_times_are_filled_in() -> None:
    for page in pages():
        assert not re.search(r"\bTIME_\w+|TIMES_MACHINE|SETUP_SIZE", page.read_text()), page.name


def test_readme_is_a_quick_tour() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details to docs/"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", README.read_text()))
    missing = sorted(f"docs/{page.name}" for page in DOCS.glob("*.md") if f"docs/{page.name}" not in linked)
    assert not missing, f"README.md links no {missing}"


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", text, re.M)
    }


def test_every_relative_link_and_anchor_resolves() -> None:
    for page in pages():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: the link {target!r} goes nowhere"
            if anchor:
                assert anchor in _anchors(linked), f"{page.name}: {linked.name} has no heading #{anchor}"


def test_every_skipped_block_says_why() -> None:
    for page in pages():
        for line in page.read_text().splitlines():
            if line.startswith(SKIP_MARK):
                assert re.fullmatch(rf"{re.escape(SKIP_MARK)} \(.{{10,}}\) -->", line), f"{page.name}: {line}"


# --------------------------------------------------------------------------------------------- slow
def _run(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{command}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _tensorboard(command: str, cwd: Path, timeout: float = 120) -> str:
    """Start the page's TensorBoard command, wait until it serves, stop it; what it printed."""
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


def _check_main_job(out: str, home: Path, explain_command: str) -> None:
    lines = [line for line in screen_lines(out) if line.strip()]
    assert lines[0].startswith("Training DigitNet"), out[:500]  # before any data or training
    assert any(line.startswith("epoch 1 ") for line in lines), out[-2000:]
    assert (home / "lightning_logs/version_0/checkpoints/last.ckpt").is_file()
    # it ends by printing the README's explain command for what it saved
    assert lines[-1].strip() == explain_command, lines[-3:]


def _check_explain_command(out: str, home: Path) -> None:
    canvases = sorted((home / "lightning_logs/version_0/test_canvases").glob("*.png"))
    assert len(canvases) == 4
    for canvas in canvases:
        line = rf"{canvas.name}: class \d+ \(logit [-\d.e+]+, probability [\d.e-]+\)"
        assert re.search(line, out), out
    assert {f"{c.stem}-xgradcam-overlay.png" for c in canvases} <= set(os.listdir(home / "explanations"))


def _check_python_m_cams(command: str, proc: subprocess.CompletedProcess[str]) -> None:
    words = shlex.split(command)
    network = words[words.index("--network") + 1]
    assert re.search(rf"{network} layer \S+: class \d+ \(logit", proc.stdout), proc.stdout
    assert "untrained" in proc.stdout or "--weight-path" in command
    if "scorecam" in command or "ablationcam" in command:
        assert "forwards (100%)" in proc.stderr  # the perturbation methods tell how far they are


@pytest.mark.slow
def test_a_newcomer_follows_the_readme_and_every_docs_page(newcomer: Path) -> None:
    readme = [command for kind, command in steps(README.read_text()) if kind == "bash"]
    main = next(c for c in readme if example_run(c) == "examples/cluttered_digits.py")
    explain_command = next(c for c in readme if "cam-callback explain" in c)
    assert readme.index(main) < readme.index(explain_command)

    ran: list[str] = []
    for page in pages():
        for i, (kind, step) in enumerate(steps(page.read_text())):
            if kind == "python":
                script = newcomer / f"{page.stem.lower()}_snippet_{i}.py"
                script.write_text(step + "\n")
                _run(f".venv/bin/python {script.name}", newcomer)
            elif step in CI_COMMANDS:
                continue  # CI runs it in the repository (.ci/run)
            elif step.startswith(".venv/bin/tensorboard"):
                assert "http://" in _tensorboard(step, newcomer)
            else:
                script = example_run(step)
                proc = _run(f"{step} {SHORT_SETTINGS[script]}" if script else step, newcomer)
                if step == main:
                    _check_main_job(proc.stdout, newcomer, explain_command)
                elif step == explain_command:
                    _check_explain_command(proc.stdout, newcomer)
                elif "-m cams" in step and "--image-path cat.png" in step:
                    _check_python_m_cams(step, proc)
                elif script == "examples/shortcut.py":
                    assert "shortcut run" in proc.stdout and "clean run" in proc.stdout, proc.stdout[-2000:]
            ran.append(f"{page.name}: {kind} {step.splitlines()[0]}")

    assert {step.split(":")[0] for step in ran} >= {"README.md", "explain.md", "tasks.md", "transformers.md"}
    assert (newcomer / "results" / "cat-resnet18-cam.jpg").is_file()  # python -m cams on a real photo
