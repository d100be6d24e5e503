"""The packages' structure: no import cycle, no module over 500 lines, no private name shared across ``cams``.

Imports are read with :mod:`ast` from the source, every one of them: at module level, under
``if TYPE_CHECKING:`` and inside functions. Importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b``
too, so it counts as importing those packages as well, unless the importer is itself inside them (their
``__init__`` is then already running).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500

#: another engineer restructures ``cam_callback`` in parallel; these become plain tests once that is merged


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name → source file, for every module of ``package`` (``__init__.py`` names the package)."""
    base = ROOT / package
    found = {}
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _absolute(module: str, path: Path, level: int, target: str | None) -> str:
    """The absolute name of a (possibly relative) ``from`` import's module."""
    if level == 0:
        return target or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imported(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """The modules of ``known`` that ``module``'s imports name, anywhere in its source.

    ``from m import n`` names ``m``, and ``m.n`` too when that is a module.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, path, node.level, node.module)
            if source in known:
                yield source
            yield from (f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known)


def _executed(importer: str, imported: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``importer`` importing ``imported`` runs: ``imported`` itself and the
    packages above it, except those the importer is inside (their ``__init__`` is already running)."""
    parts = imported.split(".")
    above = {".".join(parts[:n]) for n in range(1, len(parts))}
    return ({imported} | {p for p in above & known if not importer.startswith(p + ".")}) - {importer}


def import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module → the modules of ``packages`` it makes Python run (see the module docstring)."""
    files = {name: path for package in packages for name, path in _modules(package).items()}
    known = set(files)
    return {
        name: {m for imported in _imported(name, path, known) for m in _executed(name, imported, known)}
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_find_cycle_names_the_modules_of_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_importing_a_submodule_runs_the_packages_above_it_but_not_the_importers_own() -> None:
    known = {"p", "p.q", "p.q.r", "p.s"}
    assert _executed("p.s", "p.q.r", known) == {"p.q", "p.q.r"}
    assert _executed("p.q.r", "p.q", known) == {"p.q"}
    assert _executed("x", "p.q.r", known) == {"p", "p.q", "p.q.r"}


def test_cams_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(("cams",)))
    assert cycle is None, f"import cycle in cams: {' -> '.join(cycle or [])}"


def test_cam_callback_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(("cams", "cam_callback")))
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_only_the_callback_module_and_the_package_import_the_callback_class() -> None:
    importers = sorted(
        name
        for name, path in _modules("cam_callback").items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and any(alias.name == "CAMCallback" for alias in node.names)
    )
    assert importers == ["cam_callback"], importers  # the package re-exports it; callback.py defines it


def _long_modules(package: str) -> list[str]:
    lines = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in _modules(package).items()}
    return [f"{name} ({n} lines)" for name, n in lines.items() if n > MAX_LINES]


def test_no_cams_module_is_over_500_lines() -> None:
    assert _long_modules("cams") == []


def test_no_cam_callback_module_is_over_500_lines() -> None:
    assert _long_modules("cam_callback") == []


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_imports(package: str) -> list[str]:
    """What each module of ``package`` imports that is private to another module: ``_name``s, and private
    modules of a package it is not inside.

    A private module of a package (``cams.targets._common``) holds what that package's modules share: its
    public names may be imported from inside the package, not from outside it.
    """
    files = _modules(package)
    found = []
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                sources, names = [alias.name for alias in node.names], []
            elif isinstance(node, ast.ImportFrom):
                sources = [_absolute(module, path, node.level, node.module)]
                names = [alias.name for alias in node.names]
            else:
                continue
            for source in sources:
                parts = source.split(".")
                if parts[0] != package:
                    continue
                private_at = next((n for n, part in enumerate(parts) if _is_private(part)), None)
                owner = ".".join(parts[:private_at]) if private_at is not None else None
                if owner is not None and module != owner and not module.startswith(owner + "."):
                    found.append(f"{module} imports the private module {source}")
                found += [f"{module} imports {source}.{n}" for n in names
                          if _is_private(n) and f"{source}.{n}" not in files]  # fmt: skip
    return found


def test_private_names_and_modules_are_found() -> None:
    assert _is_private("_expand_rows") and not _is_private("__version__") and not _is_private("expand_rows")


def test_cams_modules_import_no_private_name_from_each_other() -> None:
    assert _private_imports("cams") == []
