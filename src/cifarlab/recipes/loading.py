"""Finding a recipe's code from what the user wrote after --recipe.

    fast                        a registered name: built in, or added by an installed
                                package through the entry-point group `cifarlab.recipes`
    path/to/my_recipe.py        a Python file anywhere; the Recipe subclass it defines
    path/to/recipes.py:NAME     ... the one named NAME (class name or recipe name)
    package.module:NAME         a module on the Python path, and its recipe NAME

A run's config.json saves the spec (a file's absolute path) and a SHA-256 digest of the
file the recipe came from, so every later command on the run loads the same code and can
tell when the file changed (`RecipeSource.changed_from`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from pathlib import Path

from ..errors import ConfigError

ENTRY_POINT_GROUP = "cifarlab.recipes"


@dataclass(frozen=True)
class RecipeSource:
    """Where a recipe's code came from."""

    spec: str  # what config.json saves and later commands resolve again
    kind: str  # builtin | entry_point | file | module
    file: str | None = None  # the file digested (absolute), None for built-in recipes
    sha256: str | None = None
    changed_from: str | None = None  # the digest a saved run recorded, when it differs

    def to_dict(self) -> dict:
        return {"kind": self.kind, "file": self.file, "sha256": self.sha256}


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def looks_like_file(spec: str) -> bool:
    return spec.split(":")[0].endswith(".py") or "/" in spec or "\\" in spec


def resolve(spec: str, registry: dict, builtin_names: set[str]) -> tuple[type, RecipeSource]:
    """The recipe class `spec` names, and where it came from. One-line ConfigError when the
    spec finds nothing, or the code found raises or defines no recipe."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"--recipe {spec!r}: give a recipe name, a .py file or module:NAME")
    spec = spec.strip()
    if spec in registry:
        cls = registry[spec]
        kind = "builtin" if spec in builtin_names else "registered"
        return cls, RecipeSource(spec, kind, *_class_file(cls, kind))
    if looks_like_file(spec):
        return _from_file(spec, registry)
    if ":" in spec:
        return _from_module(spec, registry)
    found = _entry_point(spec)
    if found is not None:
        return found
    names = sorted(registry) + sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    raise ConfigError(f"unknown recipe {spec!r}: available {', '.join(dict.fromkeys(names))}; "
                      "or a recipe file (path/to/recipe.py) or module (package.module:NAME)")  # fmt: skip


def _class_file(cls: type, kind: str) -> tuple[str | None, str | None]:
    if kind == "builtin":
        return None, None  # the package's own code: its version is the package's
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    return (str(Path(path).resolve()), file_digest(path)) if path else (None, None)


def _split_name(spec: str) -> tuple[str, str | None]:
    if ":" in spec:
        where, _, name = spec.rpartition(":")
        if where and not where.endswith((":", "\\")):  # not a Windows drive letter alone
            return where, name or None
    return spec, None


_LOADED_FILES: dict[tuple[str, str], object] = {}  # (path, digest) -> module: import once


def _from_file(spec: str, registry: dict) -> tuple[type, RecipeSource]:
    where, name = _split_name(spec)
    path = Path(where).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise ConfigError(f"recipe file {where}: {what}")
    path = path.resolve()
    try:
        digest = file_digest(path)
    except OSError as e:
        raise ConfigError(f"recipe file {path}: cannot read ({e.strerror or e})") from None
    module = _LOADED_FILES.get((str(path), digest))
    if module is None:
        module_name = f"cifarlab_recipe_file_{digest[:16]}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"recipe file {path}: not a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # dataclasses and type hints look modules up by name
        try:
            loader_spec.loader.exec_module(module)
        except BaseException as e:  # any error in the user's file: say it in one line
            sys.modules.pop(module_name, None)
            if isinstance(e, KeyboardInterrupt):
                raise
            raise ConfigError(
                f"recipe file {path} raised on import: {_where_it_raised(e, path)}"
            ) from None
        _LOADED_FILES[(str(path), digest)] = module
    cls = _pick_recipe(module, name, f"recipe file {path}")
    full = f"{path}:{name}" if name else str(path)
    return cls, RecipeSource(full, "file", str(path), digest)


def _from_module(spec: str, registry: dict) -> tuple[type, RecipeSource]:
    module_name, name = _split_name(spec)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ConfigError(
                f"recipe module {module_name}: no such module on the Python path"
            ) from None
        raise ConfigError(f"recipe module {module_name} raised on import: {e}") from None
    except Exception as e:
        raise ConfigError(
            f"recipe module {module_name} raised on import: {type(e).__name__}: {e}"
        ) from None
    cls = _pick_recipe(module, name, f"recipe module {module_name}")
    path = getattr(module, "__file__", None)
    file = str(Path(path).resolve()) if path else None
    return cls, RecipeSource(spec, "module", file, file_digest(path) if path else None)


def _entry_point(name: str) -> tuple[type, RecipeSource] | None:
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        return None
    ep = matches[0]
    try:
        loaded = ep.load()
    except Exception as e:
        raise ConfigError(f"recipe {name!r} (entry point {ep.value}) raised on import: "
                          f"{type(e).__name__}: {e}") from None  # fmt: skip
    module = sys.modules.get(getattr(loaded, "__module__", ""), None)
    cls = _pick_recipe(module, None, f"entry point {name} = {ep.value}", candidate=loaded)
    path = getattr(module, "__file__", None)
    file = str(Path(path).resolve()) if path else None
    return cls, RecipeSource(name, "entry_point", file, file_digest(path) if path else None)


def _pick_recipe(module, name: str | None, where: str, candidate=None) -> type:
    from . import Recipe

    def is_recipe(obj) -> bool:
        return isinstance(obj, type) and issubclass(obj, Recipe) and obj is not Recipe

    if candidate is not None:
        if is_recipe(candidate):
            return candidate
        raise ConfigError(
            f"{where}: {candidate!r} is not a recipe (a subclass of cifarlab.recipes.Recipe)"
        )
    own = [obj for obj in vars(module).values()
           if is_recipe(obj) and obj.__module__ == module.__name__]  # fmt: skip
    if name is not None:
        named = [c for c in own if name in (c.__name__, getattr(c, "name", None))]
        attr = getattr(module, name, None)
        if is_recipe(attr):
            return attr
        if len(named) == 1:
            return named[0]
        raise ConfigError(f"{where}: no recipe named {name!r}; it defines "
                          f"{', '.join(c.__name__ for c in own) or 'none'}")  # fmt: skip
    if not own:
        raise ConfigError(f"{where}: defines no recipe (a subclass of cifarlab.recipes.Recipe)")
    if len(own) > 1:
        names = ", ".join(c.__name__ for c in own)
        raise ConfigError(f"{where}: defines {len(own)} recipes ({names}); name one as FILE:NAME")
    return own[0]


def _where_it_raised(error: BaseException, path: Path) -> str:
    """'TypeError: ... (line N)': the error and the user's line that raised it."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if Path(frame.filename).resolve() == path:
            line = frame.lineno
    if isinstance(error, SyntaxError):
        line = error.lineno
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" + (f" (line {line})" if line else "")


def check_unchanged(source: RecipeSource, saved: dict | None) -> RecipeSource:
    """The source, marked with the saved digest when the code now differs from the run's."""
    if not isinstance(saved, dict) or saved.get("sha256") in (None, source.sha256):
        return source
    return replace(source, changed_from=str(saved["sha256"]))
