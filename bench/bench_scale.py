"""Memory and time against volume size: ``clarity detect`` on the bench volume and its mirrors.

Usage::

    python bench/bench_scale.py [--sizes base,2x2x2,4x2x4] [--base-shape 128 1024 1024]
                                [--cache data/bench] [--model PATH] [--kill-at 0.5]
                                [--chunk Z Y X] [--workers N] [--device cpu|cuda]
                                [--zarr-chunks 64 256 256] [--seed 0]
                                [--results bench/results/bench_scale.csv] [--workdir DIR]

Issue 22 item 3 ("memory flat, time linear"). The bench volume (``--base-shape``, default
128 x 1024 x 1024 = 134 Mvox, uint16) is generated once by :func:`bench_detect.generate_volume`
(seeded tiles of :func:`clarity.synthetic.make_brain`) and stored in ``--cache`` as an OME-Zarr
(NGFF 0.4, one level ``0``, axes z, y, x in micrometres with the voxel size
:data:`clarity.io.DEFAULT_VOXEL_UM` as their scale, zarr v2 chunks ``--zarr-chunks`` compressed
with Blosc lz4 + byte shuffle). Larger volumes are that volume *mirrored*: tiled ``tz x ty x tx``
times, every odd tile flipped along that axis so that the intensities run on continuously across
tile edges (no seam for the screen to find cells in): ``2x2x2`` is 256 x 2048 x 2048 (1.07 Gvox),
``4x2x4`` is 512 x 2048 x 4096 (4.3 Gvox). They are written block by block from the base zarr
(:func:`write_mirrored`: two blocks of about 128 MB in memory, never the mirrored volume) into a
temporary folder renamed into place; a marker file beside each store (``<store>.built.json``:
shape, chunks, seed, tiles and the SHA-256 of three sample chunks) lets later runs reuse it.
Uncompressed, the mirrors need 2.1 and 8.6 GB of disk (a warning says when the cache's disk has
less free).

Each size then runs ``python -m clarity detect <store> --model M --out <fresh folder>`` in a
child process started by this one, which waits for it with :func:`os.wait4`: the wall seconds and
the child's own peak resident memory (``ru_maxrss`` of that child alone, not a maximum over every
child waited for). This process stays small (standard library only; the volumes and the model are
built in a child of their own) because Linux carries a parent's peak memory into a child's
``ru_maxrss`` through fork and exec. The table gives per size: voxels, wall seconds (Python and
torch start-up and model loading included), the detection's own seconds (as ``clarity detect``
prints them: N4, normalisation, chunks, NMS), Mvox/s on those, peak RSS and the cell count;
then the two figures of the issue: peak memory at 4x2x4 over base (target <= 1.25) and seconds
per voxel at 4x2x4 over 2x2x2 (target <= 1.1; from the detection's own seconds, the wall
seconds' ratio beside it). This machine's speed drifts by a fifth within minutes, so 2x2x2 is
measured again after 4x2x4 and the ratio uses the mean of its two runs (``--no-bracket``: once). The table is written atomically to ``--results``. Nothing is asserted:
the exit status is 0 whatever the figures (the machine may be shared).

``--kill-at F``: for the largest size, the same command starts again into a fresh ``--out``
folder, is killed (SIGKILL, its whole process group) after ``F`` times the full run's wall
seconds, and is run once more: printed are the chunks recorded before the kill, whether the
rerun's CSV holds the uninterrupted run's cells (positions equal, score and snr within 1.5e-4:
the CSV rounds them to 4 and 2 decimals) and the rerun's seconds as a share of the full run
(target < 70 %).

The model is ``--model PATH``, else ``models/default/final.pt`` when ``make report`` wrote it,
else an untrained seeded model (:func:`clarity.synthetic.untrained_model`, threshold 0.5) saved
in the cache: its count is meaningless and about half the candidates pass it, so the cell tables
are larger than a trained model's.

Check it at tiny scale first, e.g. ``--base-shape 32 128 128 --sizes base,2x2x2 --cache /tmp/bs
--results /tmp/bs/bench_scale.csv``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Standard library only at module level: the measuring process must stay small (see the doc);
# numpy, zarr and clarity are imported in the functions that the building child runs.

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
NAMED_SIZES = {"base": (1, 1, 1), "2x2x2": (2, 2, 2), "4x2x4": (4, 2, 4)}
DEFAULT_SIZES = "base,2x2x2,4x2x4"
MARKER_VERSION = 1
TARGET_MEMORY_RATIO = 1.25
TARGET_TIME_RATIO = 1.1
TARGET_RESUME_SHARE = 0.70


# ------------------------------------------------------------------------------------------
# sizes and names
# ------------------------------------------------------------------------------------------
def parse_sizes(text: str) -> list[tuple[str, tuple[int, int, int]]]:
    """The sizes of ``--sizes``: names (``base``, ``2x2x2``, ``4x2x4``) or any ``TZxTYxTX`` tiles.

    Parameters
    ----------
    text : str
        Comma-separated sizes, e.g. ``"base,2x2x2"``.

    Returns
    -------
    list of (str, (int, int, int))
        (name, tiles along z, y, x), in the order given, without repeats.

    Raises
    ------
    argparse.ArgumentTypeError
        A size that is neither a name nor three positive integers.
    """
    out: list[tuple[str, tuple[int, int, int]]] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        tiles = NAMED_SIZES.get(part)
        if tiles is None:
            bits = part.split("x")
            if len(bits) != 3 or not all(b.isdigit() and int(b) > 0 for b in bits):
                raise argparse.ArgumentTypeError(
                    f"size {part!r}: 'base' or tiles TZxTYxTX (e.g. 2x2x2, 4x2x4)")
            tiles = tuple(int(b) for b in bits)
        name = "base" if tiles == (1, 1, 1) else "x".join(map(str, tiles))
        if all(name != n for n, _ in out):
            out.append((name, tiles))
    if not out:
        raise argparse.ArgumentTypeError("no size given")
    return out


def store_name(base_shape, tiles, seed: int) -> str:
    """The OME-Zarr folder name of a size, e.g. ``bench_128x1024x1024_seed0_m2x2x2.ome.zarr``."""
    stem = f"bench_{'x'.join(map(str, base_shape))}_seed{seed}"
    if tuple(tiles) != (1, 1, 1):
        stem += f"_m{'x'.join(map(str, tiles))}"
    return stem + ".ome.zarr"


def marker_path(store: Path) -> Path:
    """The marker beside a built store (``<store>.built.json``)."""
    return store.with_name(store.name + ".built.json")


# ------------------------------------------------------------------------------------------
# mirroring (numpy; run in the building child)
# ------------------------------------------------------------------------------------------
def mirror_index(lo: int, hi: int, n: int):
    """Base coordinates of the mirrored coordinates ``lo .. hi - 1`` along one axis.

    Tile ``t`` of ``n`` voxels holds the base as it is when ``t`` is even, flipped when odd:
    ``0, 1, .., n-1, n-1, .., 1, 0, 0, 1, ..`` (what ``numpy.pad(mode="symmetric")`` makes).

    Parameters
    ----------
    lo, hi : int
        Mirrored coordinates ``[lo, hi)``.
    n : int
        The base's length along the axis.

    Returns
    -------
    numpy.ndarray of int64
    """
    import numpy as np

    t, r = np.divmod(np.arange(int(lo), int(hi), dtype=np.int64), int(n))
    return np.where(t % 2 == 0, r, n - 1 - r)


def _axis_read(idx) -> tuple[slice, object]:
    """(the base range to read, how to pick ``idx`` from it): a slice (step 1 or -1) where the
    indices run on contiguously, else an index array."""
    import numpy as np

    a, b = int(idx.min()), int(idx.max()) + 1
    local = idx - a
    if len(idx) == b - a and np.array_equal(local, np.arange(b - a)):
        return slice(a, b), slice(None)
    if len(idx) == b - a and np.array_equal(local, np.arange(b - a)[::-1]):
        return slice(a, b), slice(None, None, -1)
    return slice(a, b), local


def mirrored_block(base, box):
    """The voxels of the mirrored volume in ``box`` (three slices), read from ``base``.

    Parameters
    ----------
    base : array-like (z, y, x)
        The base volume (numpy array, zarr array: anything with ``shape`` and basic slicing).
    box : tuple of 3 slices
        Mirrored coordinates, steps of 1.

    Returns
    -------
    numpy.ndarray
    """
    import numpy as np

    reads, picks = zip(*(_axis_read(mirror_index(s.start, s.stop, n)) for s, n in zip(box, base.shape)))
    block = np.asarray(base[reads])
    for axis, pick in enumerate(picks):
        if isinstance(pick, slice):
            if pick.step == -1:
                block = np.flip(block, axis)
        else:
            block = np.take(block, pick, axis=axis)
    return np.ascontiguousarray(block)


def mirror_blocks(shape, chunks, base_shape) -> list[tuple[slice, slice, slice]]:
    """The blocks :func:`write_mirrored` writes: ``chunks[0]`` planes deep and, in y and x, the
    base's size rounded up to whole chunks, so each block is written as whole zarr chunks."""
    size = [int(chunks[0])] + [int(c) * math.ceil(int(n) / int(c)) for c, n in zip(chunks[1:], base_shape[1:])]
    grids = [[slice(a, min(a + s, int(n))) for a in range(0, int(n), s)] for n, s in zip(shape, size)]
    return [(z, y, x) for z in grids[0] for y in grids[1] for x in grids[2]]


