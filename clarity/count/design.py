"""The review sample of a brain's candidates: strata, allocation, the seeded draw, the order.

The count of a brain is estimated from a *probability sample* of its candidates (every candidate
the screen proposes, at any score), so the design, not a model, carries the estimate: the
estimate is unbiased whatever the strata; the strata only decide how wide its interval is.

Two schemes (``scheme=``):

- **"rank"** (the default, :func:`rank_strata`): each candidate's *design rank* is the higher of
  its score's and its brightness's rank among the brain's candidates (``u = max(G_score(s),
  G_brightness(b))``, ``G`` the share of the brain's candidates strictly below; brightness = the screen's filter response,
  the ``response`` column). Annotators of different brains draw the line at different
  brightness, so the cells a model trained on other brains scores low are often bright: a
  candidate low on *both* is almost never a cell. The strata cut ``u`` into ``H`` geometric
  slices, each ``ratio`` times the one below, the top one holding ``top_share`` of the candidates
  (cells are rare below the top: the top is cut finest), and every stratum gets the same number
  of draws (:func:`allocate`, ``scheme="equal"``). A stratum is stored as two cut lists, one on
  the score and one on the brightness: ``stratum = max(searchsorted(score_cuts, s),
  searchsorted(brightness_cuts, b))`` (:meth:`ReviewDesign.strata`), which is the stratum of
  ``u`` without any ranks to recompute. On the four held-out c-Fos brains this design gave count
  errors a third to a half of the score-only design's at the same N (notebook 08; issue 19).
  Without a brightness the design rank is the score's.
- **"score"** (the first design): the candidates are cut by score into ``H`` strata holding equal
  shares of the *prior Neyman weight* ``sum sqrt(q (1 - q))``, ``q`` the score clipped to
  ``[prior_floor, 1 - prior_floor]`` (:func:`score_strata`), with Neyman allocation ``n_h``
  proportional to ``N_h sqrt(p_h (1 - p_h))`` (:func:`allocate`). Efficient when the score is
  calibrated for the brain; on a brain whose annotators differ it spends draws on mid scores that
  are rarely cells.

Both: at least ``min_per_stratum`` draws per stratum (no stratum unseen), at most ``N_h`` (a
census); a simple random sample without replacement of ``n_h`` of the ``N_h`` candidates of each
stratum (seeded), so each candidate of stratum ``h`` is drawn with the known inclusion
probability ``n_h / N_h`` (:func:`draw_review`); a seeded order that keeps every prefix balanced
over the strata (:func:`review_order`): the decisions of the first ``k`` rows are a random sample
of each stratum too, so a partial review is a valid (smaller) sample.

Nothing here sees labels or coordinates: only scores, brightness and the seed. Scores are the
detection's probability in [0, 1] (the rescored one when the model rescores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_MIN_PER_STRATUM", "DEFAULT_PRIOR_FLOOR", "DEFAULT_SCHEME", "DEFAULT_TOP_SHARE", "SCHEMES",
           "BRIGHTNESS_COLUMN", "brightness_of", "ReviewDesign", "default_strata", "score_strata", "rank_strata", "geometric_levels",
           "assign_strata", "allocate", "draw_review", "review_order"]

#: Fewest candidates drawn from a stratum (all of it when it holds fewer).
DEFAULT_MIN_PER_STRATUM = 5
#: The model's score, as a prior of P(cell), is clipped to [floor, 1 - floor]: a score of 0.001
#: does not make a stratum certain.
DEFAULT_PRIOR_FLOOR = 0.05
#: The review designs (see the module note).
SCHEMES = ("rank", "score")
DEFAULT_SCHEME = "rank"
#: Share of the candidates in the top stratum of the "rank" design.
DEFAULT_TOP_SHARE = 0.012
#: The candidate column the "rank" design reads as brightness (the screen's filter response).
BRIGHTNESS_COLUMN = "response"


@dataclass(frozen=True)
class ReviewDesign:
    """A stratified review design over one brain's pooled candidates.

    Attributes
    ----------
    cuts : tuple of float
        ``H - 1`` ascending score cuts; a candidate of score ``s`` is in stratum
        ``searchsorted(cuts, s, side="right")`` (:func:`assign_strata`), 0 = lowest scores; with
        ``brightness_cuts``, the higher of that and its brightness's stratum.
    population : tuple of int
        ``N_h``: candidates per stratum.
    sample : tuple of int
        ``n_h``: candidates drawn per stratum (``sum = n_review``, or all candidates when fewer).
    prior : tuple of float
        Mean prior P(cell) (the clipped score) per stratum, used by the allocation.
    score_range : tuple of (float, float)
        Lowest and highest candidate score per stratum.
    seed : int
        Seeds the draw and the order.
    n_review : int
        Candidates asked for.
    min_per_stratum : int
    prior_floor : float
    brightness_cuts : tuple of float or None
        ``H - 1`` ascending brightness cuts (the "rank" scheme with a brightness), else None.
    scheme : str
        "rank" or "score" (:data:`SCHEMES`); reviews drawn before the "rank" design read as "score".
    """

    cuts: tuple
    population: tuple
    sample: tuple
    prior: tuple
    score_range: tuple
    seed: int
    n_review: int
    min_per_stratum: int = DEFAULT_MIN_PER_STRATUM
    prior_floor: float = DEFAULT_PRIOR_FLOOR
    brightness_cuts: tuple | None = None
    scheme: str = "score"

    @property
    def n_strata(self) -> int:
        return len(self.population)

    @property
    def inclusion_p(self) -> np.ndarray:
        """(H,) ``n_h / N_h``: the probability that a candidate of stratum ``h`` is drawn."""
        N = np.asarray(self.population, float)
        return np.divide(np.asarray(self.sample, float), N, out=np.zeros_like(N), where=N > 0)

    def strata(self, scores, brightness=None) -> np.ndarray:
        """The stratum of each candidate (int64, 0 = lowest) from its score and, when the design
        has brightness cuts, its brightness: the higher of the two cut lists' strata."""
        if self.brightness_cuts is not None and brightness is None:
            raise ValueError(f"this review design's strata need each candidate's brightness "
                             f"(the '{BRIGHTNESS_COLUMN}' column)")
        return assign_strata(scores, self.cuts, brightness, self.brightness_cuts)

    def strata_of(self, frame: pd.DataFrame) -> np.ndarray:
        """:meth:`strata` of a candidate table (``score`` [, ``response``])."""
        if self.brightness_cuts is not None and BRIGHTNESS_COLUMN not in frame:
            raise ValueError(f"the candidates have no '{BRIGHTNESS_COLUMN}' column, which this review design "
                             "stratifies on; detect them again with this version of clarity")
        return self.strata(frame["score"].to_numpy(float), brightness_of(frame))

    def table(self) -> pd.DataFrame:
        """One row per stratum: stratum, score_above, brightness_above (the stratum holds the
        candidates above either lower cut, below the next stratum's; NaN: no lower cut),
        score_lo, score_hi, N, n, inclusion_p, prior."""
        lo, hi = (np.asarray([r[i] for r in self.score_range], float) for i in (0, 1))
        below = lambda cuts: np.r_[np.nan, np.asarray(cuts, float)]  # noqa: E731
        b = below(self.brightness_cuts) if self.brightness_cuts is not None else np.full(self.n_strata, np.nan)
        return pd.DataFrame({"stratum": np.arange(self.n_strata), "score_above": below(self.cuts),
                             "brightness_above": b, "score_lo": lo, "score_hi": hi,
                             "N": np.asarray(self.population, int), "n": np.asarray(self.sample, int),
                             "inclusion_p": self.inclusion_p, "prior": np.asarray(self.prior, float)})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["score_range"] = [list(r) for r in self.score_range]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ReviewDesign":
        return cls(cuts=tuple(float(c) for c in d["cuts"]), population=tuple(int(n) for n in d["population"]),
                   sample=tuple(int(n) for n in d["sample"]), prior=tuple(float(p) for p in d["prior"]),
                   score_range=tuple((float(a), float(b)) for a, b in d["score_range"]),
                   seed=int(d["seed"]), n_review=int(d["n_review"]),
                   min_per_stratum=int(d.get("min_per_stratum", DEFAULT_MIN_PER_STRATUM)),
                   prior_floor=float(d.get("prior_floor", DEFAULT_PRIOR_FLOOR)),
                   brightness_cuts=(None if d.get("brightness_cuts") is None
                                    else tuple(float(c) for c in d["brightness_cuts"])),
                   scheme=str(d.get("scheme", "score")))


