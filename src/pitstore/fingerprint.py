"""Canonical encodings and fingerprints: of configs, of code, and of feature-set definitions.

Two definitions with the same fingerprint produce the same numbers; anything that can change a number
(parameters, code, helper code, referenced constants, library versions) changes the fingerprint, while
formatting and comments do not.
"""

from __future__ import annotations

import ast
import datetime as dt
import dis
import functools
import hashlib
import inspect
import json
import math
import sysconfig
import textwrap
import types
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pitstore.datahash import table_hash
from pitstore.errors import DefinitionError

__all__ = ["canonical", "canonical_json", "code_fingerprint", "library_versions", "sha256_hex"]

_LIBRARY_ROOTS = tuple(
    str(Path(p).resolve()) for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (p := sysconfig.get_paths().get(key))
)


# Containers nested deeper than this are refused: a real config is a few levels deep, while Python's and json's
# recursion limits (about 1,000 frames) would otherwise end in a RecursionError.
MAX_DEPTH = 100


def canonical(obj: Any) -> Any:
    """A JSON-ready form of ``obj`` in which equal values have equal encodings.

    Key order does not matter, ``2`` and ``2.0`` encode the same, NaN and infinities are named, datetimes
    become UTC ISO strings (naive ones are rejected: they are ambiguous). Containers that contain themselves
    or nest deeper than ``MAX_DEPTH`` are rejected.
    """
    return _canonical(obj, [])


def _canonical(obj: Any, path: list[int]) -> Any:
    """:func:`canonical`; ``path``: the ids of the containers ``obj`` is inside of."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, np.generic):
        return _canonical(obj.item(), path)
    if isinstance(obj, int):
        return obj  # exact at any size (a float would overflow or round)
    if isinstance(obj, float | Decimal):
        f = float(obj)
        if math.isnan(f):
            return {"$float": "nan"}
        if math.isinf(f):
            return {"$float": "inf" if f > 0 else "-inf"}
        return int(f) if f.is_integer() else f
    if isinstance(obj, Mapping | list | tuple | set | frozenset):
        if id(obj) in path:
            raise DefinitionError(f"a {type(obj).__name__} that contains itself cannot be encoded canonically")
        if len(path) >= MAX_DEPTH:
            raise DefinitionError(f"containers nested more than {MAX_DEPTH} deep cannot be encoded canonically")
        path.append(id(obj))
        try:
            if isinstance(obj, Mapping):
                return {"$map": sorted(([_canonical(k, path), _canonical(v, path)] for k, v in obj.items()),
                                       key=json.dumps)}
            if isinstance(obj, list | tuple):
                return [_canonical(v, path) for v in obj]
            return {"$set": sorted((_canonical(v, path) for v in obj), key=json.dumps)}
        finally:
            path.pop()
    if isinstance(obj, dt.datetime):
        if obj.tzinfo is None:
            raise DefinitionError(f"naive datetime {obj!r} in a config: give it a timezone")
        return {"$datetime": obj.astimezone(dt.UTC).isoformat()}
    if isinstance(obj, dt.date):
        return {"$date": obj.isoformat()}
    if isinstance(obj, dt.timedelta):
        return {"$timedelta": obj.total_seconds()}
    if isinstance(obj, Path):
        return {"$path": str(obj)}
    if isinstance(obj, bytes):
        return {"$bytes": obj.hex()}
    if isinstance(obj, pl.Expr):
        return {"$expr": obj.meta.serialize(format="json")}
    if isinstance(obj, pl.DataFrame | pl.Series | pa.Table | pa.ChunkedArray | pa.Array):
        table = obj.to_frame() if isinstance(obj, pl.Series) else obj
        if isinstance(table, pa.ChunkedArray | pa.Array):
            table = pa.table({"": table})
        return {"$table": table_hash(table.to_arrow() if isinstance(table, pl.DataFrame) else table).hex}
    if type(obj).__module__.startswith("pandas") and hasattr(obj, "to_frame" if hasattr(obj, "name") else "columns"):
        frame = obj.to_frame() if hasattr(obj, "to_frame") else obj
        try:
            return {"$table": table_hash(pa.Table.from_pandas(frame, preserve_index=True)).hex}
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise DefinitionError(f"cannot encode a pandas {type(obj).__name__} canonically: {exc}") from exc
    if isinstance(obj, np.ndarray):
        return {"$array": [str(obj.dtype), list(obj.shape), hashlib.sha256(obj.tobytes()).hexdigest()]}
    raise DefinitionError(f"cannot encode a {type(obj).__name__} canonically: {obj!r}")


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of ``obj`` (see :func:`canonical`)."""
    return json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that can change computed numbers."""
    import talib

    return {"polars": pl.__version__, "numpy": np.__version__, "talib": str(talib.__version__)}


def _is_library(fn: types.FunctionType) -> bool:
    return _is_library_code(fn.__code__, fn.__code__.co_filename)


# Code objects are immutable: what is derived from one alone (its source, the names it reads) is computed once
# (rebuilding it on every call made a cache hit on a small frame slower than recomputing). Equal code objects
# of two files compare equal: the file name is part of the key.
@functools.lru_cache(maxsize=4096)
def _is_library_code(code: types.CodeType, filename: str) -> bool:
    try:
        src = inspect.getsourcefile(code)
    except TypeError:
        return True
    if src is None:
        return False
    return str(Path(src).resolve()).startswith(_LIBRARY_ROOTS)


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip


def _source_of(fn: types.FunctionType) -> str:
    return _source_of_code(fn.__code__, fn.__code__.co_filename)


@functools.lru_cache(maxsize=4096)
def _source_of_code(code: types.CodeType, filename: str) -> str:
    """The function's code with comments, docstrings and formatting normalised away."""
    fn = code
    try:
        src = textwrap.dedent(inspect.getsource(fn))
        tree = _StripDocstrings().visit(ast.parse(src))
        return ast.dump(tree, annotate_fields=False, include_attributes=False)
    except (OSError, TypeError, SyntaxError, IndentationError):
        # No source (REPL, exec): fall back to the bytecode and its constants.
        return _code_bytes(fn)