def write_mirrored(base, out, *, progress: bool = False) -> None:
    """Fill ``out`` with ``base`` tiled and mirrored (odd tiles flipped), block by block.

    Parameters
    ----------
    base : array-like (z, y, x)
        Read box by box (a zarr array stays on disk).
    out : zarr.Array or numpy.ndarray
        Shape: whole multiples of ``base.shape`` or not (partial tiles at the far ends are fine);
        its ``chunks`` (when it has them) set the blocks (:func:`mirror_blocks`).
    progress : bool, keyword-only
        A tqdm bar over the blocks.
    """
    from tqdm.auto import tqdm

    chunks = getattr(out, "chunks", None) or out.shape
    blocks = mirror_blocks(out.shape, chunks, base.shape)
    for box in tqdm(blocks, desc=f"mirror {'x'.join(map(str, out.shape))}", disable=not progress):
        out[box] = mirrored_block(base, box)


# ------------------------------------------------------------------------------------------
# OME-Zarr stores (run in the building child)
# ------------------------------------------------------------------------------------------
def create_ome_zarr(path: Path, *, shape, dtype, chunks, voxel_um, name: str | None = None,
                    attrs: dict | None = None):
    """An empty NGFF 0.4 image (zarr v2, one level ``0``, Blosc lz4 + shuffle) to fill.

    Parameters
    ----------
    path : Path
        The folder to create (replaced if present).
    shape, chunks : 3 ints, keyword-only
        (z, y, x) voxels; chunks are clipped to the shape.
    dtype : numpy dtype, keyword-only
    voxel_um : 3 floats, keyword-only
        (z, y, x) micrometres: the level's ``scale`` transformation, axes in ``micrometer``.
    name : str, keyword-only
        The image's name in the metadata (default: the folder's name up to its first dot).
    attrs : dict, keyword-only
        More group attributes (provenance).

    Returns
    -------
    zarr.Array
        Level ``0``, writable.
    """
    import numcodecs
    import zarr

    chunks = tuple(min(int(c), int(n)) for c, n in zip(chunks, shape))
    blosc = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    if int(zarr.__version__.split(".")[0]) >= 3:
        root = zarr.open_group(store=str(path), mode="w", zarr_format=2)
        arr = root.create_array("0", shape=tuple(shape), chunks=chunks, dtype=dtype, compressors=blosc,
                                fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})
    else:
        root = zarr.open_group(str(path), mode="w")
        arr = root.create_dataset("0", shape=tuple(shape), chunks=chunks, dtype=dtype, compressor=blosc,
                                  fill_value=0, dimension_separator="/")
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": name or path.name.split(".")[0],
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [float(v) for v in voxel_um]}]}],
    }]
    if attrs:
        root.attrs["clarity_bench"] = attrs
    return arr


