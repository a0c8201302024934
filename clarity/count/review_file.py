"""``DIR/review.csv`` of ``clarity count`` as the decision store of the review gallery.

:class:`ReviewFile` gives :class:`clarity.review.ReviewGallery` what it needs of a store
(``get``, ``record``, ``reload``) over the review file itself: each click writes that row's
``decision`` (``cell``, ``not a cell``, ``unsure``), ``reviewer`` and ``time`` and saves the whole
file at once, atomically (write then rename), so the file that ``clarity count --decisions``
reads is always complete and a crash loses at most the click in flight. Rows keep their order
(the review order of the design: stop anywhere, the decided rows are still a sample of every
stratum). :func:`review_gallery` opens an output folder in the gallery. Coordinates are (z, y, x)
voxels of each volume.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..io import ClarityInputError, atomic_write
from .decisions import parse_decision
from .estimate import CELL, NOT_CELL, UNSURE

__all__ = ["ReviewFile", "WRITTEN"]

#: How each decision is written into the file (what a person would type).
WRITTEN = {CELL: "cell", NOT_CELL: "not a cell", UNSURE: "unsure"}


class ReviewFile:
    """A ``review.csv`` whose ``decision`` column is filled one click at a time.

    Parameters
    ----------
    path : path
        ``DIR/review.csv`` written by ``clarity count`` (columns ``volume, z, y, x, score, ...,
        decision``; ``reviewer`` and ``time`` are added on the first decision).

    Raises
    ------
    ClarityInputError
        The file is missing, unreadable, or lacks ``volume, z, y, x`` or ``decision``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.reload()

    def _stat(self):
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def reload(self) -> "ReviewFile":
        """Read the file again (another tool may have filled rows)."""
        if not self.path.is_file():
            raise ClarityInputError(f"{self.path}: no such review file (clarity count ... --review N writes it)")
        try:
            df = pd.read_csv(self.path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ClarityInputError(f"{self.path}: not a readable CSV ({exc})") from None
        missing = [c for c in ("volume", "z", "y", "x", "decision") if c not in df.columns]
        if missing:
            raise ClarityInputError(f"{self.path}: missing column(s) {', '.join(missing)}; expected the "
                                    "columns of clarity count's review.csv")
        for c in ("reviewer", "time"):
            if c not in df.columns:
                df[c] = ""
        self._df = df
        self._index = {self._key(v, (z, y, x)): i for i, (v, z, y, x) in
                       enumerate(zip(df.volume, df.z, df.y, df.x))}
        self._seen = self._stat()
        return self

    @staticmethod
    def _key(volume, zyx: Sequence) -> tuple:
        return (str(volume), *(int(round(float(c))) for c in zyx))

    def get(self, brain: str, zyx: Sequence[float]) -> str | None:
        """The decision of the candidate at ``zyx`` of volume ``brain`` (``"cell"``,
        ``"not_cell"``, ``"unsure"``) or None while undecided."""
        i = self._index.get(self._key(brain, zyx))
        if i is None:
            return None
        try:
            return parse_decision(self._df.at[i, "decision"])
        except ValueError:
            raise ClarityInputError(f"{self.path}: row {i + 1}: unknown decision "
                                    f"{self._df.at[i, 'decision']!r}") from None

    def record(self, brain: str, zyx: Sequence[float], decision: str, *, model: str = "",
               reviewer: str = "") -> None:
        """Write one decision into its row and save the file (atomically). ``model`` is accepted
        for the gallery's interface; the review file already names its model (review.json)."""
        key = self._key(brain, zyx)
        if self._stat() != self._seen:  # filled by another tool meanwhile: keep its rows
            self.reload()
        i = self._index.get(key)
        if i is None:
            raise ClarityInputError(f"{self.path}: candidate {key[0]} {key[1:]} is not in this review")
        d = parse_decision(decision)
        if d is None:
            raise ClarityInputError(f"{self.path}: an empty decision for {key[0]} {key[1:]}")
        self._df.at[i, "decision"] = WRITTEN[d]
        self._df.at[i, "reviewer"] = str(reviewer)
        self._df.at[i, "time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with atomic_write(self.path) as tmp:
            self._df.to_csv(tmp, index=False)
        self._seen = self._stat()

    def items(self) -> pd.DataFrame:
        """The rows as the gallery's items table: ``brain`` (= volume), z, y, x, score, in file order."""
        df = self._df
        return pd.DataFrame({"brain": df.volume.astype(str), "z": df.z.astype(float).astype(int),
                             "y": df.y.astype(float).astype(int), "x": df.x.astype(float).astype(int),
                             "score": pd.to_numeric(df.score, errors="coerce") if "score" in df else 0.0})

    def progress(self) -> dict:
        """Counts of the decisions so far: cell, not_cell, unsure, undecided."""
        d = [parse_decision(v) for v in self._df.decision]
        return {"cell": d.count(CELL), "not_cell": d.count(NOT_CELL), "unsure": d.count(UNSURE),
                "undecided": d.count(None)}

    def __len__(self) -> int:
        return len(self._df)
