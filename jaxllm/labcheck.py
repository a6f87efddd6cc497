"""Checks for the course's graded labs: a graded function must be the student's own code.

A lab asks students to rebuild functions that ``jaxllm`` already has (``pair_counts``,
``top_p_filter``, ...), and its tests compare their answers with the package's. Without a
check, an answer cell that only says ``from jaxllm.sample import top_p_filter`` (or wraps it)
would pass. :func:`own_code` closes that gap in two layers, and every test of a lab (public and
hidden) goes through it:

1. **What the function is** (before it runs). The function, unwrapped (``functools.wraps``,
   ``jax.jit`` and ``functools.partial`` layers are looked through), must not be code of the
   package: its code object must not come from a file of ``jaxllm``, and its ``__module__``
   must not be a ``jaxllm`` module. Then its byte code is read: every global name it loads,
   followed through attribute access (``jaxllm.sample.top_p_filter``), must not resolve to
   code of the *banned modules* (the modules that hold the reference implementations of the
   question) or to those modules themselves. The same is done, transitively, for the notebook
   functions it uses, so ``train_bpe`` is caught when the ``pair_counts`` it calls is the
   package's. This finds delegation even on paths the tests do not run.
2. **What the function does** (while it runs). The returned wrapper runs the function with a
   profile hook (:func:`sys.setprofile`) that records every Python function entered whose code
   lives in a file of the banned modules. Aliases, lambdas, ``def`` wrappers, ``getattr``
   tricks, package functions reached through other package functions: whatever the route,
   the package's code runs, and the hook sees it. A call that entered any of it raises
   :class:`NotYourCode` once it returns.

What this does not catch: code that never runs in Python during the call (a ``jax.jit``
wrapper of a package function that was compiled earlier for the same shapes and is reached
without a global name the byte-code scan can follow), and deliberate tampering with the
kernel (patching this module, ``sys.setprofile`` or the grader). Tests use input shapes that
the notebook is unlikely to have compiled for; tampering is outside what grading in the
student's own kernel can prevent (see instructors.md).

The messages of :class:`NotYourCode` start with :data:`MARKER`, which the course's grader
(``coursekit.grade_labs``) looks for to state the reason in its report.
"""

from __future__ import annotations

import dis
import functools
import importlib
import inspect
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "NotYourCode", "modules_of", "own_code"]

MARKER = "not your own code:"
_PACKAGE_DIR = Path(__file__).resolve().parent
_LOADS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF"}
_ATTRS = {"LOAD_ATTR", "LOAD_METHOD"}


class NotYourCode(AssertionError):
    """A graded function is, wraps or calls the package's own implementation.

    An ``AssertionError``, so that test runners count it as a failed test (not an error)."""


def _name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return "a lambda" if name == "<lambda>" else name


def _module_files(modules: Iterable[types.ModuleType]) -> dict[str, str]:
    """Source file (as code objects record it, and resolved) -> module name."""
    files: dict[str, str] = {}
    for module in modules:
        if not isinstance(module, types.ModuleType):
            raise TypeError(f"own_code: expected modules, got {module!r}")
        path = getattr(module, "__file__", None)
        if path:
            files[str(Path(path).resolve())] = module.__name__
        # The file name compiled into the module's code objects (normally the same path).
        for value in vars(module).values():
            code = getattr(inspect.unwrap(value), "__code__", None) if callable(value) else None
            if code is not None and getattr(value, "__module__", None) == module.__name__:
                files[code.co_filename] = module.__name__
                break
    return files


def _unwrap(fn: Any) -> Any:
    """Look through functools.partial, functools.wraps-style and jax.jit wrappers."""
    seen = set()
    while id(fn) not in seen:
        seen.add(id(fn))
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            fn = fn.__func__
        elif getattr(fn, "__wrapped__", None) is not None:
            fn = fn.__wrapped__
        elif isinstance(fn, classmethod | staticmethod):
            fn = fn.__func__
    return fn


