"""``clarity detect --model <fold>/unet/model.pt``: the command line's U-Net path.

``clarity detect`` hands a U-Net file (``model.pt`` with ``unet.json`` beside it, as notebook
04a saves them) to :func:`detect_with_unet`, which runs :func:`clarity.dense.volume.detect_volume_unet`
on every volume and writes the same outputs as the CNN's detection (``<name>.csv``:
z,y,x,score,snr, and the Cell Counter XML with ``--xml``) and, as the CNN's detection, records
each finished chunk under ``--out``'s ``.clarity-state/<name>/``, so a killed run continues.
Options that only the CNN's detection has are refused with a one-line error, never ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..detect.resume import STATE_FOLDER
from ..io import ClarityInputError, VolumeReader, voxel_size_of
from .files import UNET_FORMAT, load_unet
from .volume import DEFAULT_CHUNK, detect_volume_unet

__all__ = ["is_unet_file", "detect_with_unet"]

#: Options of ``clarity detect`` that belong to the CNN's detection: (attribute, flag); None when unset.
CNN_ONLY = (("mode", "--mode"), ("refine", "--refine"), ("rescore", "--no-rescore"),
            ("scheduler", "--scheduler"), ("workers", "--workers"))


def is_unet_file(path) -> bool:
    """True when ``path`` is a U-Net saved by :func:`clarity.dense.save_unet` (its ``unet.json``
    beside it says so)."""
    meta = Path(path).parent / "unet.json"
    try:
        return Path(path).suffix == ".pt" and json.loads(meta.read_text()).get("format") == UNET_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def detect_with_unet(args: argparse.Namespace, names) -> int:
    """Run ``clarity detect`` with the U-Net of ``args.model`` on ``args.volumes``; the exit code."""
    for attr, flag in CNN_ONLY:
        if getattr(args, attr, None) is not None:
            raise ClarityInputError(f"{args.model}: a U-Net; {flag} applies to the patch CNN's detection only")
    unet = load_unet(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    for v, name in zip(args.volumes, names):
        t0 = time.perf_counter()
        reader = VolumeReader(v, level=args.level, channel=args.channel, timepoint=args.timepoint)
        voxel = voxel_size_of(v, given=args.voxel_size, level=args.level, stated=reader.voxel_um)
        res = detect_volume_unet(reader, unet, threshold=args.threshold, voxel_um=voxel,
                                 preprocessed=args.preprocessed, chunk=args.chunk or DEFAULT_CHUNK,
                                 min_snr=args.min_snr, device=args.device, name=name, progress=progress,
                                 state_dir=out / STATE_FOLDER / name)
        written = [str(res.write_csv(out / f"{name}.csv"))]
        if args.xml:
            written.append(str(res.write_xml(out / f"{name}.xml", image_filename=Path(v).name)))
        print(f"{name}: {res.n_cells} cells, {time.perf_counter() - t0:.1f} s -> {', '.join(written)} "
              f"(U-Net {args.model}, peak threshold {res.info['threshold']:.3f}; the raw number of "
              "detections: a U-Net carries no count factor)", flush=True)
    return 0
