"""What the review loop (:mod:`clarity.review.loop`) needs from a data root before it runs.

The loop scores held-out brains against complete labels and, headless, simulates its reviewer
from them; a lab's root with annotations only has neither, and notebook 07 then says so in one
line and moves on instead of failing the report (:func:`loop_unavailable`).
"""

from __future__ import annotations

from ..io import list_brains
from ..labels import as_store
from .retrain import fold_protocol

__all__ = ["loop_unavailable"]


def loop_unavailable(paths, splits, *, simulate: bool, store=None, config=None) -> str | None:
    """Why :func:`run_loop` cannot run on ``splits`` of this data root, in one line; None when it can.

    The loop scores its held-out (test) brains against their **complete** labels (``truth/``),
    and headless its simulated reviewer decides from the review brain's complete labels; a root
    with partial annotations only cannot do either. When ``store`` is given (a person's review,
    ``simulate=False``), it also needs decisions on the first split's review brain there. Nothing
    is computed: the check reads the fold protocol (``done.json``), the data root's listing and
    the store.

    Parameters
    ----------
    paths : clarity.paths.Paths
    splits : list of str
        By-brain folds of notebook 04a.
    simulate : bool, keyword-only
        Headless run with the simulated reviewer.
    store : ReviewStore, path or None, keyword-only
        A person's review store, checked for decisions on the review brain (None: not checked).
    config : clarity.review.loop.LoopConfig, keyword-only
        Not read yet; the loop's options, for checks that depend on them.
    """
    if not splits:
        return "no fold model to start from (run notebook 04a_validate_fold first)"
    every = list_brains(paths.data_dir)
    groups = {b.name: b.group for b in every}
    need = []
    for split in splits:
        proto = fold_protocol(paths, split)
        review = groups.get(proto["val_brains"][0])
        tests = [groups[n] for n in proto["test_brains"] if n in groups]
        need += tests + ([review] if simulate else [])
    need = list(dict.fromkeys(need))
    lacking = [g for g in need if any(b.truth is None for b in every if b.group == g)]
    if lacking:
        what = "score the held-out brains and simulate a reviewer" if simulate else "score the held-out brains"
        return (f"the review loop needs complete labels (truth/) to {what}; brain(s) {', '.join(map(str, lacking))} "
                f"of {paths.data_dir} have annotations only")
    if store is not None and not simulate:
        proto = fold_protocol(paths, splits[0])
        review_vols = {b.name for b in every if b.group == groups.get(proto["val_brains"][0])}
        decided = as_store(store).decisions()
        n = int(decided["brain"].astype(str).isin(review_vols).sum()) if len(decided) else 0
        if n == 0:
            return (f"no review decisions yet on the review brain {groups.get(proto['val_brains'][0])} "
                    f"(review it in the gallery, then run the loop)")
    return None
