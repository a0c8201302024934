"""clarity: find and count fluorescent neurons in 3D CLARITY / light-sheet brain images.

Arrays are in (z, y, x) order and voxel units unless a name says otherwise (``*_um``).
Modules, one per pipeline stage:

``io``          volumes, annotations, data-root layout, atomic writes
``synthetic``   built-in synthetic CLARITY brains with complete ground truth
``preprocess``  N4 bias-field correction and intensity normalisation
``sampling``    patch sets (positives, near negatives, hard examples, review labels)
``model``       the 3D CNN (Dou et al. 2016), fully convolutional for dense maps
``train``       seeded, resumable training loop
``evaluate``    patch metrics, thresholds, point matching, count calibration
``baselines``   LoG blob score and normalised template matching
``review``      ipywidgets gallery to review false positives
``detect``      whole-volume two-stage detection, chunked with dask
"""

__version__ = "0.1.0"
