"""The package as users install it: a wheel built from the checkout, installed away from it, ships every module.

An editable install (the README's set-up line) imports from the checkout, so it cannot show what a wheel
leaves out. These tests build the wheel, install it without dependencies into an empty folder and, in a
Python that sees that folder and the environment's site-packages but neither the checkout nor the editable
install's finder, import every module of ``cams`` and ``cam_callback`` and run both commands' ``--help``.
The list of modules and files is read from the checkout, so a new module or data file is covered without an
edit here.
"""

from __future__ import annotations

import json
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cams", "cam_callback")
#: left out of the copy the wheel is built from: what a checkout accumulates besides its sources
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
    "lightning_logs", "explanations", "results", "out",
)


def pyproject_version() -> str:
    """``[project] version`` of pyproject.toml (read without tomllib, which Python 3.10 lacks)."""
    match = re.search(r'^\[project\]$.*?^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    assert match, "pyproject.toml has no [project] version"
    return match.group(1)


def package_files() -> list[str]:
    """Every file of the two packages in the checkout, as a path inside the wheel (``cams/methods/gradient.py``)."""
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}:
                found.append(path.relative_to(ROOT).as_posix())
    return sorted(found)


def module_names() -> list[str]:
    """Every module of the two packages in the checkout (``cams``, ``cams.methods``, ``cams.methods.gradient``).

    ``__main__`` modules are left out (importing one runs its command); the ``--help`` test runs them.
    """
    names = []
    for file in package_files():
        if file.endswith(".py") and not file.endswith("/__main__.py"):
            parts = file[: -len(".py")].split("/")
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{args}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the folder it was installed into), built from a copy of the checkout's sources."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"  # a copy, so the build writes no build/ or *.egg-info into the checkout
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES, symlinks=True)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(tmp)], source)
    (wheel,) = tmp.glob("*.whl")
    target = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)], tmp)
    return wheel, target


def _isolated_python(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -S`` with ``sys.path`` = the install folder, the standard library, the environment's site-packages.

    ``-S`` skips the ``.pth`` files, so the editable install's finder (which maps ``cams`` to the checkout) is
    not installed; the checkout is not on the path (the command runs in ``cwd``, a folder of its own).
    """
    boot = (
        "import runpy, sys; "
        f"sys.path.extend({[p for p in site.getsitepackages() if Path(p).is_dir()]!r}); "
        "sys.argv = sys.argv[1:]; "
        "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONNOUSERSITE": "1"}
    return _run([sys.executable, "-S", "-c", boot, *args], cwd, env)


def test_the_packages_are_found_not_listed() -> None:
    config = (ROOT / "pyproject.toml").read_text()
    assert "[tool.setuptools.packages.find]" in config
    assert not re.search(r"^packages\s*=", config, re.M), "list no packages by hand: new subpackages are missed"


def test_the_wheel_ships_every_file_of_both_packages(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    assert wheel.name.startswith(f"cam_callback-{pyproject_version()}-")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}
        entry_points = archive.read(f"cam_callback-{pyproject_version()}.dist-info/entry_points.txt").decode()
        licences = [name for name in archive.namelist() if name.endswith(".dist-info/licenses/LICENSE")]
    missing = sorted(set(package_files()) - shipped)
    assert not missing, f"the wheel leaves out {len(missing)} files: {missing}"
    assert not {name for name in shipped if "__pycache__" in name or name.endswith(".pyc")}
    assert {"cams/py.typed", "cam_callback/py.typed"} <= shipped
    assert "cam-callback = cam_callback.cli:main" in entry_points
    assert licences, "the wheel ships no LICENSE (pyproject's license-files)"


def test_every_module_and_the_console_script_run_from_the_installed_wheel(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    """Every module imports from the install folder; ``cam-callback --help`` runs through the wheel's entry point.

    One process for both (each would spend most of its time importing Lightning).
    """
    _, target = installed
    names = module_names()
    assert {"cams.methods.gradient", "cams.targets", "cams.metrics.road", "cam_callback.cli"} <= set(names)
    script = tmp_path / "check_install.py"
    script.write_text(
        "import contextlib, importlib, importlib.metadata, io, json, sys\n"
        f"names = {names!r}\n"
        "files = {name: importlib.import_module(name).__file__ for name in names}\n"
        "(entry,) = importlib.metadata.entry_points(group='console_scripts', name='cam-callback')\n"
        "main, out = entry.load(), io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    code = main(['--help'])\n"
        "print(json.dumps({'files': files, 'version': sys.modules['cams'].__version__,\n"
        "                  'metadata': importlib.metadata.version('cam-callback'), 'entry': entry.value,\n"
        "                  'main': sys.modules[main.__module__].__file__, 'code': code, 'help': out.getvalue()}))\n"
    )
    report = json.loads(_isolated_python(target, tmp_path, "check_install").stdout.strip().splitlines()[-1])
    outside = {name: file for name, file in report["files"].items() if not file.startswith(f"{target}/")}
    assert not outside, f"imported from outside the installed wheel: {outside}"
    assert report["version"] == report["metadata"] == pyproject_version()  # one version, pyproject.toml's
    assert (report["entry"], report["main"]) == ("cam_callback.cli:main", f"{target}/cam_callback/cli.py")
    assert report["code"] == 0 and "explain" in report["help"], report["help"]


def test_python_m_cams_answers_help_from_the_installed_wheel(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = installed
    proc = _isolated_python(target, tmp_path, "cams", "--help")
    assert "--network" in proc.stdout, proc.stdout