def sample_digest(arr) -> str:
    """SHA-256 of three chunk-sized boxes of ``arr`` (first, middle, last chunk): cheap to
    recompute on a 4 Gvox store, and changed by any rebuild with other voxels."""
    import hashlib

    import numpy as np

    chunks = getattr(arr, "chunks", None) or arr.shape
    grid = [math.ceil(n / c) for n, c in zip(arr.shape, chunks)]
    h = hashlib.sha256(repr((tuple(arr.shape), str(arr.dtype))).encode())
    for pick in ([0, 0, 0], [g // 2 for g in grid], [g - 1 for g in grid]):
        box = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(pick, chunks, arr.shape))
        h.update(np.ascontiguousarray(arr[box]).tobytes())
    return h.hexdigest()


def _marker_expect(base_shape, tiles, seed: int, chunks) -> dict:
    shape = [int(b) * int(t) for b, t in zip(base_shape, tiles)]
    return {"version": MARKER_VERSION, "generator": "bench_detect.generate_volume", "seed": int(seed),
            "base_shape": [int(s) for s in base_shape], "tiles": [int(t) for t in tiles], "shape": shape,
            "zarr_chunks": [min(int(c), n) for c, n in zip(chunks, shape)], "dtype": "uint16"}


def reusable(store: Path, expect: dict) -> bool:
    """Whether ``store`` was built with the settings ``expect`` and still holds its voxels (the
    marker's fields and shape match and the sample digest is recomputed equal)."""
    try:
        marker = json.loads(marker_path(store).read_text())
    except (OSError, ValueError):
        return False
    if {k: marker.get(k) for k in expect} != expect:
        return False
    try:
        import zarr

        arr = zarr.open(store=str(store / "0"), mode="r")
        return list(arr.shape) == expect["shape"] and sample_digest(arr) == marker.get("digest")
    except Exception:  # noqa: BLE001 - anything unreadable is rebuilt
        return False


def _finish(tmp: Path, store: Path, expect: dict, arr) -> Path:
    """Rename the built ``tmp`` into ``store`` and write its marker (the marker last: it says
    the store is complete)."""
    digest = sample_digest(arr)
    if store.exists():
        shutil.rmtree(store)
    os.replace(tmp, store)
    m = marker_path(store)
    tmp_m = m.with_name(f".{m.name}.tmp{os.getpid()}")
    tmp_m.write_text(json.dumps({**expect, "digest": digest,
                                 "built": datetime.datetime.now().isoformat(timespec="seconds")}, indent=1))
    os.replace(tmp_m, m)
    return store


def _fresh_tmp(store: Path) -> Path:
    """A temporary folder beside ``store``; leftovers of killed builds of it removed."""
    for old in store.parent.glob(f".{store.name}.partial*"):
        shutil.rmtree(old, ignore_errors=True)
    marker_path(store).unlink(missing_ok=True)
    return store.with_name(f".{store.name}.partial{os.getpid()}")


def build_base(store: Path, *, shape, seed: int, chunks, progress: bool = True) -> Path:
    """The bench volume as an OME-Zarr at ``store`` (reused when its marker matches).

    Generated by :func:`bench_detect.generate_volume` into a TIFF beside it (memory-mapped), copied
    into the zarr ``chunks[0]`` planes at a time, then the TIFF removed.
    """
    import numpy as np
    import tifffile
    from tqdm.auto import tqdm

    from clarity.io import DEFAULT_VOXEL_UM

    sys.path.insert(0, str(BENCH))
    from bench_detect import generate_volume

    expect = _marker_expect(shape, (1, 1, 1), seed, chunks)
    if reusable(store, expect):
        return store
    tmp = _fresh_tmp(store)
    tif = store.with_name(f".{store.name}.generate{os.getpid()}.tif")
    try:
        generate_volume(tif, tuple(shape), seed=seed, progress=progress)
        src = tifffile.memmap(tif, mode="r")
        arr = create_ome_zarr(tmp, shape=shape, dtype=np.uint16, chunks=chunks, voxel_um=DEFAULT_VOXEL_UM,
                              name=store.name.split(".")[0],
                              attrs={k: expect[k] for k in ("generator", "seed", "base_shape", "tiles")})
        step = int(arr.chunks[0])
        for z in tqdm(range(0, shape[0], step), desc="to OME-Zarr", disable=not progress):
            arr[z:z + step] = np.asarray(src[z:z + step])
        del src
        return _finish(tmp, store, expect, arr)
    finally:
        tif.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def build_mirror(base_store: Path, store: Path, *, tiles, seed: int, chunks, progress: bool = True) -> Path:
    """The base store mirrored into ``tiles`` (z, y, x) as an OME-Zarr at ``store`` (reused when
    its marker matches), written block by block (:func:`write_mirrored`)."""
    import zarr

    from clarity.io import DEFAULT_VOXEL_UM

    base = zarr.open(store=str(base_store / "0"), mode="r")
    expect = _marker_expect(base.shape, tiles, seed, chunks)
    if reusable(store, expect):
        return store
    tmp = _fresh_tmp(store)
    try:
        arr = create_ome_zarr(tmp, shape=expect["shape"], dtype=base.dtype, chunks=chunks,
                              voxel_um=DEFAULT_VOXEL_UM, name=store.name.split(".")[0],
                              attrs={k: expect[k] for k in ("generator", "seed", "base_shape", "tiles")})
        write_mirrored(base, arr, progress=progress)
        return _finish(tmp, store, expect, arr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_all(args) -> dict:
    """(In the building child.) Every store of ``args.sizes`` and the model; the plan as a dict:
    ``{"model": path, "stores": {name: path}}``."""
    cache = Path(args.cache).resolve()  # the detections run in the repository's root
    cache.mkdir(parents=True, exist_ok=True)
    base_shape = tuple(args.base_shape)
    need = sum(math.prod(base_shape) * math.prod(t) * 2 for n, t in args.sizes
               if not reusable(cache / store_name(base_shape, t, args.seed),
                               _marker_expect(base_shape, t, args.seed, args.zarr_chunks)))
    free = shutil.disk_usage(cache).free
    if need > free:
        print(f"warning: the volumes to build take up to {need / 1e9:.1f} GB uncompressed; "
              f"{cache} has {free / 1e9:.1f} GB free (compression usually saves a third or more)",
              file=sys.stderr, flush=True)
    base = cache / store_name(base_shape, (1, 1, 1), args.seed)
    t0 = time.perf_counter()
    build_base(base, shape=base_shape, seed=args.seed, chunks=args.zarr_chunks, progress=not args.quiet)
    stores = {}
    for name, tiles in args.sizes:
        stores[name] = str(build_mirror(base, cache / store_name(base_shape, tiles, args.seed), tiles=tiles,
                                        seed=args.seed, chunks=args.zarr_chunks, progress=not args.quiet)
                           if tiles != (1, 1, 1) else base)
    print(f"volumes ready in {cache} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"model": resolve_model(args.model, cache, seed=args.seed), "stores": stores}


def resolve_model(model: str | None, cache: Path, *, seed: int) -> str:
    """``model`` when given; else ``models/default/final.pt`` (:class:`clarity.paths.Paths`) when
    present; else an untrained seeded model saved in ``cache`` (reused)."""
    if model:
        return str(Path(model).resolve())
    from clarity.paths import Paths

    final = Paths().final_model
    if final.exists():
        return str(final)
    from clarity.synthetic import untrained_model

    path = cache / "models" / f"untrained_seed{seed}.pt"
    if not path.exists():
        untrained_model(path, seed=seed, threshold=0.5, note="bench/bench_scale.py: untrained, seeded")
    return str(path.resolve())


# ------------------------------------------------------------------------------------------
# measuring (standard library only)
# ------------------------------------------------------------------------------------------
def _maxrss_bytes(ru) -> int:
    return int(ru.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def run_measured(cmd: list[str], *, log: Path, kill_after: float | None = None) -> dict:
    """Run ``cmd`` in its own process group and wait for it with :func:`os.wait4`.

    Parameters
    ----------
    cmd : list of str
    log : Path, keyword-only
        Its stdout goes here (stderr is inherited: progress bars, errors).
    kill_after : float, keyword-only
        SIGKILL its process group after this many seconds (when still running).

    Returns
    -------
    dict
        ``seconds`` (wall), ``peak_rss`` (bytes: ``ru_maxrss`` of this child alone), ``cpu_s`` (its
        user + system seconds), ``returncode``
        (negative: killed by that signal), ``killed`` (bool), ``stdout``.
    """
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, start_new_session=True)
        killed = False
        if kill_after is not None:
            try:
                proc.wait(timeout=max(0.0, kill_after))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                except ProcessLookupError:  # ended just now
                    pass
        if proc.returncode is None:
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            peak, cpu = _maxrss_bytes(ru), ru.ru_utime + ru.ru_stime
        else:  # reaped by proc.wait: its rusage is gone (only after a run that ended before the kill)
            peak, cpu = 0, None
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss": peak, "cpu_s": cpu, "returncode": proc.returncode, "killed": killed,
            "stdout": log.read_text(errors="replace")}


def detect_command(volume: str, model: str, out: Path, args) -> list[str]:
    """``python -m clarity detect VOLUME --model M --out OUT`` with the run options given."""
    cmd = [sys.executable, "-m", "clarity", "detect", str(volume), "--model", model, "--out", str(out)]
    if args.chunk:
        cmd += ["--chunk", *map(str, args.chunk)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    if args.device:
        cmd += ["--device", args.device]
    return cmd


def parse_detect_line(stdout: str) -> tuple[int | None, float | None]:
    """(cells, seconds) from ``clarity detect``'s line ``name: N cells, S s -> ...``."""
    for line in stdout.splitlines():
        head, sep, rest = line.partition(" cells, ")
        if sep and " s -> " in rest:
            try:
                return int(head.rsplit(": ", 1)[1]), float(rest.split(" s -> ", 1)[0])
            except (IndexError, ValueError):
                continue
    return None, None


def read_cells(path: Path) -> list[list[float]]:
    """The rows of a cells CSV (z, y, x, score[, snr]) as floats."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return [[float(v) for v in r] for r in rows[1:] if r]


def compare_cells(a: Path, b: Path, *, tol: float = 1.5e-4) -> str:
    """``"identical"``, ``"same cells (...)"`` or ``"DIFFERENT: ..."`` for two cells CSVs."""
    if a.read_bytes() == b.read_bytes():
        return "identical"
    ra, rb = read_cells(a), read_cells(b)
    if len(ra) != len(rb):
        return f"DIFFERENT: {len(rb)} cells against {len(ra)}"
    if any(p[:3] != q[:3] for p, q in zip(ra, rb)):
        return "DIFFERENT: positions differ"
    worst = max((abs(x - y) for p, q in zip(ra, rb) for x, y in zip(p[3:], q[3:])), default=0.0)
    if worst > tol:
        return f"DIFFERENT: score or snr differs by up to {worst:.2g}"
    return f"same cells (score and snr within {worst:.1g})"


def _self_peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF)) / 2**20


# ------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------
def ratio(rows: dict, num: str, den: str, key) -> float | None:
    """``key(rows[num]) / key(rows[den])`` when both sizes ran; else None."""
    if num not in rows or den not in rows:
        return None
    a, b = key(rows[num]), key(rows[den])
    return a / b if a and b else None


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def summary(rows: dict, resume: dict | None) -> tuple[list[str], list[dict]]:
    """The printed lines and the CSV records of the sizes, the two ratios and the resume check."""
    lines = [f"{'size':>7} {'shape':>16} {'Gvox':>6} {'wall s':>8} {'detect s':>9} {'Mvox/s':>7} "
             f"{'peak GB':>8} {'cells':>9}"]
    records = []
    for name, r in rows.items():
        mvox = r["voxels"] / 1e6 / r["detect_s"] if r.get("detect_s") else None
        lines.append(f"{name:>7} {'x'.join(map(str, r['shape'])):>16} {r['voxels'] / 1e9:6.3f} "
                     f"{r['seconds']:8.1f} {_fmt(r.get('detect_s'), '9.1f', '        -')} "
                     f"{_fmt(mvox, '7.2f', '      -')} {r['peak_rss'] / 1e9:8.3f} "
                     f"{_fmt(r.get('cells'), '9d', '        -')}")
        records.append({"kind": "size", "name": name, "shape": "x".join(map(str, r["shape"])),
                        "voxels": r["voxels"], "wall_s": round(r["seconds"], 2),
                        "detect_s": r.get("detect_s"), "mvox_s": None if mvox is None else round(mvox, 3),
                        "peak_rss_gb": round(r["peak_rss"] / 1e9, 4), "cells": r.get("cells"),
                        "cpu_s": None if r.get("cpu_s") is None else round(r["cpu_s"], 1),
                        "returncode": r["returncode"]})
    mem = ratio(rows, "4x2x4", "base", lambda r: r["peak_rss"])
    # 2x2x2 measured before and after 4x2x4 (--bracket): their mean, so a drift of the machine's speed
    # during the bench cancels to first order
    per_vox = ratio(rows, "4x2x4", "2x2x2",
                    lambda r: statistics.fmean(r.get("detect_s_runs") or [r.get("detect_s") or 0]) / r["voxels"])
    per_vox_wall = ratio(rows, "4x2x4", "2x2x2",
                         lambda r: statistics.fmean(r.get("seconds_runs") or [r["seconds"]]) / r["voxels"])
    lines.append("")
    lines.append(f"peak memory 4x2x4 / base:       {_fmt(mem, '.3f', 'n/a (needs base and 4x2x4)')}"
                 f"   (target <= {TARGET_MEMORY_RATIO})")
    lines.append(f"seconds per voxel 4x2x4 / 2x2x2: {_fmt(per_vox, '.3f', 'n/a (needs 2x2x2 and 4x2x4)')}"
                 f"   (target <= {TARGET_TIME_RATIO}; detection's own seconds; wall: "
                 f"{_fmt(per_vox_wall, '.3f', 'n/a')})")
    runs = rows.get("2x2x2", {}).get("detect_s_runs")
    if runs:
        lines.append(f"  (2x2x2 measured before and after 4x2x4: {runs[0]:.1f} s and {runs[1]:.1f} s; the ratio "
                     "uses their mean)")
    records.append({"kind": "ratio", "name": "peak_rss 4x2x4/base", "value": _round(mem),
                    "target": f"<= {TARGET_MEMORY_RATIO}", "met": _met(mem, TARGET_MEMORY_RATIO)})
    records.append({"kind": "ratio", "name": "detect_s_per_voxel 4x2x4/2x2x2", "value": _round(per_vox),
                    "target": f"<= {TARGET_TIME_RATIO}", "met": _met(per_vox, TARGET_TIME_RATIO)})
    records.append({"kind": "ratio", "name": "wall_s_per_voxel 4x2x4/2x2x2", "value": _round(per_vox_wall),
                    "target": f"<= {TARGET_TIME_RATIO}", "met": _met(per_vox_wall, TARGET_TIME_RATIO)})
    if resume is not None:
        share = resume.get("share")
        lines.append(f"killed at {resume['kill_at']:.0%} of the {resume['size']} run "
                     f"({resume['chunks_before']} of {resume['chunks_total']} chunks recorded), run again: "
                     f"{resume['cells']}; second part {_fmt(share, '.0%', 'n/a')} of a full run "
                     f"(target < {TARGET_RESUME_SHARE:.0%})")
        records.append({"kind": "resume", "name": f"{resume['size']} killed at {resume['kill_at']}",
                        "wall_s": round(resume["rerun_s"], 2), "value": _round(share),
                        "target": f"< {TARGET_RESUME_SHARE}", "met": _met(share, TARGET_RESUME_SHARE, strict=True),
                        "note": f"{resume['cells']}; {resume['chunks_before']}/{resume['chunks_total']} "
                                "chunks recorded before the kill"})
    return lines, records


def _round(v):
    return None if v is None else round(v, 4)


def _met(v, target: float, *, strict: bool = False):
    if v is None:
        return None
    return v < target if strict else v <= target


CSV_FIELDS = ["kind", "name", "shape", "voxels", "wall_s", "detect_s", "mvox_s", "peak_rss_gb", "cells", "cpu_s",
              "returncode", "value", "target", "met", "note", "cpus", "model", "date"]


def write_results(path: Path, records: list[dict], *, common: dict, fields=None) -> Path:
    """The records as a CSV at ``path`` (columns ``fields``, default :data:`CSV_FIELDS`),
    atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(fields or CSV_FIELDS), extrasaction="ignore")
            w.writeheader()
            for r in records:
                w.writerow({**common, **{k: v for k, v in r.items() if v is not None}})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module's doc)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                    help=f"comma-separated: base, 2x2x2, 4x2x4 or any TZxTYxTX tiles (default {DEFAULT_SIZES})")
    ap.add_argument("--base-shape", type=int, nargs=3, default=[128, 1024, 1024], metavar=("Z", "Y", "X"),
                    help="the bench volume (default 128 1024 1024)")
    ap.add_argument("--cache", default="data/bench", help="where the volumes (and an untrained model) are "
                                                          "built and reused (default data/bench)")
    ap.add_argument("--model", default=None, help="model for clarity detect (default: models/default/final.pt "
                                                   "if present, else an untrained seeded model in the cache)")
    ap.add_argument("--kill-at", type=float, default=None, metavar="F",
                    help="for the largest size: kill a run at F x the full run's seconds, run it again, "
                         "compare the cells and time the second part")
    ap.add_argument("--chunk", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                    help="clarity detect --chunk (default: its own, 64 512 512)")
    ap.add_argument("--workers", type=int, default=None, help="clarity detect --workers")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="clarity detect --device")
    ap.add_argument("--zarr-chunks", type=int, nargs=3, default=[64, 256, 256], metavar=("Z", "Y", "X"),
                    help="chunks of the stored volumes (default 64 256 256)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bench volume (and untrained model)")
    ap.add_argument("--results", default=str(BENCH / "results" / "bench_scale.csv"),
                    help="the table as CSV (default bench/results/bench_scale.csv)")
    ap.add_argument("--workdir", default=None, help="the detections' --out folders and logs go here "
                                                    "(default: a temporary folder, removed at the end)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars while building")
    ap.add_argument("--no-bracket", dest="bracket", action="store_false",
                    help="do not measure 2x2x2 again after 4x2x4 (the time ratio then uses one run of each, "
                         "exposed to the machine's drift)")
    ap.add_argument("--build-only", dest="plan", default=None, help=argparse.SUPPRESS)
    return ap


def _check(ap: argparse.ArgumentParser, args) -> None:
    if min(args.base_shape) < 1 or min(args.zarr_chunks) < 1:
        ap.error("--base-shape and --zarr-chunks need positive sizes")
    if args.kill_at is not None and not 0 < args.kill_at < 1:
        ap.error("--kill-at is a fraction of the full run, between 0 and 1")


def main(argv=None) -> int:
    """Build the volumes (in a child), measure each size, print and write the table; 0."""
    ap = build_parser()
    args = ap.parse_args(argv)
    _check(ap, args)
    if args.plan:  # the building child
        sys.path.insert(0, str(ROOT))
        Path(args.plan).write_text(json.dumps(build_all(args)))
        return 0
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="clarity-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _measure_all(args, argv, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def _measure_all(args, argv, work: Path) -> int:
    plan_file = work / "plan.json"
    build = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--build-only", str(plan_file)]
    subprocess.run(build, check=True, cwd=os.getcwd())
    plan = json.loads(plan_file.read_text())
    print(f"clarity detect at scale: {os.cpu_count()} CPU cores, model {plan['model']}, "
          f"load average {os.getloadavg()[0]:.1f} (the machine may be shared)", flush=True)
    rows: dict[str, dict] = {}
    base_shape = tuple(args.base_shape)
    for name, tiles in args.sizes:
        shape = [b * t for b, t in zip(base_shape, tiles)]
        out = Path(tempfile.mkdtemp(prefix=f"out_{name}_", dir=work))  # fresh: nothing to resume
        res = run_measured(detect_command(plan["stores"][name], plan["model"], out, args), log=work / f"{name}.log")
        cells, detect_s = parse_detect_line(res["stdout"])
        rows[name] = {**res, "shape": shape, "voxels": math.prod(shape), "cells": cells, "detect_s": detect_s,
                      "csv": out / (Path(plan["stores"][name]).name.split(".")[0] + ".csv")}
        status = "" if res["returncode"] == 0 else f"  FAILED (exit {res['returncode']}; log {work / (name + '.log')})"
        print(f"{name:>7}: {res['stdout'].strip()}  [wall {res['seconds']:.1f} s, CPU {res['cpu_s']:.1f} s, "
              f"peak RSS {res['peak_rss'] / 1e9:.2f} GB]{status}", flush=True)
    if args.bracket and "2x2x2" in rows and "4x2x4" in rows:  # the machine's speed drifts: 1.07 Gvox again
        out = Path(tempfile.mkdtemp(prefix="out_2x2x2_again_", dir=work))
        res = run_measured(detect_command(plan["stores"]["2x2x2"], plan["model"], out, args), log=work / "2x2x2_again.log")
        _, again = parse_detect_line(res["stdout"])
        r = rows["2x2x2"]
        if again and r.get("detect_s"):
            r["detect_s_runs"] = [r["detect_s"], again]
            r["seconds_runs"] = [r["seconds"], res["seconds"]]
        print(f"  2x2x2 again (after 4x2x4): {res['stdout'].strip()}  [wall {res['seconds']:.1f} s]", flush=True)
    resume = None
    if args.kill_at is not None:
        resume = kill_and_resume(args, plan, rows, work)
    lines, records = summary(rows, resume)
    print("\n" + "\n".join(lines))
    common = {"cpus": os.cpu_count(), "model": plan["model"],
              "date": datetime.datetime.now().isoformat(timespec="seconds")}
    path = write_results(Path(args.results), records, common=common)
    print(f"\nwritten {path}; this process's own peak {_self_peak_mb():.0f} MB (a child's peak "
          "includes at most this much of it: Linux carries it through fork and exec)")
    return 0


def kill_and_resume(args, plan: dict, rows: dict, work: Path) -> dict | None:
    """Kill the largest size's run at ``args.kill_at`` of its full time, run it again; the
    figures for :func:`summary` (None when the full run failed)."""
    name = max(rows, key=lambda n: rows[n]["voxels"])
    full = rows[name]
    if full["returncode"] != 0:
        print(f"--kill-at: the full {name} run failed; no resume check", flush=True)
        return None
    out = Path(tempfile.mkdtemp(prefix=f"out_{name}_killed_", dir=work))
    cmd = detect_command(plan["stores"][name], plan["model"], out, args)
    first = run_measured(cmd, log=work / f"{name}_killed.log", kill_after=args.kill_at * full["seconds"])
    state = out / ".clarity-state"
    before = len(list(state.glob("*/chunk_*.npz")))
    print(f"{name}: killed after {first['seconds']:.1f} s with {before} chunk(s) recorded"
          if first["killed"] else f"{name}: the run ended before the kill ({first['seconds']:.1f} s)", flush=True)
    second = run_measured(cmd, log=work / f"{name}_resumed.log")
    total = len(list(state.glob("*/chunk_*.npz")))
    ok = second["returncode"] == 0
    cells = compare_cells(full["csv"], out / full["csv"].name) if ok else f"FAILED (exit {second['returncode']})"
    print(f"{name}: run again: {second['stdout'].strip()}  [wall {second['seconds']:.1f} s]", flush=True)
    return {"size": name, "kill_at": args.kill_at, "killed": first["killed"], "chunks_before": before,
            "chunks_total": total, "rerun_s": second["seconds"], "cells": cells,
            "share": second["seconds"] / full["seconds"] if ok else None}


if __name__ == "__main__":
    sys.exit(main())
