"""Where a review session writes, and who is reviewing.

An interactive run of notebook ``05_inspect_false_positives`` (JupyterLab) must never overwrite
what the headless report wrote: its figures, tables, metrics and any retrained model go to
folders of their own, ``reports/<run>/<output>/`` and ``models/<run>/<output>/``
(:func:`output_paths`; the notebook's default output is ``"interactive"``), while it still reads
the report's validation outputs through the report's own :class:`clarity.paths.Paths`. The
headless report (``make report``) passes an empty output and writes where it always did.
Decisions name their reviewer (:func:`default_reviewer`: the operating-system user).
"""

from __future__ import annotations

import dataclasses
import getpass
import re

__all__ = ["INTERACTIVE_OUTPUT", "output_paths", "default_reviewer"]

#: The output folder name an interactive run of notebook 05 writes into by default.
INTERACTIVE_OUTPUT = "interactive"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def output_paths(paths, output: str = INTERACTIVE_OUTPUT):
    """The paths a review session writes to.

    Parameters
    ----------
    paths : clarity.paths.Paths
        The report's paths (what the session reads: ``reports/<run>/folds/``, fold models).
    output : str
        A folder name (letters, digits, ``_ . -``); ``""`` for the report's own places.

    Returns
    -------
    clarity.paths.Paths
        ``paths`` itself for ``""``; else a copy whose run is ``<run>/<output>``, so that
        ``.reports`` is ``reports/<run>/<output>`` and ``.fold_model_dir(split, variant)`` is
        ``models/<run>/<output>/<split>/<variant>`` (same data root, same roots).

    Raises
    ------
    ValueError
        ``output`` is not a plain folder name (no separators, no ``..``).
    """
    output = str(output).strip()
    if not output:
        return paths
    if not _NAME.fullmatch(output) or ".." in output:
        raise ValueError(f"output must be a plain folder name (letters, digits, _ . -), "
                         f"not {output!r}")
    return dataclasses.replace(paths, run=f"{paths.run}/{output}")


def default_reviewer() -> str:
    """The name decisions are recorded under when none is given: the operating-system user
    (``""`` if it cannot be found)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):  # no user name in the environment or passwd
        return ""