def _package_origin(obj: Any, files: dict[str, str]) -> str | None:
    """Where in the package ``obj`` comes from, if it is package code or a banned module."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__ if obj.__name__ in files.values() else None
    target = _unwrap(obj)
    code = getattr(target, "__code__", None)
    if code is not None:
        try:
            filename = str(Path(code.co_filename).resolve())
        except (OSError, ValueError):
            filename = code.co_filename
        if code.co_filename in files or filename in files:
            return f"{getattr(target, '__module__', '?')}.{_name(target)}"
    module = getattr(target, "__module__", None)
    if isinstance(module, str) and module in files.values() and (
            callable(target) or isinstance(target, type)):
        return f"{module}.{_name(target)}"
    return None


def _code_objects(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _loaded_objects(fn: types.FunctionType) -> Iterable[tuple[str, Any]]:
    """(dotted name, object) for each global (or closure) name ``fn``'s code loads, followed
    through the attribute accesses that come right after it while they lead to modules."""
    namespace = dict(vars(__import__("builtins")))
    namespace.update(fn.__globals__)
    if fn.__closure__:
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__, strict=False):
            try:
                namespace[name] = cell.cell_contents
            except ValueError:  # an empty cell
                pass
    for code in _code_objects(fn.__code__):
        instructions = list(dis.get_instructions(code))
        for i, ins in enumerate(instructions):
            if ins.opname not in _LOADS or not isinstance(ins.argval, str):
                continue
            if ins.argval not in namespace:
                continue
            obj, dotted = namespace[ins.argval], ins.argval
            yield dotted, obj
            for nxt in instructions[i + 1:]:
                if nxt.opname not in _ATTRS or not isinstance(obj, types.ModuleType):
                    break
                obj = getattr(obj, str(nxt.argval), None)
                dotted = f"{dotted}.{nxt.argval}"
                yield dotted, obj


def _static_check(fn: Any, label: str, files: dict[str, str]) -> None:
    origin = _package_origin(fn, files)
    if origin is None:
        target = _unwrap(fn)
        module = getattr(target, "__module__", None) or ""
        code = getattr(target, "__code__", None)
        in_package = code is not None and Path(code.co_filename).resolve().is_relative_to(
            _PACKAGE_DIR)
        if module == "jaxllm" or module.startswith("jaxllm.") or in_package:
            origin = f"{module}.{_name(target)}"
    if origin is not None:
        raise NotYourCode(f"{MARKER} {label} is {origin}, the package's own implementation "
                          "(write your own)")
    # Follow what the function uses, through the notebook's own functions.
    todo, seen = [(_unwrap(fn), label)], set()
    while todo:
        current, path = todo.pop()
        if not isinstance(current, types.FunctionType) or id(current) in seen:
            continue
        seen.add(id(current))
        for dotted, obj in _loaded_objects(current):
            origin = _package_origin(obj, files)
            if isinstance(obj, types.ModuleType) and origin is not None:
                what = dotted if dotted == obj.__name__ else f"{dotted} ({obj.__name__})"
                raise NotYourCode(f"{MARKER} {path} uses the module {what}, which holds the "
                                  "package's own implementation (write your own)")
            if origin is not None:
                what = dotted if dotted == origin else f"{dotted} ({origin})"
                raise NotYourCode(f"{MARKER} {path} uses {what}, the package's own "
                                  "implementation (write your own)")
            inner = _unwrap(obj)
            if isinstance(inner, types.FunctionType) and inner.__globals__ is current.__globals__:
                todo.append((inner, f"{path} -> {_name(inner)}"))


def modules_of(*names: str) -> list[types.ModuleType]:
    """The modules whose *files* define the functions ``names`` (dotted paths such as
    ``"optax.warmup_cosine_decay_schedule"`` or ``"numpy.polyfit"``), whatever module
    re-exports them: what :func:`own_code` needs to ban a library's function, whose public
    name (``optax``) is rarely the module that holds its code (``optax.schedules._schedule``).
    A name that is a module is returned as it is."""
    found: list[types.ModuleType] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"modules_of: names must be dotted names, got {name!r}")
        parts, obj = name.split("."), None
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            break
        if obj is None:
            raise ValueError(f"modules_of: {name!r} names no importable module or function")
        if not isinstance(obj, types.ModuleType):
            code = getattr(_unwrap(obj), "__code__", None)
            if code is None:
                raise ValueError(f"modules_of: {name!r} is not a Python function")
            path = Path(code.co_filename).resolve()
            obj = next((m for m in list(sys.modules.values())
                        if isinstance(getattr(m, "__file__", None), str)
                        and Path(m.__file__).resolve() == path), None)
            if obj is None:
                raise ValueError(f"modules_of: no imported module has the file of {name!r}")
        if obj not in found:
            found.append(obj)
    return found


def own_code(fn: Callable[..., Any], *modules: types.ModuleType,
             name: str | None = None) -> Callable[..., Any]:
    """Check that ``fn`` is not (and does not use) code of ``modules``; return it, watched.

    ``modules`` are the package modules that hold the reference implementations the question
    compares with (``jaxllm.sample``, ``jaxllm.tokenizer``, ...). Raises :class:`NotYourCode`
    now if ``fn`` is package code or its byte code reaches code of ``modules`` (see the module
    docstring); the returned function calls ``fn`` and raises :class:`NotYourCode` after any
    call during which code of ``modules`` ran. ``name`` names ``fn`` in messages.
    """
    if not modules:
        raise TypeError("own_code: name the modules whose code the function must not use")
    label = name or _name(fn)
    if not callable(fn):
        raise AssertionError(f"{label} is {fn!r}, not a function: define it with def")
    files = _module_files(modules)
    _static_check(fn, label, files)

    def watched(*args: Any, **kwargs: Any) -> Any:
        entered: list[str] = []
        previous = sys.getprofile()

        def hook(frame: types.FrameType, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code.co_filename in files and not entered:
                code = frame.f_code
                qualname = getattr(code, "co_qualname", code.co_name)
                entered.append(f"{files[code.co_filename]}.{qualname}")
            if previous is not None:
                previous(frame, event, arg)

        sys.setprofile(hook)
        try:
            result = fn(*args, **kwargs)
        finally:
            sys.setprofile(previous)
        if entered:
            raise NotYourCode(f"{MARKER} {label} calls {entered[0]}, the package's own "
                              "implementation (write your own)")
        return result

    watched.__name__ = getattr(fn, "__name__", "watched")
    watched.__qualname__ = label
    watched.__doc__ = getattr(fn, "__doc__", None)
    return watched