@functools.lru_cache(maxsize=4096)
def _names(code: types.CodeType) -> frozenset[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return frozenset(names)


@functools.lru_cache(maxsize=4096)
def _stored_globals(code: types.CodeType) -> frozenset[str]:
    """Globals the code assigns (``global n; n += 1``): state such as call counters, not constants."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("STORE_GLOBAL", "DELETE_GLOBAL")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _stored_globals(const)
    return frozenset(names)


_CONSTANT_TYPES = (bool, int, float, str, bytes, tuple, frozenset, list, dict, set, type(None))


def _is_library_module(module: types.ModuleType) -> bool:
    path = getattr(module, "__file__", None)
    return path is None or str(Path(path).resolve()).startswith(_LIBRARY_ROOTS)


def _class_part(cls: type) -> str:
    """A class by name, and by its source when it is the user's (its methods can change results)."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        return name + "|" + ast.dump(ast.parse(textwrap.dedent(inspect.getsource(cls))))
    except (OSError, TypeError, SyntaxError):
        return name


def _code_bytes(code: types.CodeType) -> str:
    """Bytecode and constants (nested code included, without memory addresses): tells apart two lambdas
    whose source is the same line."""
    consts = [_code_bytes(c) if isinstance(c, types.CodeType) else _const_text(c) for c in code.co_consts]
    return f"{code.co_code.hex()}|{consts}|{code.co_names}"


def _const_text(value: Any) -> str:
    """A code constant as text that is the same in every process (set order follows the hash seed)."""
    if isinstance(value, frozenset | set):
        return "{" + ",".join(sorted(_const_text(v) for v in value)) + "}"
    if isinstance(value, tuple):
        return "(" + ",".join(_const_text(v) for v in value) + ")"
    return repr(value)


def code_fingerprint(fn: Callable[..., Any], *, strict: bool = False) -> str:
    """sha256 over a function's normalised code, the code of the helpers it calls (module-level functions,
    also through a user module's attributes, transitively), the module-level constants it reads, its
    defaults, its closure values and the state of a bound object or callable instance.

    With ``strict``, a value that cannot be encoded canonically raises DefinitionError instead of being
    left out (the compute cache must never give two different computations one key).
    """
    parts: dict[str, Any] = {}

    def value_part(value: Any, what: str) -> Any:
        try:
            return canonical(value)
        except DefinitionError as exc:
            if strict:
                raise DefinitionError(f"cannot fingerprint {what}: {exc}") from None
            return None

    def state(obj: Any, key: str) -> None:
        if isinstance(obj, types.ModuleType | type):
            parts[key] = getattr(obj, "__qualname__", obj.__name__)
        else:
            parts[key] = value_part(getattr(obj, "__dict__", None), f"the state of {type(obj).__name__}")

    def visit(f: Any, key: str) -> None:
        f = inspect.unwrap(f)
        if isinstance(f, functools.partial):
            visit(f.func, key + ".func")
            parts[key + ".args"] = value_part((f.args, f.keywords), "partial arguments")
            return
        if isinstance(f, types.MethodType):
            state(f.__self__, key + ".self")
            f = f.__func__
        if not isinstance(f, types.FunctionType):
            call = type(f).__dict__.get("__call__") if callable(f) else None
            if isinstance(call, types.FunctionType) and not _is_library(call):
                state(f, key + ".self")  # a callable instance: its class's __call__ and its state
                visit(call, key + ".call")
            else:
                parts[key] = f"{type(f).__module__}.{getattr(f, '__qualname__', type(f).__qualname__)}"
            return
        if key in parts:
            return
        parts[key] = _source_of(f)
        if f.__name__ == "<lambda>":
            parts[key + ".code"] = _code_bytes(f.__code__)
        parts[key + ".defaults"] = value_part((f.__defaults__, f.__kwdefaults__), f"defaults of {f.__qualname__}")
        for i, cell in enumerate(f.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # empty cell
                continue
            if isinstance(value, types.FunctionType) and not _is_library(value):
                visit(value, f"{key}.closure{i}")
            elif isinstance(value, type):
                parts[f"{key}.closure{i}"] = _class_part(value)
            else:
                parts[f"{key}.closure{i}"] = value_part(value, f"a value {f.__qualname__} closes over")
        names = _names(f.__code__)
        for name in sorted(names - _stored_globals(f.__code__)):
            if name not in f.__globals__:
                continue
            value = f.__globals__[name]
            if isinstance(value, types.FunctionType):
                if not _is_library(value):
                    visit(value, f"{value.__module__}.{value.__qualname__}")
            elif isinstance(value, types.ModuleType) and not _is_library_module(value):
                # helpers reached as module.attribute: the attribute names are among the code's names
                for attr in sorted(names):
                    member = getattr(value, attr, None)
                    if isinstance(member, types.FunctionType):
                        visit(member, f"{value.__name__}.{attr}")
                    elif isinstance(member, _CONSTANT_TYPES):
                        parts[f"{key}.global.{name}.{attr}"] = value_part(member, f"{value.__name__}.{attr}")
            elif isinstance(value, _CONSTANT_TYPES):
                parts[f"{key}.global.{name}"] = value_part(value, f"the global {name}")

    visit(fn, "fn")
    return sha256_hex(json.dumps(parts, sort_keys=True))