def default_strata(n_review: int, *, min_per_stratum: int = DEFAULT_MIN_PER_STRATUM,
                   scheme: str = DEFAULT_SCHEME) -> int:
    """Strata for a review of ``n_review``.

    "rank": about 5 draws each or more, 2 to 12 (200 -> 12, 100 -> 12, 50 -> 10); "score": about
    ``2 * min_per_stratum`` draws each, 1 to 10 (200 -> 10, 100 -> 10, 50 -> 5, 20 -> 2).
    """
    if scheme == "rank":
        return int(max(2, min(12, int(n_review) // 5)))
    return int(max(1, min(10, int(n_review) // max(1, 2 * int(min_per_stratum)))))


def geometric_levels(n_strata: int, *, top_share: float = DEFAULT_TOP_SHARE) -> np.ndarray:
    """``H - 1`` ascending cumulative shares of ``H`` geometric strata, the top one holding ``top_share``.

    Stratum ``k`` (0 = lowest) holds a share proportional to ``ratio ** k``; ``ratio`` in (0, 1] is
    found so that the top stratum holds ``top_share`` (equal strata when ``top_share >= 1 / H``).
    """
    H = int(n_strata)
    if H < 2:
        return np.zeros(0)
    share = lambda r: r ** (H - 1) * (1 - r) / (1 - r ** H)  # noqa: E731
    if not 0 < float(top_share) < 1.0 / H:
        w = np.ones(H)
    else:
        lo, hi = 1e-9, 1 - 1e-9
        for _ in range(100):  # the top share rises with the ratio
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if share(mid) < top_share else (lo, mid)
        w = hi ** np.arange(H)
    return np.cumsum(w / w.sum())[:-1]


def _value_cuts(values: np.ndarray, levels) -> list[float]:
    """Per level ``c``: a cut with exactly the values whose rank share ``G`` (the share of values
    strictly below them: tied values share the lowest rank, so a constant brightness ranks every
    candidate at 0 and leaves the design to the score) is at most ``c`` at or below it."""
    u, counts = np.unique(values, return_counts=True)
    G = np.concatenate([[0.0], np.cumsum(counts)[:-1]]) / len(values)
    out = []
    for c in levels:
        j = int(np.searchsorted(G, c + 1e-12, side="right")) - 1  # the largest distinct value with G <= c
        # every value at or below: a cut above the largest (assign_strata counts cuts <= a value)
        out.append(float(u[-1] + max(1.0, abs(u[-1]))) if j >= len(u) - 1 else float((u[j] + u[j + 1]) / 2))
    return out


def rank_strata(scores, brightness=None, *, n_strata: int,
                top_share: float = DEFAULT_TOP_SHARE) -> tuple[tuple, tuple | None]:
    """Cuts of the "rank" design: geometric strata of ``u = max(G_score(s), G_brightness(b))``
    (``G``: the share of candidates strictly below).

    Parameters
    ----------
    scores : (N,) float
        Pooled candidate scores.
    brightness : (N,) float, optional
        Their brightness (the screen's filter response); None: ``u = G_score(s)``.
    n_strata : int, keyword-only
        Strata wanted (:func:`geometric_levels`); fewer come back where ties leave a stratum empty.
    top_share : float, keyword-only

    Returns
    -------
    (score_cuts, brightness_cuts): ascending tuples of ``H - 1`` floats (brightness_cuts None
    without a brightness); :meth:`ReviewDesign.strata` assigns with them.
    """
    s = np.asarray(scores, float).reshape(-1)
    b = None if brightness is None else np.asarray(brightness, float).reshape(-1)
    if not len(s) or not np.isfinite(s).all() or (b is not None and (len(b) != len(s) or not np.isfinite(b).all())):
        raise ValueError("rank_strata: need finite scores (and as many finite brightness values)")
    levels = geometric_levels(n_strata, top_share=top_share)
    sc, bc = _value_cuts(s, levels), (None if b is None else _value_cuts(b, levels))
    while sc:  # drop a cut that leaves a stratum empty (ties)
        st = assign_strata(s, sc, b, bc)
        empty = np.flatnonzero(np.bincount(st, minlength=len(sc) + 1) == 0)
        if not len(empty):
            break
        k = max(int(empty[0]) - 1, 0)
        del sc[k]
        if bc is not None:
            del bc[k]
    return tuple(sc), (None if bc is None else tuple(bc))


def _prior(scores, prior_floor: float) -> np.ndarray:
    return np.clip(np.asarray(scores, float), prior_floor, 1.0 - prior_floor)


def assign_strata(scores, cuts, brightness=None, brightness_cuts=None) -> np.ndarray:
    """Stratum (int64, 0 = lowest scores) of each score: ``searchsorted(cuts, s, side="right")``;
    with ``brightness_cuts``, the higher of that and ``searchsorted(brightness_cuts, b, side="right")``."""
    st = np.searchsorted(np.asarray(cuts, float), np.asarray(scores, float).reshape(-1), side="right").astype(np.int64)
    if brightness_cuts is None:
        return st
    return np.maximum(st, assign_strata(brightness, brightness_cuts))


def brightness_of(frame: pd.DataFrame):
    """The candidates' brightness (the ``response`` column) as float, or None without one."""
    return frame[BRIGHTNESS_COLUMN].to_numpy(float) if BRIGHTNESS_COLUMN in frame else None


def score_strata(scores, *, n_strata: int, prior_floor: float = DEFAULT_PRIOR_FLOOR,
                 min_size: int = 1) -> tuple[float, ...]:
    """Inner score cuts of (at most) ``n_strata`` strata of equal prior Neyman weight.

    Parameters
    ----------
    scores : (N,) float
        Pooled candidate scores (probabilities).
    n_strata : int, keyword-only
        Strata wanted; fewer come back when there are fewer distinct scores or when a stratum
        would hold fewer than ``min_size`` candidates (it is merged with its neighbour).
    prior_floor : float, keyword-only
        The prior ``q`` is the score clipped to ``[prior_floor, 1 - prior_floor]``; each candidate
        weighs ``sqrt(q (1 - q))``.
    min_size : int, keyword-only
        Fewest candidates per stratum.

    Returns
    -------
    tuple of float: ``H - 1`` ascending cuts, each half-way between two distinct scores.
    """
    s = np.asarray(scores, float).reshape(-1)
    if not len(s) or not np.isfinite(s).all():
        raise ValueError("score_strata: need finite scores")
    u, counts = np.unique(s, return_counts=True)
    q = _prior(u, prior_floor)
    w = counts * np.sqrt(q * (1 - q))
    cum = np.cumsum(w)
    H = int(max(1, min(int(n_strata), len(u))))
    # cut after the distinct score where the cumulative weight crosses k / H of the total
    ends = sorted({int(np.searchsorted(cum, cum[-1] * k / H, side="left")) for k in range(1, H)})
    ends = [e for e in ends if e < len(u) - 1]
    bounds = [0] + [e + 1 for e in ends] + [len(u)]  # stratum j holds distinct scores bounds[j]:bounds[j+1]
    csum = np.concatenate([[0], np.cumsum(counts)])
    size = lambda b: [int(csum[b[j + 1]] - csum[b[j]]) for j in range(len(b) - 1)]  # noqa: E731
    while len(bounds) > 2 and min(size(bounds)) < int(min_size):
        j = int(np.argmin(size(bounds)))
        sz = size(bounds)
        # merge stratum j with its smaller neighbour (drop the cut between them)
        if j == 0 or (j < len(sz) - 1 and sz[j + 1] < sz[j - 1]):
            del bounds[j + 1]
        else:
            del bounds[j]
    return tuple(float((u[b - 1] + u[b]) / 2) for b in bounds[1:-1])


def allocate(population, prior, n: int, *, minimum: int = DEFAULT_MIN_PER_STRATUM,
             scheme: str = "neyman") -> np.ndarray:
    """Neyman (or equal) allocation of ``n`` draws over strata, at least ``minimum`` (or all) per stratum.

    Parameters
    ----------
    population : (H,) int
        ``N_h``.
    prior : (H,) float
        Prior P(cell) per stratum ``p_h``: ``n_h`` is proportional to ``N_h sqrt(p_h (1 - p_h))``.
    n : int
        Draws in all; with ``n >= sum N_h`` every candidate is drawn.
    minimum : int, keyword-only
        Fewest draws per stratum (lowered to ``n // H`` when ``n`` cannot give every stratum that).
    scheme : {"neyman", "equal"}, keyword-only
        "equal": the same draws in every non-empty stratum (``prior`` unused), the draws a small
        stratum cannot take shared by the others.

    Returns
    -------
    (H,) int64 ``n_h`` with ``min(minimum, N_h) <= n_h <= N_h`` and ``sum n_h = min(n, sum N_h)``.
    """
    N = np.asarray(population, np.int64).reshape(-1)
    p = np.asarray(prior, float).reshape(-1)
    n = int(min(int(n), int(N.sum())))
    if n <= 0:
        return np.zeros(len(N), np.int64)
    lo = np.minimum(N, min(int(minimum), n // max(len(N), 1))).astype(float)
    if scheme not in ("neyman", "equal"):
        raise ValueError(f"allocation scheme must be 'neyman' or 'equal', not {scheme!r}")
    a = N * np.sqrt(np.clip(p, 1e-6, 1 - 1e-6) * (1 - np.clip(p, 1e-6, 1 - 1e-6)))
    if scheme == "equal":
        a = np.ones(len(N))
    a = np.where(N > 0, np.maximum(a, 1e-12), 0.0)

    def total(lam):
        return np.clip(lam * a, lo, N).sum()

    hi_lam = 1.0
    while total(hi_lam) < n:
        hi_lam *= 2.0
    lo_lam = 0.0
    for _ in range(200):  # bisection: sum clip(lam a_h, lo_h, N_h) = n
        mid = (lo_lam + hi_lam) / 2
        lo_lam, hi_lam = (mid, hi_lam) if total(mid) < n else (lo_lam, mid)
    x = np.clip(hi_lam * a, lo, N)
    out = np.floor(x + 1e-9).astype(np.int64)
    rest = n - int(out.sum())
    order = np.argsort(-(x - out), kind="mergesort")  # largest remainders first, room permitting
    for h in order:
        if rest <= 0:
            break
        if out[h] < N[h]:
            out[h] += 1
            rest -= 1
    while rest < 0:  # rounding overshoot (only with floors at their bounds): take from the largest
        h = int(np.argmax(np.where(out > lo, out - lo, -1)))
        out[h] -= 1
        rest += 1
    return out


def review_order(strata, *, seed: int) -> np.ndarray:
    """A seeded review order of drawn candidates that keeps every prefix balanced over strata.

    The ``k``-th drawn candidate of stratum ``h`` (``k = 0 .. n_h - 1``, in the draw's random
    order) gets the key ``(k + U) / n_h``, ``U`` uniform in (0, 1); the order sorts the keys. The
    first ``L`` rows then hold about ``L n_h / n`` candidates of stratum ``h``, a random subset of
    its draws.

    Parameters
    ----------
    strata : (n,) int
        Stratum of each drawn candidate, in the draw's order.
    seed : int, keyword-only

    Returns
    -------
    int64 permutation of ``range(n)``.
    """
    st = np.asarray(strata, np.int64).reshape(-1)
    rng = np.random.default_rng([int(seed), 1])
    key = np.empty(len(st), float)
    for h in np.unique(st):
        idx = np.flatnonzero(st == h)
        key[idx] = (np.arange(len(idx)) + rng.uniform(size=len(idx))) / len(idx)
    return np.argsort(key, kind="mergesort").astype(np.int64)


def draw_review(scores, *, n_review: int, seed: int, n_strata: int | None = None,
                min_per_stratum: int = DEFAULT_MIN_PER_STRATUM, prior_floor: float = DEFAULT_PRIOR_FLOOR,
                brightness=None, scheme: str = DEFAULT_SCHEME,
                top_share: float = DEFAULT_TOP_SHARE) -> tuple[np.ndarray, ReviewDesign]:
    """Draw the review: stratify the candidates, allocate, sample each stratum, order.

    Parameters
    ----------
    scores : (N,) float
        Scores of every candidate of the brain (all volumes pooled, in a fixed order).
    n_review : int, keyword-only
        Candidates to draw (all of them when there are fewer).
    seed : int, keyword-only
        Seeds the draw and the order; the same scores (and brightness) and seed give the same rows.
    n_strata : int, keyword-only
        Default :func:`default_strata` of ``n_review`` and the scheme.
    min_per_stratum : int, keyword-only
        Fewest draws per stratum.
    prior_floor : float, keyword-only
        See :func:`score_strata` (the "score" scheme's strata; both schemes' ``prior`` column).
    brightness : (N,) float, keyword-only
        The candidates' brightness (the screen's filter response, column ``response``), for the
        "rank" scheme; None: it ranks by score alone.
    scheme : {"rank", "score"}, keyword-only
        The design (see the module note).
    top_share : float, keyword-only
        Share of the candidates in the "rank" design's top stratum.

    Returns
    -------
    rows : int64 array (n,)
        Indices into ``scores`` of the drawn candidates, in review order.
    design : ReviewDesign
    """
    s = np.asarray(scores, float).reshape(-1)
    if int(n_review) < 1:
        raise ValueError(f"n_review must be >= 1, not {n_review}")
    if not len(s):
        raise ValueError("no candidates to draw a review from")
    if scheme not in SCHEMES:
        raise ValueError(f"review scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")
    H = default_strata(n_review, min_per_stratum=min_per_stratum, scheme=scheme) if n_strata is None else int(n_strata)
    b = None if brightness is None or scheme != "rank" else np.asarray(brightness, float).reshape(-1)
    if scheme == "rank":
        cuts, bcuts = rank_strata(s, b, n_strata=H, top_share=top_share)
    else:
        cuts, bcuts = score_strata(s, n_strata=H, prior_floor=prior_floor, min_size=min(int(min_per_stratum), len(s))), None
    st = assign_strata(s, cuts, b, bcuts)
    H = len(cuts) + 1
    N = np.bincount(st, minlength=H)
    q = _prior(s, prior_floor)
    prior = np.array([q[st == h].mean() for h in range(H)])
    n_h = allocate(N, prior, int(n_review), minimum=min_per_stratum,
                   scheme="equal" if scheme == "rank" else "neyman")
    rng = np.random.default_rng(int(seed))
    drawn = np.concatenate([rng.choice(np.flatnonzero(st == h), size=int(n_h[h]), replace=False)
                            for h in range(H)]).astype(np.int64)
    rows = drawn[review_order(st[drawn], seed=seed)]
    design = ReviewDesign(cuts=tuple(cuts), population=tuple(int(v) for v in N), sample=tuple(int(v) for v in n_h),
                          prior=tuple(float(v) for v in prior),
                          score_range=tuple((float(s[st == h].min()), float(s[st == h].max())) for h in range(H)),
                          seed=int(seed), n_review=int(n_review), min_per_stratum=int(min_per_stratum),
                          prior_floor=float(prior_floor), brightness_cuts=bcuts, scheme=scheme)
    return rows, design
