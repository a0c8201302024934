"""Whole-volume cell detection: a cheap blob screen, the CNN at each candidate, NMS, rescoring.

Two stages, as in Dou et al. (2016) and cellfinder:

1. the candidate screen (:func:`find_candidates`): local maxima of a scale-normalised Laplacian
   of Gaussian of the normalised volume, above a low threshold and inside the tissue;
2. the trained :class:`clarity.model.CellCNN` scores the patch centred on each candidate
   (:func:`score_candidates`); promising candidates move towards the soma's centre
   (:func:`snap_candidates`, the default, or :func:`refine_candidates`);
3. :func:`nms` merges detections closer than a cell radius; a model carrying a second stage
   (:mod:`clarity.rescore`) rescores what survives from its CNN score, SNR and local shape;
4. every cell gets its local signal-to-noise ratio (:func:`local_snr`), optionally gated.

``mode="dense"`` replaces 1-2 by the network's dense score map and its peaks (GPU);
``mode="log"`` is the classical LoG detector alone, the baseline (:func:`log_detect`).
Every setting that changes which cells come out is a field of :class:`DetectionConfig`, stored
in the model's calibration file (beside the weights) with the threshold calibrated under it; :class:`RunOptions` changes only
speed. Arrays are (z, y, x) in voxels throughout.

Modules, one per step:

``config``     DetectionConfig (saved with the model) and RunOptions (speed only), defaults
``filters``    the candidate screen, separable filters, scratch buffers, local SNR
``score``      CNN scores of candidates, snap / climb refinement
``nms``        greedy non-maximum suppression
``block``      one in-memory block: search, halo, NMS + rescoring + SNR gate; ``detect_block``
``chunks``     chunk tasks on local threads / processes or dask.distributed, worker caches
``volume``     ``detect_volume`` (N4 once, chunks, global NMS) and ``DetectionResult``
``resume``     finished chunks recorded in a state folder; a rerun continues where a kill stopped
``log``        the LoG baseline and its threshold fit
``calibrate``  the detection threshold on completely labelled volumes, pooled threshold sweeps
``decoy``      a threshold without labels: the false detections estimated on a mirrored decoy
"""

from .block import detect_block
from .calibrate import calibrate_detection_threshold, calibration_points, pooled_sweep
from .chunks import chunk_boxes
from .config import (DEFAULT_CANDIDATE_THRESHOLD, DEFAULT_NMS_RADIUS, DEFAULT_REFINE, DEFAULT_SIGMAS,
                     LOG_NMS_RADIUS, MODES, REFINE_METHODS, DetectionConfig, RunOptions,
                     physical_config)
from .decoy import DecoyGate, decoy_detect, decoy_gate, decoy_volume
from .filters import candidate_halo, find_candidates, find_peaks, local_snr
from .log import fit_log_threshold, log_config, log_detect
from .nms import nms
from .resume import STATE_FOLDER, ChunkState
from .score import refine_candidates, score_candidates, snap_candidates
from .volume import DetectionResult, detect_volume

__all__ = [
    "DetectionConfig", "RunOptions", "physical_config", "decoy_volume", "decoy_gate", "decoy_detect", "DecoyGate", "DEFAULT_SIGMAS", "DEFAULT_CANDIDATE_THRESHOLD",
    "DEFAULT_NMS_RADIUS", "LOG_NMS_RADIUS", "DEFAULT_REFINE", "REFINE_METHODS", "MODES",
    "find_candidates", "candidate_halo", "find_peaks", "local_snr", "score_candidates",
    "refine_candidates", "snap_candidates", "nms", "detect_block", "log_detect", "log_config",
    "fit_log_threshold", "calibrate_detection_threshold", "calibration_points", "pooled_sweep",
    "DetectionResult", "detect_volume", "chunk_boxes", "ChunkState", "STATE_FOLDER",
]
