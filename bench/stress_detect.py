"""Stress check of chunked detection: the same cells every time, whatever runs the chunks.

Usage::

    python bench/stress_detect.py [--shape 64 384 384] [--chunk 32 128 128] [--repeats 3]
                                  [--model PATH] [--seed 0] [--no-cluster]

A seeded synthetic volume (uint16, (z, y, x)) is written as an uncompressed 3D TIFF, and detection
starts on it the moment it is written (the report's "3 cells once" came from a run that began two
seconds after its TIFF was written). Then :func:`clarity.detect.detect_volume` runs it again and
again, with the N4 field refitted every time:

- local threads with 1, 2 and 4 workers (and 4 workers on a chunk grid 4x finer, so that many
  more chunks than workers compete for the buffer pool and finish in any order);
- local processes with 2 workers;
- a two-worker ``dask.distributed`` cluster (``--no-cluster`` skips it);
- ``scheduler="sync"``, the reference.

Every run must give the reference cells (the same z, y, x; score and snr within 1e-4: torch sums
in another order with another number of threads, ~1e-7): the script prints one line
per run and exits with status 1 at the first difference. A file rewritten while a run reads it
must end in a ClarityInputError, never in a wrong count: the last check rewrites the TIFF during a
run. Nothing about time is asserted.

The model is ``--model PATH`` when given, else ``models/default/final.pt`` when ``make report``
has written it, else a seeded untrained :class:`clarity.model.CellCNN` (threshold 0.5: a
meaningless count, but every candidate still goes through the whole pipeline).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clarity.detect import RunOptions, detect_volume  # noqa: E402
from clarity.io import ClarityInputError  # noqa: E402
from clarity.model import CellCNN, ModelConfig, load_model  # noqa: E402
from clarity.paths import Paths  # noqa: E402
from clarity.synthetic import make_brain  # noqa: E402

COLUMNS = ["z", "y", "x", "score", "snr"]


def load(model_arg: str | None, seed: int):
    default = Paths().final_model
    path = model_arg or (str(default) if default.exists() else None)
    if path and path != "untrained":
        return load_model(path, device="cpu"), f"loaded {path}"
    torch.manual_seed(seed)
    net = CellCNN(ModelConfig()).eval()
    torch.nn.init.normal_(net.fc2.weight, std=0.5)  # scores spread over (0, 1)
    return net, f"untrained CellCNN (seed {seed})"


def same(a: pd.DataFrame, b: pd.DataFrame) -> str | None:
    """None when the cells are the same, else what differs.

    Positions must be equal; scores and SNR within 1e-4 (torch's CPU convolutions sum in another
    order with another number of threads, which moves scores by ~1e-7)."""
    if len(a) != len(b):
        return f"{len(a)} cells against {len(b)}"
    if not np.array_equal(a[["z", "y", "x"]].to_numpy(), b[["z", "y", "x"]].to_numpy()):
        return "positions differ"
    for c in ("score", "snr"):
        if c in a:
            d = float(np.abs(a[c].to_numpy(float) - b[c].to_numpy(float)).max(initial=0.0))
            if d > 1e-4:
                return f"{c} differs by up to {d:.2g}"
    return None


def max_score_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    return float(np.abs(a["score"].to_numpy(float) - b["score"].to_numpy(float)).max(initial=0.0))


def runs(args, cluster_address: str | None) -> list[tuple[str, RunOptions]]:
    chunk = tuple(args.chunk)
    fine = tuple(max(8, c // 2) for c in chunk)
    out = [("threads x1", RunOptions(chunk=chunk, num_workers=1, progress=False)),
           ("threads x2", RunOptions(chunk=chunk, num_workers=2, progress=False)),
           ("threads x4", RunOptions(chunk=chunk, num_workers=4, progress=False)),
           ("threads x4, fine chunks", RunOptions(chunk=fine, num_workers=4, progress=False)),
           ("processes x2", RunOptions(chunk=chunk, scheduler="processes", num_workers=2, progress=False))]
    if cluster_address:
        out.append(("distributed, 2 workers", RunOptions(chunk=chunk, scheduler=cluster_address, progress=False)))
    return out


def rewrite_during_run(path: Path, volume: np.ndarray, model) -> str:
    """Rewrite the TIFF while a detection reads it: the run must refuse, not miscount."""
    def writer():
        time.sleep(0.3)
        tifffile.imwrite(path, volume[::-1].copy(), photometric="minisblack")

    t = threading.Thread(target=writer)
    t.start()
    try:
        res = detect_volume(path, model=model, run=RunOptions(chunk=(16, 64, 64), num_workers=1, progress=False))
        outcome = f"no error, {res.n_cells} cells (the rewrite finished before the first read)"
    except ClarityInputError as exc:
        outcome = f"ClarityInputError: {str(exc)[:90]}..."
    t.join()
    return outcome


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 384, 384])
    ap.add_argument("--chunk", type=int, nargs=3, default=[32, 128, 128])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cluster", action="store_true")
    args = ap.parse_args(argv)
    model, desc = load(args.model, args.seed)
    vol = make_brain(args.seed, shape=tuple(args.shape)).volume
    tmp = Path(tempfile.mkdtemp(prefix="clarity_stress_"))
    path = tmp / "volume.tif"
    tifffile.imwrite(path, vol, photometric="minisblack")
    print(f"volume {vol.shape} {vol.dtype}; model: {desc}; chunk {tuple(args.chunk)}")
    t0 = time.perf_counter()
    ref = detect_volume(path, model=model, run=RunOptions(chunk=tuple(args.chunk), scheduler="sync",
                                                          progress=False)).cells
    print(f"reference (sync, started right after the write): {len(ref)} cells, {time.perf_counter() - t0:.1f} s")
    cluster = None
    if not args.no_cluster:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    failures = 0
    try:
        for i in range(args.repeats):
            for name, run in runs(args, cluster.scheduler_address if cluster else None):
                t0 = time.perf_counter()
                cells = detect_volume(path, model=model, run=run).cells
                diff = same(cells, ref)
                failures += diff is not None
                what = (f"same cells (scores within {max_score_diff(cells, ref):.1g})" if diff is None
                        else "DIFFERENT: " + diff)
                print(f"repeat {i + 1} {name:26s} {len(cells):6d} cells {time.perf_counter() - t0:6.1f} s  {what}",
                      flush=True)
    finally:
        if cluster is not None:
            cluster.close()
    print("rewritten during a run:", rewrite_during_run(path, vol, model))
    print(f"{failures} run(s) differed from the reference" if failures else "every run gave the reference cells")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
