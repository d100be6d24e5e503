"""Where a checkpoint's LightningModule class comes from: an import path, or the script that defined it.

A class defined in a training script is ``__main__.DigitNet`` while it trains, a name no other process
can import. So the callback records, beside ``module_class``, the file that defined the class
(:func:`source_of`), and :func:`find_class` loads the class back from that file when the import path
does not work: at the recorded absolute path, else at the recorded relative path from the current
folder or from any folder above the checkpoint (the project moved, the run was copied).

A script is loaded as a module named ``__cam_callback_script__`` plus its stem, the way ``multiprocessing``
loads a main script in a child process: its top level runs (imports, definitions), the code under
``if __name__ == "__main__":`` does not. The script's folder is on ``sys.path`` while it loads, as it is
when the script runs, so it may import the modules beside it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from cams.io import InputError

__all__ = ["find_class", "import_class", "load_class", "source_of"]

FLAG = "--model-class"
"""The command-line flag that names the class (``cam-callback explain``)."""


def source_of(cls: type) -> dict[str, str]:
    """``{"module_file": absolute path, "module_file_relative": path from the current folder}`` of ``cls``.

    The relative path is left out when the file is not under the current folder; an empty dict is
    returned for classes without a source file (built in, or made in a REPL).

    Example:
        >>> from cam_callback import CAMCallback
        >>> source_of(CAMCallback)["module_file"].endswith("callback.py")
        True
    """
    try:
        file = inspect.getsourcefile(cls)
    except TypeError:
        file = None
    if not file or not os.path.isfile(file):
        return {}
    path = Path(file).resolve()
    found = {"module_file": str(path)}
    with contextlib.suppress(ValueError):
        found["module_file_relative"] = path.relative_to(Path.cwd().resolve()).as_posix()
    return found


def import_class(path: str, key: str) -> type[nn.Module]:
    """Import ``package.module.ClassName``; ``key`` names where the path came from in error messages."""
    if not isinstance(path, str) or "." not in path:
        raise InputError(
            f"{key} is not an import path 'package.module.ClassName' nor 'path/to/script.py:ClassName'"
        )
    if path.startswith("__main__."):
        raise InputError(
            f"{key} was defined in a script, which cannot be imported by name; name the script instead: "
            f"{FLAG} path/to/script.py:{path.split('.', 1)[1]} (Python: model='path/to/script.py:"
            f"{path.split('.', 1)[1]}')"
        )
    parts = path.split(".")
    error: BaseException | None = None
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            error = error or exc
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError as exc:
            raise InputError(f"{key} cannot be found ({exc})") from exc
        return _module_class(obj, key)
    raise InputError(
        f"{key} cannot be imported ({error}); make its package importable (install it or set PYTHONPATH), "
        f"or name the file: {FLAG} path/to/file.py:{parts[-1]} (Python: model=)"
    ) from error


def load_class(spec: str, key: str, default_name: str | None = None) -> type[nn.Module]:
    """The class named by ``spec``: ``path/to/script.py:ClassName``, ``path/to/script.py`` (the class is
    ``default_name``) or an import path ``package.module.ClassName``.

    Example:
        >>> load_class("cam_callback.callback.CAMCallback", "--model-class")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cams.io.InputError: --model-class 'cam_callback.callback.CAMCallback' is not an nn.Module class...
    """
    file, _, name = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
    if not file.endswith(".py"):
        return import_class(spec, f"{key} {spec!r}")
    name = name or (default_name or "")
    if not name:
        raise InputError(f"{key} {spec!r}: name the class too, as path/to/script.py:ClassName")
    path = Path(file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key} {spec!r}: no such file {str(path)!r}")
    return _class_from_file(path, name, f"{key} {spec!r}")


def find_class(state: Mapping[str, Any], ckpt: str | os.PathLike[str], key: str) -> type[nn.Module]:
    """The class a checkpoint's ``cam_callback`` state names: imported by name, else loaded from its file.

    ``key`` names the state in error messages. The file is looked for at the recorded absolute path,
    then at the recorded relative path from the current folder and from each folder above ``ckpt``.
    """
    path = state.get("module_class")
    if not isinstance(path, str) or not path:
        raise InputError(f"{key} has no 'module_class'; pass {FLAG} path/to/script.py:ClassName (Python: model=)")
    name = path.rsplit(".", 1)[-1]
    from_script = path.startswith("__main__.")
    import_error: InputError | None = None
    if not from_script:
        try:
            return import_class(path, f"{key}['module_class'] = {path!r}")
        except InputError as exc:
            import_error = exc
    file = _locate(state, ckpt)
    if file is not None:
        try:
            return _class_from_file(file, name, f"{key}['module_file'] = {str(file)!r}")
        except InputError as exc:
            if import_error is None:
                raise
            raise InputError(f"{import_error}; nor can the file it was defined in give it: {exc}") from exc
    recorded = state.get("module_file")
    if import_error is not None and recorded is None:
        raise import_error
    where = f"the script {recorded!r}" if recorded else "a script"
    relative = state.get("module_file_relative")
    also = f" (nor at {relative!r} from the current folder or the checkpoint's folders)" if relative else ""
    shown = relative or (Path(recorded).name if recorded else "path/to/script.py")
    cause = f"{path!r} cannot be imported by name and was defined in {where}" if import_error else (
        f"{path!r} was defined in {where}"
    )
    raise InputError(
        f"{key}['module_class'] = {cause}, which is not there now{also}; name the file that defines it: "
        f"{FLAG} {shown}:{name} (Python: model='{shown}:{name}')"
    )


# ---------------------------------------------------------------------- helpers
def _locate(state: Mapping[str, Any], ckpt: str | os.PathLike[str]) -> Path | None:
    recorded, relative = state.get("module_file"), state.get("module_file_relative")
    candidates: list[Path] = []
    if isinstance(recorded, str) and recorded:
        candidates.append(Path(recorded))
    if isinstance(relative, str) and relative:
        candidates.append(Path.cwd() / relative)
        candidates.extend(folder / relative for folder in Path(ckpt).resolve().parents)
    return next((c for c in candidates if c.is_file()), None)


def _class_from_file(path: Path, name: str, key: str) -> type[nn.Module]:
    module = _load_script(path.resolve(), key)
    obj: Any = module
    try:
        for part in name.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise InputError(f"{key}: the file defines no class {name!r}") from exc
    return _module_class(obj, key)


def _load_script(path: Path, key: str) -> Any:
    """Run ``path`` as a module that is not ``__main__`` (once per file and modification time)."""
    stem = re.sub(r"\W", "_", path.stem)
    name = f"__cam_callback_script__{stem}"
    loaded = sys.modules.get(name)
    stamp = path.stat().st_mtime_ns
    if loaded is not None and getattr(loaded, "__file__", None) == str(path) and loaded.__dict__.get(
        "__cam_callback_mtime__"
    ) == stamp:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{key}: cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__cam_callback_mtime__"] = stamp
    sys.modules[name] = module  # dataclasses and pickling look classes up here while the module runs
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise InputError(f"{key}: running the file failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module


def _module_class(obj: Any, key: str) -> type[nn.Module]:
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise InputError(f"{key} is not an nn.Module class")
    return obj
