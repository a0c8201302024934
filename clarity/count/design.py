"""The review sample of a brain's candidates: score strata, allocation, the seeded draw, the order.

The count of a brain is estimated from a *probability sample* of its candidates (every candidate
the screen proposes, at any score), so the design, not a model, carries the estimate:

- **strata** (:func:`score_strata`): the pooled candidates of all the brain's volumes are cut by
  score into ``H`` strata holding equal shares of the *prior Neyman weight*
  ``sum sqrt(q (1 - q))``, ``q`` the candidate's score clipped to ``[prior_floor, 1 - prior_floor]``
  (the model's score as a prior of P(cell)). Where many candidates score low, the low range is cut
  finer; cuts fall between distinct scores, so equal scores share a stratum.
- **allocation** (:func:`allocate`): Neyman allocation, ``n_h`` proportional to
  ``N_h sqrt(p_h (1 - p_h))`` with ``p_h`` the stratum's mean prior, but at least
  ``min_per_stratum`` in every stratum (no stratum unseen) and at most ``N_h`` (a census).
- **draw** (:func:`draw_review`): a simple random sample without replacement of ``n_h`` of the
  ``N_h`` candidates of each stratum (seeded), so each candidate of stratum ``h`` is drawn with the
  known inclusion probability ``n_h / N_h``.
- **order** (:func:`review_order`): a seeded shuffle that keeps every prefix balanced over the
  strata (within a stratum the order is random). A person reviews in file order; the decisions of
  the first ``k`` rows are then a random sample of each stratum too, so a partial review is a valid
  (smaller) sample.

Nothing here sees labels or coordinates: only scores and the seed. Scores are the detection's
probability in [0, 1] (the rescored one when the model rescores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_MIN_PER_STRATUM", "DEFAULT_PRIOR_FLOOR", "ReviewDesign", "default_strata", "score_strata",
           "assign_strata", "allocate", "draw_review", "review_order"]

#: Fewest candidates drawn from a stratum (all of it when it holds fewer).
DEFAULT_MIN_PER_STRATUM = 5
#: The model's score, as a prior of P(cell), is clipped to [floor, 1 - floor]: a score of 0.001
#: does not make a stratum certain.
DEFAULT_PRIOR_FLOOR = 0.05


@dataclass(frozen=True)
class ReviewDesign:
    """A stratified review design over one brain's pooled candidates.

    Attributes
    ----------
    cuts : tuple of float
        ``H - 1`` inner score cuts; a candidate of score ``s`` is in stratum
        ``searchsorted(cuts, s, side="right")`` (:func:`assign_strata`), 0 = lowest scores.
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

    @property
    def n_strata(self) -> int:
        return len(self.population)

    @property
    def inclusion_p(self) -> np.ndarray:
        """(H,) ``n_h / N_h``: the probability that a candidate of stratum ``h`` is drawn."""
        N = np.asarray(self.population, float)
        return np.divide(np.asarray(self.sample, float), N, out=np.zeros_like(N), where=N > 0)

    def strata(self, scores) -> np.ndarray:
        """The stratum of each score (:func:`assign_strata`)."""
        return assign_strata(scores, self.cuts)

    def table(self) -> pd.DataFrame:
        """One row per stratum: stratum, score_lo, score_hi, N, n, inclusion_p, prior."""
        lo, hi = (np.asarray([r[i] for r in self.score_range], float) for i in (0, 1))
        return pd.DataFrame({"stratum": np.arange(self.n_strata), "score_lo": lo, "score_hi": hi,
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
                   prior_floor=float(d.get("prior_floor", DEFAULT_PRIOR_FLOOR)))


def default_strata(n_review: int, *, min_per_stratum: int = DEFAULT_MIN_PER_STRATUM) -> int:
    """Strata for a review of ``n_review``: about ``2 * min_per_stratum`` draws each, 1 to 10
    (200 -> 10, 100 -> 10, 50 -> 5, 20 -> 2)."""
    return int(max(1, min(10, int(n_review) // max(1, 2 * int(min_per_stratum)))))


def _prior(scores, prior_floor: float) -> np.ndarray:
    return np.clip(np.asarray(scores, float), prior_floor, 1.0 - prior_floor)


def assign_strata(scores, cuts) -> np.ndarray:
    """Stratum (int64, 0 = lowest scores) of each score: ``searchsorted(cuts, s, side="right")``."""
    return np.searchsorted(np.asarray(cuts, float), np.asarray(scores, float).reshape(-1), side="right").astype(np.int64)


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


def allocate(population, prior, n: int, *, minimum: int = DEFAULT_MIN_PER_STRATUM) -> np.ndarray:
    """Neyman allocation of ``n`` draws over strata, at least ``minimum`` (or all) per stratum.

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
    a = N * np.sqrt(np.clip(p, 1e-6, 1 - 1e-6) * (1 - np.clip(p, 1e-6, 1 - 1e-6)))
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
                min_per_stratum: int = DEFAULT_MIN_PER_STRATUM,
                prior_floor: float = DEFAULT_PRIOR_FLOOR) -> tuple[np.ndarray, ReviewDesign]:
    """Draw the review: stratify the candidates by score, allocate, sample each stratum, order.

    Parameters
    ----------
    scores : (N,) float
        Scores of every candidate of the brain (all volumes pooled, in a fixed order).
    n_review : int, keyword-only
        Candidates to draw (all of them when there are fewer).
    seed : int, keyword-only
        Seeds the draw and the order; the same scores and seed give the same rows.
    n_strata : int, keyword-only
        Default :func:`default_strata` of ``n_review``.
    min_per_stratum : int, keyword-only
        Fewest draws per stratum.
    prior_floor : float, keyword-only
        See :func:`score_strata`.

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
    H = default_strata(n_review, min_per_stratum=min_per_stratum) if n_strata is None else int(n_strata)
    cuts = score_strata(s, n_strata=H, prior_floor=prior_floor, min_size=min(int(min_per_stratum), len(s)))
    st = assign_strata(s, cuts)
    H = len(cuts) + 1
    N = np.bincount(st, minlength=H)
    q = _prior(s, prior_floor)
    prior = np.array([q[st == h].mean() for h in range(H)])
    n_h = allocate(N, prior, int(n_review), minimum=min_per_stratum)
    rng = np.random.default_rng(int(seed))
    drawn = np.concatenate([rng.choice(np.flatnonzero(st == h), size=int(n_h[h]), replace=False)
                            for h in range(H)]).astype(np.int64)
    rows = drawn[review_order(st[drawn], seed=seed)]
    design = ReviewDesign(cuts=tuple(cuts), population=tuple(int(v) for v in N), sample=tuple(int(v) for v in n_h),
                          prior=tuple(float(v) for v in prior),
                          score_range=tuple((float(s[st == h].min()), float(s[st == h].max())) for h in range(H)),
                          seed=int(seed), n_review=int(n_review), min_per_stratum=int(min_per_stratum),
                          prior_floor=float(prior_floor))
    return rows, design
