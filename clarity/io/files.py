"""Errors and atomic writes: every output of clarity goes through a temporary file and a rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


class ClarityInputError(ValueError):
    """Bad user input: the message names the file and the problem."""


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary file keeps ``path``'s suffix (or ``suffix``) so that libraries choosing a
    format by extension (numpy, tifffile, matplotlib) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + (suffix if suffix is not None else path.suffix),
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save ``array`` to ``path`` (``.npy``) atomically; returns ``path``."""
    path = Path(path)
    with atomic_write(path) as tmp:
        np.save(tmp, np.asarray(array))
    return path


def jsonable(obj: Any) -> Any:
    """``obj`` with plain JSON types only: numpy scalars and arrays, paths, tuples and sets are
    converted, objects with ``to_dict`` call it, NaN and inf become None."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if hasattr(o, "to_dict"):
            return o.to_dict()
        return str(o)  # paths, devices, anything else

    def no_nan(o):
        if isinstance(o, float) and not np.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: no_nan(v) for k, v in o.items()}
        if isinstance(o, list):
            return [no_nan(v) for v in o]
        return o

    return no_nan(json.loads(json.dumps(obj, default=default)))


def write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (through :func:`jsonable`) atomically; returns ``path``."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=indent) + "\n")
    return path


