"""A filled review file read back and checked against the review that was drawn.

``DIR/review.csv`` (written by :func:`clarity.count.files.write_review`) has one row per drawn
candidate, ``volume,z,y,x,score,stratum,inclusion_p,decision``; a person (the JupyterLab gallery
or any other tool) fills ``decision`` with ``cell``, ``not a cell`` or ``unsure`` and may leave rows
empty (a partial review). :func:`read_decisions` returns the decisions of the drawn rows, and
refuses, with one line naming the file, a file without the ``decision`` column, a row that is not
one of the drawn candidates (or whose score is another model's), a row given twice, and a value it
does not know. Coordinates are (z, y, x) voxels of each volume.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import ClarityInputError
from .estimate import CELL, NOT_CELL, UNSURE

__all__ = ["SPELLINGS", "REVIEW_COLUMNS", "parse_decision", "read_decisions"]

#: Columns of review.csv, in order.
REVIEW_COLUMNS = ("volume", "z", "y", "x", "score", "stratum", "inclusion_p", "decision")

#: Accepted spellings (case-insensitive, blanks, ``-`` and ``_`` read as one space) of each decision.
SPELLINGS = {
    CELL: ("cell", "yes", "y", "1", "true", "c", "+"),
    NOT_CELL: ("not a cell", "not cell", "not_cell", "notcell", "non cell", "noncell", "no", "n", "0",
               "false", "-"),
    UNSURE: ("unsure", "?", "maybe", "unknown", "not sure", "skip", "skipped", "u"),
}
_LOOKUP = {" ".join(s.replace("_", " ").replace("-", " ").split()) or s: k
           for k, spellings in SPELLINGS.items() for s in spellings}


def parse_decision(value) -> str | None:
    """``"cell"``, ``"not_cell"``, ``"unsure"``, or None for an empty value (not decided yet).

    Raises
    ------
    ValueError
        A value that is none of :data:`SPELLINGS`.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    key = " ".join(text.replace("_", " ").replace("-", " ").split()) or text
    if key not in _LOOKUP:
        raise ValueError(f"unknown decision {str(value)!r}")
    return _LOOKUP[key]


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ClarityInputError(f"{path}: no such decisions file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ClarityInputError(f"{path}: not a readable CSV ({str(exc).splitlines()[0] if str(exc) else exc})") from None


def _ints(df: pd.DataFrame, path: Path) -> np.ndarray:
    out = np.zeros((len(df), 3), np.int64)
    for a, c in enumerate(("z", "y", "x")):
        for i, v in enumerate(df[c]):
            try:
                f = float(v)
            except ValueError:
                f = float("nan")
            if not np.isfinite(f) or f != round(f):
                raise ClarityInputError(f"{path}: row {i + 1}: {c} is {v!r}, not a voxel index")
            out[i, a] = int(round(f))
    return out


def read_decisions(path: str | os.PathLike, drawn: pd.DataFrame, *, design_file: str | os.PathLike = "review.json"
                   ) -> pd.DataFrame:
    """The decisions of a filled review file, one per drawn candidate.

    Parameters
    ----------
    path : path
        The filled review file (``review.csv`` as written, or any CSV with ``volume,z,y,x`` and
        ``decision``; ``score`` is checked when present; rows may be missing or in any order).
    drawn : pandas.DataFrame
        The drawn candidates (``volume, z, y, x, score``), in review order, as the design recorded them.
    design_file : path, keyword-only
        Named in the messages (where ``drawn`` comes from).

    Returns
    -------
    pandas.DataFrame
        ``drawn`` with a ``decision`` column: ``"cell"``, ``"not_cell"``, ``"unsure"`` or None.

    Raises
    ------
    ClarityInputError
        One line naming ``path``: unreadable file, no ``decision`` column, missing coordinate
        columns, a row that is not a drawn candidate (another volume, position or score: decisions
        of another review or model), a candidate given twice, an unknown decision value.
    """
    path = Path(path)
    df = _read_csv(path)
    df.columns = [str(c).strip() for c in df.columns]
    if "decision" not in df.columns:
        raise ClarityInputError(f"{path}: no 'decision' column; expected the columns of review.csv "
                                f"({','.join(REVIEW_COLUMNS)})")
    missing = [c for c in ("volume", "z", "y", "x") if c not in df.columns]
    if missing:
        raise ClarityInputError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                                f"{','.join(REVIEW_COLUMNS)}")
    zyx = _ints(df, path)
    index = {(str(v), int(z), int(y), int(x)): i for i, (v, z, y, x) in
             enumerate(zip(drawn["volume"], drawn["z"], drawn["y"], drawn["x"]))}
    volumes = set(map(str, drawn["volume"]))
    decision = [None] * len(drawn)
    seen: dict[int, int] = {}
    scores = drawn["score"].to_numpy(float)
    for r, (vol, (z, y, x), value) in enumerate(zip(df["volume"].astype(str), zyx, df["decision"])):
        row = r + 1
        vol = vol.strip()
        if vol not in volumes:
            raise ClarityInputError(f"{path}: row {row}: volume {vol!r} is not one of the review's "
                                    f"({', '.join(sorted(volumes))}; {design_file})")
        i = index.get((vol, int(z), int(y), int(x)))
        if i is None:
            raise ClarityInputError(f"{path}: row {row}: candidate {vol} ({z}, {y}, {x}) is not in the "
                                    f"review drawn into {design_file}")
        if i in seen:
            raise ClarityInputError(f"{path}: row {row}: candidate {vol} ({z}, {y}, {x}) given twice "
                                    f"(also row {seen[i]})")
        seen[i] = row
        if "score" in df.columns and str(df["score"].iloc[r]).strip():
            try:
                s = float(df["score"].iloc[r])
            except ValueError:
                s = float("nan")
            if not abs(s - scores[i]) <= 1e-4:
                raise ClarityInputError(f"{path}: row {row}: score {df['score'].iloc[r]} differs from the drawn "
                                        f"candidate's {scores[i]:.6g} ({design_file}): a review of another model")
        try:
            decision[i] = parse_decision(value)
        except ValueError:
            raise ClarityInputError(f"{path}: row {row}: unknown decision {str(value)!r}; write 'cell', "
                                    "'not a cell' or 'unsure' (or leave it empty)") from None
    return drawn.assign(decision=pd.Series(decision, index=drawn.index, dtype=object))
