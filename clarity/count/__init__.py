"""Count a brain you can trust: review a sample of its own candidates, get its count with a 95 % interval.

A threshold learned on other brains does not fit the next one (annotators of different brains
draw the line between a cell and background at different brightness). ``clarity count`` asks
a person to decide a probability sample of the brain's own candidates and returns that brain's
P(cell | score), its own threshold, and its count with an interval:

1. detect every volume of the brain as ``clarity detect`` does, keeping *every* candidate of the
   screen with its score (also below the model's threshold);
2. draw ``N`` of them (200 by default) with known inclusion probabilities, stratified by the higher
   of each candidate's score rank and brightness rank (or by score; :mod:`~clarity.count.design`),
   into ``review.csv``; nothing in the draw depends on labels;
3. from the decisions (``cell`` / ``not a cell`` / ``unsure``, all or some of them): the stratified
   estimate of the cells among all candidates with its interval, P(cell | score), the threshold
   of best expected F1 (:mod:`~clarity.count.estimate`), the cells written per volume.

Modules:

``design``     strata (score and brightness ranks, or score), allocation, the seeded draw and the review order
``estimate``   the stratified count and its interval, P(cell | score), the threshold, the cells kept
``decisions``  a filled review file read back and checked against the drawn review
``files``      the files of the output folder (candidates, review.csv/json, cells), atomic writes
``figure``     count.png
``run``        the two steps of the command line (draw; count from the decisions)
``simulate``   simulated reviews from a brain's labels: count error, coverage, F1 per seed
``spread``     without a review: the held-out brains' count errors, a new brain's 95 % interval
``review_file`` review.csv as the gallery's decision store (every click saved; the gallery itself:
              :func:`clarity.review.count_gallery`)

Arrays are (z, y, x) in voxels; scores are probabilities in [0, 1]; every random choice takes a seed.
"""

from .decisions import REVIEW_COLUMNS, SPELLINGS, parse_decision, read_decisions
from .design import (SCHEMES, ReviewDesign, allocate, assign_strata, default_strata, draw_review, rank_strata,
                     review_order, score_strata)
from .estimate import (CELL, NOT_CELL, UNSURE, CountEstimate, Recount, best_threshold, cell_probability,
                       cells_kept, recount, screen_correction, stratified_count)
from .run import CountSettings, VolumeSpec, default_floor, count_from_review, detect_candidates, draw_review_files, screen_info
from .review_file import ReviewFile
from .simulate import candidate_truth, oracle_f1, simulate_counting

__all__ = [
    "SCHEMES", "ReviewDesign", "allocate", "assign_strata", "default_strata", "draw_review", "rank_strata",
    "review_order", "score_strata",
    "CELL", "NOT_CELL", "UNSURE", "CountEstimate", "Recount", "best_threshold", "cell_probability", "cells_kept",
    "recount", "screen_correction", "stratified_count", "REVIEW_COLUMNS", "SPELLINGS", "parse_decision",
    "read_decisions", "CountSettings", "VolumeSpec", "default_floor", "count_from_review", "detect_candidates", "draw_review_files",
    "screen_info", "candidate_truth", "oracle_f1", "simulate_counting", "ReviewFile",
]
