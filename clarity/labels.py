"""The review decisions: a small CSV saved atomically after every decision, and the labels the
sampler reads from it.

Decisions go to ``<data>/labels/review.csv`` (:attr:`clarity.paths.Paths.review_csv`) with the
header ``brain,z,y,x,decision,model,time,reviewer``; files written before the ``reviewer`` column
existed (``brain,z,y,x,decision,model,time``) are read with an empty reviewer. :func:`review_labels` turns them into reviewed cells
(positives, origin ``"review_cell"``) and reviewed non-cells (hard negatives, origin
``"review_noncell"``) for :func:`clarity.sampling.sample_dataset`. Raw annotations are never
modified.

Conventions: coordinates are (z, y, x) voxels.
"""

from __future__ import annotations

import csv
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .io import ClarityInputError, atomic_write

__all__ = [
    "DECISIONS",
    "COLUMNS",
    "LEGACY_COLUMNS",
    "DECISION_LABELS",
    "DECISION_COLOURS",
    "Key",
    "norm_decision",
    "voxel_key",
    "ReviewStore",
    "as_store",
    "review_labels",
]

#: The decisions a reviewer can take, as stored in the CSV.
DECISIONS = ("cell", "not_cell", "unsure")
#: Columns of the decisions CSV, in order. ``reviewer`` came last, so older files (without it,
#: :data:`LEGACY_COLUMNS`) are still read, with an empty reviewer.
COLUMNS = ("brain", "z", "y", "x", "decision", "model", "time", "reviewer")
#: The header of decision files written before the ``reviewer`` column existed.
LEGACY_COLUMNS = COLUMNS[:-1]
#: How each decision is written for a person (buttons, figure titles).
DECISION_LABELS = {"cell": "cell", "not_cell": "not a cell", "unsure": "unsure"}
#: The colour of each decision (tile frames, figure frames): green, red, orange.
DECISION_COLOURS = {"cell": "#2ca02c", "not_cell": "#d62728", "unsure": "#ff7f0e"}

_ALIASES = {"not a cell": "not_cell", "not cell": "not_cell", "not-cell": "not_cell",
            "noncell": "not_cell", "non_cell": "not_cell"}

#: ``(brain, z, y, x)``: one reviewed voxel.
Key = tuple[str, int, int, int]


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def norm_decision(decision: str) -> str:
    """``decision`` as stored (one of :data:`DECISIONS`); ``"not a cell"`` and similar spellings
    read as ``"not_cell"``. Raises ValueError for anything else."""
    d = str(decision).strip().lower()
    d = _ALIASES.get(d, d)
    if d not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS} (or 'not a cell'), not {decision!r}")
    return d


def voxel_key(brain: str, zyx: Sequence[float]) -> Key:
    """``(brain, z, y, x)`` with ``zyx`` (z, y, x voxels) rounded to integers; raises ValueError
    unless ``zyx`` is 3 finite numbers."""
    c = np.asarray(zyx, dtype=float).reshape(-1)
    if c.size != 3:
        raise ValueError(f"zyx must be 3 coordinates (z, y, x), got {zyx!r}")
    if not np.isfinite(c).all():
        raise ValueError(f"zyx must be finite, got {zyx!r}")
    z, y, x = (int(v) for v in np.rint(c))
    return (str(brain), z, y, x)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------------------------
