"""A step's code version: its own source and what it uses of the user's code, transitively.

A step function that calls a helper, reads a module-level constant or instantiates a class of
the user's modules depends on them as much as on its own lines: editing any of them must
change the step's code version, so that exactly the steps that use it (and what is downstream
of them) are recomputed. What belongs to installed packages and the standard library (pandas,
numpy, eventpipe itself) is left out: their versions are the environment's business.

The references are read from the compiled code (the global names and attributes a function's
code and its nested functions and comprehensions load) and resolved in the function's own
globals and closure, so only what the code can actually reach counts:

- a function or class of a user module: its source, and in turn what it references
  (a class: every method's references);
- a user module (``import helpers`` then ``helpers.clean(...)``): the attributes the code
  loads from it;
- any other value: its ``repr`` when that is stable (numbers, strings, containers of them,
  dataclasses such as ``Schema``), else its type's name.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import site
import sys
import sysconfig
import textwrap
import types
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from typing import Any

PIPELINE_MODULE_PREFIX = "eventpipe_user_"
"""The module names ``eventpipe.pipeline.load_pipeline`` gives pipeline files it imports."""
MAX_REPR = 100_000
"""Characters of a value's ``repr`` that count (a huge constant is cut, not skipped)."""


def code_digest(*fns: Callable[..., Any]) -> tuple[str, tuple[str, ...]]:
    """The digest (16 hex digits) of ``fns`` and of what they use of the user's code, and the
    files of the user's modules that code is in."""
    walk = _Walk()
    for fn in fns:
        walk.function(fn)
    text = "\n".join(f"{name}\n{body}" for name, body in sorted(walk.parts.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16], tuple(sorted(walk.files))


class _Walk:
    def __init__(self) -> None:
        self.parts: dict[str, str] = {}
        self.files: set[str] = set()

    def function(self, fn: Any) -> None:
        fn = inspect.unwrap(fn)
        code = getattr(fn, "__code__", None)
        module = _module_label(getattr(fn, "__module__", None))
        name = f"{module}.{getattr(fn, '__qualname__', repr(fn))}"
        if name in self.parts:
            return
        self.parts[name] = _source(fn)
        self._file_of(getattr(fn, "__module__", None))
        if code is None:
            return
        scope = dict(getattr(fn, "__globals__", {}))
        for var, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
            try:
                scope[var] = cell.cell_contents
            except ValueError:  # a cell not filled yet
                continue
        self.references(_names(code), scope, name)

    def references(self, names: set[str], scope: dict[str, Any], owner: str) -> None:
        for ref in sorted(names):
            if ref not in scope:
                continue  # an attribute name, a builtin, or not defined yet
            self.value(f"{owner}:{ref}", scope[ref], names)

    def value(self, label: str, value: Any, names: set[str]) -> None:
        if callable(getattr(value, "__wrapped__", None)):  # functools.cache, wraps(...)
            value = inspect.unwrap(value)
        if isinstance(value, types.ModuleType):
            if _user_module(value.__name__):
                self._file_of(value.__name__)
                for attr in sorted(names):
                    if attr in vars(value):
                        label = f"{_module_label(value.__name__)}.{attr}"
                        self.value(label, vars(value)[attr], names)
            return
        if isinstance(value, types.FunctionType | types.MethodType):
            if _user_module(getattr(value, "__module__", None)):
                self.function(value)
            return
        if isinstance(value, type):
            if _user_module(value.__module__):
                self._class(value)
            return
        module = getattr(type(value), "__module__", None)
        if callable(value) and not _user_module(module):
            return  # a library's callable object (a ufunc, a partial of pandas...)
        self.parts[label] = _stable_repr(value)

    def _class(self, cls: type) -> None:
        name = f"{_module_label(cls.__module__)}.{cls.__qualname__}"
        if name in self.parts:
            return
        self.parts[name] = _source(cls)
        self._file_of(cls.__module__)
        for attr in vars(cls).values():
            fn = attr.__func__ if isinstance(attr, classmethod | staticmethod) else attr
            if isinstance(fn, property):
                fn = fn.fget
            if isinstance(fn, types.FunctionType):
                self.function(fn)

    def _file_of(self, module_name: str | None) -> None:
        module = sys.modules.get(module_name or "")
        path = getattr(module, "__file__", None)
        if path and _user_module(module_name):
            self.files.add(os.path.realpath(path))


def _names(code: types.CodeType) -> set[str]:
    """The global names and attributes ``code`` loads, its nested code objects' included."""
    found = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _names(const)
    return found


def _source(obj: Any) -> str:
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        return getattr(obj, "__qualname__", repr(type(obj))) + (
            code.co_code.hex() if code is not None else ""
        )


def _stable_repr(value: Any) -> str:
    text = repr(value)
    if " at 0x" in text:  # the default repr: an address, different in every process
        return f"<{_module_label(type(value).__module__)}.{type(value).__qualname__}>"
    return text[:MAX_REPR]


@cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return tuple(os.path.realpath(d) + os.sep for d in dirs)


def _module_label(name: str | None) -> str:
    """A module's name as the digest records it: a pipeline loaded from a file gets a module
    name made from its path, which differs from host to host; the digest must not."""
    if name and name.startswith(PIPELINE_MODULE_PREFIX):
        return "<pipeline file>"
    return str(name)


def _user_module(name: str | None) -> bool:
    """Whether module ``name`` is the user's: not eventpipe, not installed, not the standard
    library (a module of a file under the library directories of this interpreter)."""
    if not name or name == "eventpipe" or name.startswith("eventpipe."):
        return False
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if not path:
        return False  # builtins, namespace packages
    real = os.path.realpath(path)
    return not any(real.startswith(d) for d in _library_dirs())


Stamp = tuple[tuple[str, tuple[int, int]], ...]


def code_stamp(files: Sequence[str | os.PathLike[str]]) -> Stamp:
    """Each file's (modification time, size), (0, -1) when it is gone: what says the code
    changed."""
    stamp = []
    for name in files:
        try:
            st = os.stat(name)
        except OSError:
            stamp.append((str(name), (0, -1)))
        else:
            stamp.append((str(name), (st.st_mtime_ns, st.st_size)))
    return tuple(stamp)


def iter_user_modules(files: tuple[str, ...]) -> Iterator[types.ModuleType]:
    """The loaded modules of ``files`` (real paths), for a reload."""
    wanted = set(files)
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path) in wanted:
            yield module
