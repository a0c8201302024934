"""Input and output: volumes, annotations, the data-root layout, atomic writes.

Modules:

``files``     ClarityInputError, atomic writes (files, .npy, JSON)
``volumes``   read 3D TIFFs, plane folders, .npy and .zarr (whole, lazily, or their shape)
``omezarr``   OME-Zarr (NGFF 0.4) multiscale images: one level, its voxel size in um, lazily
``readers``   box-by-box readers of large volumes for chunked detection
``points``    annotations: CSV and Cell Counter XML, checked against a volume
``labels``    label images (binary masks, instance labels) as annotations
``dataroot``  the volumes of a data root, grouped into brains (``brains.csv``), voxel sizes

Arrays are in (z, y, x) order, in voxels. A *volume* is a 3D TIFF (``.tif``/``.tiff``), a folder
of 2D TIFF planes stacked in natural name order, a ``.npy`` file, or an OME-Zarr image
(``.zarr`` / ``.ome.zarr`` folder; any resolution level, its voxel size from the metadata). *Annotations* are cell
centres: a CSV with header ``z,y,x`` (extra columns ignored) or an ImageJ/Fiji Cell Counter XML
as cellfinder writes it (``MarkerX/Y/Z``, Marker type 2 = cell; coordinates as written, 0-based).

Every reader raises :class:`ClarityInputError` with the file name and the problem, never a
traceback from deep inside numpy. Every writer writes to a temporary file in the destination
folder and renames it into place, so a crash never leaves a half-written file.
"""

from .dataroot import (BRAINS_CSV, DEFAULT_VOXEL_UM, Brain, VolumeMeta, brain_groups, common_voxel_um,
                       group_map, list_brains,
                       read_brains_csv, volumes_of, voxel_size_of)
from .files import ClarityInputError, atomic_write, jsonable, save_npy, write_json
from .labels import is_label_image, label_image_points, read_label_image
from .omezarr import ZarrLevel, is_zarr, open_ome_zarr, write_ome_zarr, zarr_stem
from .points import (check_points, read_cellcounter_xml, read_points, read_points_csv,
                     write_cellcounter_xml, write_points_csv)
from .readers import ArrayReader, MemmapReader, VolumeReader, file_stamp, open_source
from .volumes import TIFF_SUFFIXES, lazy_volume, natural_key, plane_files, read_volume, volume_shape

__all__ = [
    "ClarityInputError", "Brain", "atomic_write", "save_npy", "jsonable", "write_json",
    "read_volume", "lazy_volume", "volume_shape", "plane_files", "natural_key", "TIFF_SUFFIXES",
    "read_points", "check_points", "write_points_csv", "read_points_csv", "read_cellcounter_xml",
    "write_cellcounter_xml", "list_brains", "VolumeReader", "ArrayReader", "MemmapReader",
    "open_source", "file_stamp", "BRAINS_CSV", "DEFAULT_VOXEL_UM", "VolumeMeta", "read_brains_csv",
    "brain_groups", "common_voxel_um", "group_map", "volumes_of", "voxel_size_of", "is_label_image", "label_image_points", "read_label_image",
    "ZarrLevel", "is_zarr", "open_ome_zarr", "write_ome_zarr", "zarr_stem",
]