# the decisions store
# --------------------------------------------------------------------------------------------
class ReviewStore:
    """Review decisions, kept in a CSV and saved after every change.

    The CSV has the header ``brain,z,y,x,decision,model,time,reviewer``: the brain name, the
    reviewed voxel (z, y, x) in voxels of that brain's volume, the decision (one of
    :data:`DECISIONS`), the model whose detection was reviewed (free text, may be empty), the
    time of the decision (ISO 8601, UTC) and who took it (free text, may be empty). A file with
    the older header (no ``reviewer``, :data:`LEGACY_COLUMNS`) reads with empty reviewers and is
    rewritten with the full header on the next decision. There is one row per (brain, z, y, x): a later decision replaces the earlier
    one. Rows are in the order the decisions were last taken.

    Every :meth:`record` / :meth:`record_many` rewrites the whole file atomically (temporary file
    in the same folder + :func:`os.replace`, via :func:`clarity.io.atomic_write`), so a crash never
    leaves a half-written file and no decision taken before the crash is lost. Before writing, the
    file is re-read if someone else (another kernel) changed it since, so two reviewers working on
    different items do not overwrite each other's decisions.

    Parameters
    ----------
    path : path
        The CSV, usually :attr:`clarity.paths.Paths.review_csv`. It need not exist yet; its
        folder is created on the first write.

    Raises
    ------
    ClarityInputError
        The file exists but is not a review CSV (wrong header, unknown decision, non-integer
        coordinates); the message names the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._rows: OrderedDict[Key, tuple[str, str, str, str]] = OrderedDict()
        self._seen: tuple | None = None
        self.reload()

    # -- file ---------------------------------------------------------------------------------
    def _stat(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> "ReviewStore":
        """Re-read the CSV from disk (an absent or empty file is an empty store); returns self."""
        rows: OrderedDict[Key, tuple[str, str, str, str]] = OrderedDict()
        stat = self._stat()
        if stat is not None and stat[1] > 0:
            try:
                with open(self.path, newline="", encoding="utf-8") as fh:
                    self._parse(csv.reader(fh), rows)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise ClarityInputError(f"{self.path}: not a readable CSV ({exc})") from None
        self._rows = rows
        self._seen = stat
        return self

    def _parse(self, reader, rows: OrderedDict) -> None:
        """Fill ``rows`` from the CSV ``reader`` (header first); a later row for a voxel wins."""
        header = next(reader, None)
        if header is None:
            header = []
        names = [h.strip().lower() for h in header]
        if sorted(names) not in (sorted(COLUMNS), sorted(LEGACY_COLUMNS)):
            raise ClarityInputError(
                f"{self.path}: not a review file: wrong header {header!r}; expected "
                f"{','.join(COLUMNS)} (or, from older versions, {','.join(LEGACY_COLUMNS)})")
        idx = [names.index(c) if c in names else None for c in COLUMNS]
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(names):
                raise ClarityInputError(
                    f"{self.path}, line {lineno}: {len(row)} fields, expected "
                    f"{len(names)} ({','.join(header)})")
            brain, z, y, x, decision, model, time, reviewer = (
                "" if i is None else row[i].strip() for i in idx)
            try:
                key = (brain, int(z), int(y), int(x))
            except ValueError:
                raise ClarityInputError(
                    f"{self.path}, line {lineno}: coordinates z,y,x must be integers "
                    f"(voxels), got {z!r}, {y!r}, {x!r}") from None
            if decision not in DECISIONS:
                raise ClarityInputError(
                    f"{self.path}, line {lineno}: unknown decision {decision!r}; "
                    f"expected one of {', '.join(DECISIONS)}")
            rows.pop(key, None)  # a later row for the same voxel wins
            rows[key] = (decision, model, time, reviewer)

    def _write(self) -> None:
        with atomic_write(self.path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(COLUMNS)
                for (brain, z, y, x), (decision, model, time, reviewer) in self._rows.items():
                    w.writerow([brain, z, y, x, decision, model, time, reviewer])
        self._seen = self._stat()

    # -- writing ------------------------------------------------------------------------------
    def record(self, brain: str, zyx: Sequence[float], decision: str, *, model: str = "",
               reviewer: str = "") -> None:
        """Record one decision and save the file at once (atomically).

        Parameters
        ----------
        brain : str
            Brain name.
        zyx : sequence of 3 numbers
            The reviewed voxel (z, y, x), in voxels; rounded to integers.
        decision : {"cell", "not_cell", "unsure"}
            ``"not a cell"`` is accepted for ``"not_cell"``.
        model : str, keyword-only
            The model (run name) whose detection this is; free text.
        reviewer : str, keyword-only
            Who decided (a person's name, ``"simulated-reviewer"``); free text.
        """
        self.record_many([(brain, zyx, decision)], model=model, reviewer=reviewer)

    def record_many(self, entries: Iterable[tuple[str, Sequence[float], str]], *,
                    model: str = "", reviewer: str = "") -> int:
        """Record several decisions ``(brain, (z, y, x), decision)`` with one atomic write.

        Later entries for the same voxel replace earlier ones. Returns the number of entries.
        """
        new = []
        for brain, zyx, decision in entries:
            new.append((voxel_key(brain, zyx), norm_decision(decision)))
        if self._stat() != self._seen:  # changed on disk by someone else: merge
            self.reload()
        time = _now()
        for key, decision in new:
            self._rows.pop(key, None)
            self._rows[key] = (decision, str(model), time, str(reviewer))
        self._write()
        return len(new)

    # -- reading ------------------------------------------------------------------------------
    def get(self, brain: str, zyx: Sequence[float]) -> str | None:
        """The decision for voxel ``zyx`` (z, y, x) of ``brain``, or ``None`` if not reviewed."""
        row = self._rows.get(voxel_key(brain, zyx))
        return None if row is None else row[0]

    def decisions(self):
        """All decisions as a :class:`pandas.DataFrame` with columns :data:`COLUMNS`.

        ``z``, ``y``, ``x`` are int64 voxel coordinates; one row per reviewed voxel.
        """
        recs = [(b, z, y, x, *v) for (b, z, y, x), v in self._rows.items()]
        df = pd.DataFrame(recs, columns=list(COLUMNS))
        return df.astype({"brain": str, "z": np.int64, "y": np.int64, "x": np.int64,
                          "decision": str, "model": str, "time": str, "reviewer": str})

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, item) -> bool:
        brain, zyx = item
        return voxel_key(brain, zyx) in self._rows

    def __repr__(self) -> str:
        return f"ReviewStore({str(self.path)!r}, {len(self)} decisions)"


def as_store(store: "ReviewStore | str | os.PathLike") -> ReviewStore:
    """``store`` itself if it is a :class:`ReviewStore` or another store with its ``get``,
    ``record`` and ``reload`` (:class:`clarity.count.ReviewFile`), else the store at that path."""
    if isinstance(store, ReviewStore) or all(callable(getattr(store, a, None)) for a in ("get", "record", "reload")):
        return store
    return ReviewStore(store)


# --------------------------------------------------------------------------------------------
# labels for the sampler
# --------------------------------------------------------------------------------------------
def review_labels(store: "ReviewStore | str | os.PathLike", *,
                  include_unsure: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Reviewed points per brain, as the sampler reads them.

    Parameters
    ----------
    store : ReviewStore or path
    include_unsure : bool, keyword-only
        Also return the ``"unsure"`` points (under their own key; they are never labels).

    Returns
    -------
    dict brain -> dict
        ``{"cell": (N, 3) int64, "not_cell": (M, 3) int64}`` voxel centres (z, y, x): cells to
        add as positives (origin ``"review_cell"``) and non-cells to add as hard negatives
        (origin ``"review_noncell"``); plus ``"unsure"`` if asked. Every brain with a decision
        has all keys (empty (0, 3) arrays where none).
    """
    store = as_store(store)
    df = store.decisions()
    keys = ["cell", "not_cell"] + (["unsure"] if include_unsure else [])
    out: dict[str, dict[str, np.ndarray]] = {}
    for brain in dict.fromkeys(df["brain"]):
        sub = df[df["brain"] == brain]
        out[brain] = {k: sub.loc[sub["decision"] == k, ["z", "y", "x"]].to_numpy(np.int64)
                      .reshape(-1, 3) for k in keys}
    return out
