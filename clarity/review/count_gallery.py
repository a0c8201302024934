"""The review gallery of a ``clarity count`` output folder (notebook 08).

:func:`count_gallery` shows the candidates drawn into ``DIR/review.csv`` in review order in
:class:`~clarity.review.ReviewGallery`, reading the volumes from the sources ``review.json``
names; every click is saved into ``review.csv`` itself (:class:`clarity.count.ReviewFile`),
which ``python -m clarity count ... --decisions DIR/review.csv`` then reads.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..count.files import read_design
from ..count.review_file import ReviewFile
from ..io import ClarityInputError, read_volume
from .gallery import ReviewGallery

__all__ = ["count_gallery"]


def count_gallery(out_dir: str | os.PathLike, *, reviewer: str = "", page_size: int = 12, **kw):
    """The review gallery (:class:`clarity.review.ReviewGallery`) of a ``clarity count`` output
    folder: its ``review.csv`` in review order, the volumes read from the sources ``review.json``
    names, every click saved into ``review.csv``. Returns ``(gallery, ReviewFile)``."""
    out_dir = Path(out_dir)
    info, _, _ = read_design(out_dir)
    sources = {str(v["name"]): v["source"] for v in info.get("volumes", [])}
    store = ReviewFile(out_dir / "review.csv")

    def load(name: str):
        if name not in sources:
            raise ClarityInputError(f"{out_dir / 'review.json'}: no source for volume {name!r}")
        return read_volume(sources[name], mmap=True, check_finite=False)

    model = str((info.get("model") or {}).get("path", ""))
    gallery = ReviewGallery(store.items(), load, store=store, model=model, reviewer=reviewer,
                            page_size=page_size, sort_by_score=False, **kw)
    return gallery, store
