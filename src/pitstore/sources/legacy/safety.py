"""Refuse HDF5 files that would run code when PyTables opens them, before PyTables touches them.

PyTables unpickles every string attribute that ends with ``.`` when it is read (``pd.HDFStore(f).keys()`` reads
them), and the data of ``ObjectAtom`` arrays. Genuine pandas files hold pickles too (an index's ``freq`` is a
pickled offset, a UTC ``tz`` a pickled ``datetime.timezone``). So every attribute of every object is read here
with h5py, as raw bytes (h5py never unpickles), and each pickle's opcodes are inspected with
``pickletools.genops`` (never loaded): any global outside a short allow-list of pandas' own types, or any opcode
that reaches a callable by other means, refuses the file. External links (PyTables would open another file) and
pickled array data are refused as well.
"""

from __future__ import annotations

import functools
import pickletools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pitstore.errors import InvalidInputError

__all__ = ["check_hdf5", "pickle_problem"]

# Exact (module, name) pairs besides pandas' date offsets: what pandas and PyTables themselves pickle.
_ALLOWED = frozenset({
    ("datetime", "timezone"), ("datetime", "timedelta"), ("datetime", "datetime"), ("datetime", "date"),
    ("datetime", "time"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("pandas", "DateOffset"), ("dateutil.relativedelta", "relativedelta"),
})
_OFFSET_MODULES = frozenset({"pandas._libs.tslibs.offsets", "pandas.tseries.offsets"})
_STRINGS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                      "BINUNICODE8"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
# Reach a callable without naming it (copyreg's extension registry) or hand objects to a persistent loader.
_REFUSED = frozenset({"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})


@functools.cache
def _offset_names() -> frozenset[str]:
    """The public date-offset classes of the installed pandas (Day, Hour, BusinessDay, MonthEnd, ...)."""
    from pandas._libs.tslibs import offsets

    return frozenset(n for n in dir(offsets) if not n.startswith("_") and isinstance(getattr(offsets, n), type)
                     and issubclass(getattr(offsets, n), offsets.BaseOffset))


def _allowed(module: str, name: str) -> bool:
    return (module, name) in _ALLOWED or (module in _OFFSET_MODULES and name in _offset_names())


def pickle_problem(data: bytes) -> str | None:
    """What in the pickle ``data`` must not be loaded (a global outside the allow-list, an opcode that reaches
    code another way), or None. Bytes that stop parsing as a pickle are fine up to there: ``pickle.loads`` fails
    at the same byte, having run only what was checked."""
    recent: list[str | None] = []  # values of the pushes since the last other opcode: the top of the stack
    memo: dict[int, str | None] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                if not _allowed(module, attr):
                    return f"{module}.{attr}"
                recent = []
            elif name == "STACK_GLOBAL":
                # Only when the two values under it are strings pushed just before (a GET of a memoised string
                # counts): anything else could be a stack built to hide the name.
                if len(recent) < 2 or recent[-1] is None or recent[-2] is None:
                    return "a global whose name cannot be read from the pickle"
                if not _allowed(recent[-2], recent[-1]):
                    return f"{recent[-2]}.{recent[-1]}"
                recent = []
            elif name in _REFUSED:
                return f"the opcode {name}"
            elif name in _STRINGS:
                recent.append(arg if isinstance(arg, str) else None)
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in _PUTS:
                memo[int(str(arg))] = recent[-1] if recent else None
            elif name in _GETS:
                recent.append(memo.get(int(str(arg))))
            elif name not in ("FRAME", "PROTO"):
                recent = []
    except Exception:  # any parse error: not a pickle from here on (see the docstring)
        return None
    return None


def _byte_strings(value: Any) -> Iterator[bytes]:
    """Every string in an attribute value, as bytes."""
    if isinstance(value, bytes | np.bytes_):
        yield bytes(value)
    elif isinstance(value, str):
        yield value.encode("utf-8", "surrogateescape")
    elif isinstance(value, np.void):
        yield value.tobytes()
    elif isinstance(value, np.ndarray) and value.dtype.kind in "SUOV":
        for item in value.ravel():
            yield from _byte_strings(item)


def check_hdf5(path: Path, shown: str) -> None:
    """Raise InvalidInputError naming ``shown`` (the file as the user gave it) and the attribute when the file
    holds a pickle (or an external link, or pickled data) that opening it with PyTables could run."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InvalidInputError(f"{shown}: not a readable HDF5 file ({exc})") from exc

    def refuse(what: str) -> InvalidInputError:
        return InvalidInputError(f"{shown}: {what}; refused before opening it with PyTables (opening it there "
                                 "could run code). Re-export the frame from a trusted copy")

    def check(node: str, obj: Any) -> None:
        for attr in obj.attrs:
            try:
                value = obj.attrs[attr]
            except Exception as exc:  # what h5py cannot read cannot be vetted
                raise refuse(f"attribute {attr!r} of {node} cannot be read to check it ({exc})") from exc
            for raw in _byte_strings(value):
                problem = pickle_problem(raw)
                if problem is None and attr == "FILTERS":  # PyTables rewrites old pickled filters before loading
                    problem = pickle_problem(raw.replace(b"tables.Leaf\n", b"tables.filters\n"))
                if problem is not None:
                    raise refuse(f"attribute {attr!r} of {node} is a pickle that calls {problem}, which is not one "
                                 "of pandas' own types")
            if attr == "PSEUDOATOM" and bytes(_first(value)) == b"object":
                raise refuse(f"{node} holds pickled Python objects (an object-dtype column)")

    found: list[InvalidInputError] = []

    def visit(name: str, obj: Any) -> bool | None:
        # Raising inside h5py's visit callbacks corrupts its state: note the refusal, stop the walk (True).
        try:
            check(f"/{name}", obj)
        except InvalidInputError as exc:
            found.append(exc)
            return True
        return None

    def link(name: str, target: Any) -> bool | None:
        if isinstance(target, h5py.ExternalLink):
            found.append(refuse(f"/{name} links to another file ({target.filename})"))
            return True
        return None

    with handle:
        check("/", handle)
        handle.visititems_links(link)  # first: visititems must not follow a link into another file
        if not found:
            handle.visititems(visit)
    if found:
        raise found[0]


def _first(value: Any) -> bytes:
    for raw in _byte_strings(value):
        return raw
    return b""
