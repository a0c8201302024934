"""clarity: find and count fluorescent neurons in 3D CLARITY / light-sheet brain images.

Arrays are in (z, y, x) order and voxel units unless a name says otherwise (``*_um``).
Modules, in the order data flows through them (imports run downwards only):

``scale``       one owner of the lengths that depend on the cells: reference voxels, CellScale, matching
``io``          volumes, box readers, annotations, the data root, atomic writes (package)
``paths``       every path of a data root and a run (fold models, reports, the final model)
``synthetic``   built-in synthetic CLARITY brains with complete ground truth
``preprocess``  N4 bias-field correction and intensity normalisation
``patches``     the one cutter of (z, y, x) cubes around points (training, detection, review)
``labels``      the review decisions store (labels/review.csv) and the labels it gives training
``sampling``    patch sets (positives, near negatives, hard examples, review labels)
``calibration_file``  the calibration beside a model's weights (thresholds, count factor, provenance)
``model``       the 3D CNN (Dou et al. 2016), fully convolutional for dense maps; save / load
``augment``     flips and 90-degree rotations of training patches; brain-to-brain intensity differences
``train``       seeded, resumable training loop (one-cycle schedule)
``evaluate``    patch metrics, ROC / PR curves, thresholds, adjusted false positives
``matching``    one-to-one matching of detected and true cell centres, count calibration
``baselines``   LoG blob score and normalised template matching of patches
``rescore``     second-stage rescoring of detections from their local shape
``detect``      whole-volume detection by stage, chunked with dask (package)
``counting``    held-out whole-brain counts against truth, with the LoG baseline
``validate``    cross-validation by brain: splits, hard-example mining, one fold, summary (package)
``review``      review of detections in JupyterLab, retraining with the decisions, the review loop (package)
``plotting``    figures of the notebooks
``params``      every parameter of the report declared once (type, unit, default, help, notebooks)
``pipeline``    the report: notebooks run headless with papermill
``__main__``    the command line: ``python -m clarity detect | make-data | report``
"""

__version__ = "0.1.0"
