"""Chunked execution: each chunk core with its halo is read, corrected, normalised and searched
on local threads, local processes or a :mod:`dask.distributed` cluster.

Every chunk task gets the same :class:`ChunkJob` (reader, bias field, normalisation, block plan,
model weights as plain numbers); a worker rebuilds the network once per process and caches it by
weight hash (:func:`worker_model`); threads of one process lend each other sets of scratch buffers
(:class:`clarity.detect.filters.BufferPool`), one set per task in flight, never two tasks at once.
Results come back in chunk order whatever order the chunks finish in; with a
:class:`clarity.detect.resume.ChunkState` each chunk is recorded as it finishes and a rerun reads
the recorded ones back (:func:`compute_chunks`). Arrays are (z, y, x) voxels.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import dask
import numpy as np
import torch
from dask.callbacks import Callback
from tqdm.auto import tqdm

from ..io import ArrayReader, ClarityInputError, MemmapReader
from ..model import CellCNN, ModelConfig, pick_device
from ..preprocess import correct_volume
from ..rescore import shape_features
from ..resources import cpus, release_memory
from .block import BlockPlan, search_block
from .filters import BufferPool, ScratchBuffers, local_snr
from .grid import model_range, model_shape, resample_block

__all__ = ["ModelBlob", "worker_model", "ChunkJob", "chunk_boxes", "balanced_chunk", "run_chunk",
           "compute_chunks"]


@dataclass
class ModelBlob:
    """A model as plain data (config + numpy weights), cheap to pickle to dask workers."""

    config: dict
    state: dict
    token: str

    @classmethod
    def from_model(cls, net) -> "ModelBlob":
        state = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
        h = hashlib.sha256(repr(sorted(net.config.to_dict().items())).encode())
        for k in sorted(state):
            h.update(k.encode())
            h.update(np.ascontiguousarray(state[k]).tobytes())
        return cls(net.config.to_dict(), state, h.hexdigest())


_MODEL_CACHE: dict[tuple[str, str], Any] = {}


_MODEL_LOCK = threading.Lock()


def worker_model(blob: ModelBlob, device: str | None):
    """The CellCNN of ``blob`` on ``device``, built once per process (cached by weight hash)."""
    dev = pick_device(device)
    key = (blob.token, str(dev))
    with _MODEL_LOCK:
        net = _MODEL_CACHE.get(key)
        if net is None:
            net = CellCNN(ModelConfig.from_dict(blob.config))
            net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in blob.state.items()})
            net = net.to(dev).eval()
            if len(_MODEL_CACHE) > 8:
                _MODEL_CACHE.clear()
            _MODEL_CACHE[key] = net
    return net


def _axis_cores(n: int, c: int, h: int) -> list[slice]:
    """Cores along one axis, each at most ``c`` long and, read with its halo ``h`` on either side,
    at most ``c + h`` voxels: as few as that allows, evenly sized (the two end cores ``h`` longer
    than the ones between, whose halo is on both sides). Without a halo (or when the cores between
    would be under ``c / 2``): ``c`` each, the last one shorter."""
    if n <= c:
        return [slice(0, n)]
    if not (0 < h and 2 * (c - h) >= c):
        return [slice(a, min(a + c, n)) for a in range(0, n, c)]
    k = max(0, math.ceil((n - 2 * c) / (c - h)))  # cores between the two end cores
    e = (n + k * h) / (k + 2)                     # end core length; the others e - h
    sizes = [e] + [e - h] * k + [e]
    cuts = [0] + [int(round(v)) for v in np.cumsum(sizes)[:-1]] + [n]
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def chunk_boxes(shape: Sequence[int], chunk: Sequence[int], halo: Sequence[int] = (0, 0, 0)) -> list[tuple[slice, slice, slice]]:
    """The chunk cores: boxes (z, y, x) that partition ``shape``.

    With ``halo`` (the voxels a core is read with on each side), cores at the volume's faces are
    at most ``chunk`` long along that axis and the ones between ``halo`` shorter (as few cores as
    that allows, evenly sized), so that every core *with its halo* spans at most ``chunk + halo``
    voxels per axis wherever it lies: the memory a chunk
    needs does not grow with the volume (a small volume's chunks all touch its faces, a large
    one's mostly lie inside). Without a halo: boxes of ``chunk`` voxels. Results do not depend on
    the cores.
    """
    shape = tuple(int(s) for s in shape)
    chunk = tuple(int(c) for c in chunk)
    halo = tuple(max(0, int(h)) for h in halo)
    if len(chunk) != 3 or min(chunk) < 1:
        raise ValueError(f"chunk must be three positive sizes (z, y, x), not {chunk}")
    if len(halo) != 3:
        raise ValueError(f"halo must be three sizes (z, y, x), not {halo}")
    grids = [_axis_cores(n, c, h) for n, c, h in zip(shape, chunk, halo)]
    return [(z, y, x) for z in grids[0] for y in grids[1] for x in grids[2]]


@dataclass
class ChunkJob:
    """Per-run data every chunk task needs: shipped once per worker."""

    reader: Any
    field: Any
    norm: Any
    preprocessed: bool
    plan: BlockPlan
    blob: ModelBlob | None
    halo: tuple[int, int, int]
    shape: tuple[int, int, int]
    factors: tuple[float, float, float] = (1.0, 1.0, 1.0)  # input voxel / model voxel (grid.py)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __dask_tokenize__(self):
        return ("clarity-detect-shared", self.token)


_POOLS: dict[str, BufferPool] = {}


def run_chunk(core: tuple[slice, slice, slice], shared: ChunkJob, block=None) -> dict:
    """Read, correct, normalise and search one chunk; detections in its core (volume coords)."""
    pool = _POOLS.get(shared.token)
    with (pool.lease() if pool is not None else contextlib.nullcontext(ScratchBuffers())) as bufs:
        return chunk_work(core, shared, block, bufs)


def chunk_work(core, shared: ChunkJob, block, bufs: ScratchBuffers) -> dict:
    stats: dict = {}
    t_all = time.perf_counter()
    shape, halo = shared.shape, shared.halo
    lo = [max(0, c.start - h) for c, h in zip(core, halo)]
    hi = [min(n, c.stop + h) for c, n, h in zip(core, shape, halo)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    bshape = tuple(b - a for a, b in zip(lo, hi))
    t0 = time.perf_counter()
    if block is not None:
        raw = np.asarray(block)
    else:
        raw = shared.reader.read(box, out=bufs.get("raw", bshape, shared.reader.dtype))
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise ClarityInputError(f"{getattr(shared.reader, 'name', 'volume')}: contains NaN or "
                                "infinite values; clean the volume before running clarity")
    stats["read_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    v = bufs.get("v", bshape)
    if shared.preprocessed:
        np.copyto(v, raw, casting="unsafe")
    else:
        correct_volume(raw, shared.field, shared.norm, box=box, out=v, slab=8)
    del raw
    stats["correct_s"] = time.perf_counter() - t0
    net = worker_model(shared.blob, shared.plan.device) if shared.blob is not None else None
    v, origin, core_local = _on_model_grid(v, lo, core, shared)
    cent, sc, rs = search_block(v, model=net, plan=shared.plan, core=core_local,
                                vol_lo=[a == 0 for a in lo],
                                vol_hi=[b == n for b, n in zip(hi, shape)], stats=stats, bufs=bufs)
    snr = local_snr(v, cent)
    feats = None
    if shared.plan.features:
        t0 = time.perf_counter()
        feats = shape_features(v, cent, buffer=bufs.get("tmp", v.shape))
        stats["features_s"] = time.perf_counter() - t0
    stats["chunk_s"] = time.perf_counter() - t_all
    stats["voxels"] = int(np.prod(bshape))
    return {"points": cent + np.asarray(origin, np.int64), "scores": np.array(sc, np.float32),
            "responses": np.array(rs, np.float32), "snr": snr, "features": feats, "stats": stats}


def _on_model_grid(v: np.ndarray, lo, core, shared: ChunkJob):
    """The block on the model's grid, its global origin there and the core in its coordinates
    (the block itself when no resampling is needed)."""
    if all(f == 1.0 for f in shared.factors):
        return v, tuple(lo), tuple(slice(c.start - a, c.stop - a) for c, a in zip(core, lo))
    vm, origin = resample_block(v, lo, shared.factors, full_shape=shared.shape)
    n_model = model_shape(shared.shape, shared.factors)
    core_m = []
    for axis, c in enumerate(core):
        a, b = model_range(c.start, c.stop, shared.factors[axis], n_model[axis])
        core_m.append(slice(a - origin[axis], b - origin[axis]))
    return vm, origin, tuple(core_m)


def balanced_chunk(shape, chunk, workers: int, halo) -> tuple[int, int, int]:
    """``chunk``, halved along its longest axis while the volume has fewer chunks than local
    workers (a small volume would otherwise leave cores idle). Results do not depend on it."""
    if len(tuple(chunk)) != 3 or min(int(c) for c in chunk) < 1:
        raise ValueError(f"chunk must be three positive sizes (z, y, x), not {tuple(chunk)}")
    chunk = [min(int(c), int(n)) for c, n in zip(chunk, shape)]

    def count(c):
        return len(chunk_boxes(shape, c, halo))

    while count(chunk) < workers:
        a = int(np.argmax([c / max(1, 2 * h) for c, h in zip(chunk, halo)]))
        if chunk[a] < 4 * max(1, halo[a]):  # halves would be mostly halo
            break
        chunk[a] = math.ceil(chunk[a] / 2)
    return tuple(chunk)


#: A volume that ``chunk`` cuts into more than this many chunks per worker keeps ``chunk``.
MANY_CHUNKS_PER_WORKER = 4


def plan_chunk(shape, chunk, workers: int, halo, *, max_cores_per_axis: int = 64,
               chunk_overhead: float = 2e5) -> tuple[int, int, int]:
    """The chunk (core sizes, z, y, x) that finishes soonest on ``workers`` workers, within the
    memory of ``chunk``: cut a volume of few chunks so that less of it is read twice as halo and
    the workers finish together.

    A volume that ``chunk`` already cuts into more than :data:`MANY_CHUNKS_PER_WORKER` chunks per
    worker (a whole brain) keeps ``chunk``: its workers stay busy anyway, and every large volume is
    then cut alike, so seconds per voxel and peak memory do not depend on its size (make
    bench-scale: the chunks planned for a 256-deep volume fit its depth, those for a 512-deep one
    cannot, and seconds per voxel differed by 13 %).

    Every candidate's largest core with its halo holds at most as many voxels as the largest
    block ``chunk`` gives (``prod(chunk + halo)``, :func:`chunk_boxes`: memory per chunk in flight
    is bounded as before, whatever the volume's size), and
    the chosen one minimises the rounds of chunks per worker times the largest block, plus
    ``chunk_overhead`` voxels per chunk (fixed costs). On the 128 x 1024 x 1024 bench volume
    with the default chunk and halo 10 this is 128 x 512 x 256 (8 blocks of at most 18.4 Mvox,
    139 Mvox read) instead of 64 x 512 x 512 (8 blocks of 20.2 Mvox, 161 Mvox read); LoG mode
    3.47 s instead of 3.77 s.
    Results do not depend on it (:func:`chunk_boxes`).
    """
    shape = [int(n) for n in shape]
    chunk = [max(1, min(int(c), n)) for c, n in zip(chunk, shape)]
    halo = [max(0, int(h)) for h in halo]
    if len(chunk_boxes(shape, chunk, halo)) > MANY_CHUNKS_PER_WORKER * max(1, int(workers)):
        return tuple(chunk)
    budget = float(np.prod([c + h for c, h in zip(chunk, halo)]))  # chunk_boxes' bound on a block
    axes = []
    for n, h in zip(shape, halo):
        opts = {}
        for k in range(1, min(n, max_cores_per_axis) + 1):
            c = math.ceil(n / k) + (h if k > 1 else 0)  # end cores carry the halo on one side
            cores = _axis_cores(n, c, h)
            opts.setdefault(len(cores), (c, max(min(n, (x.stop - x.start) + 2 * h) for x in cores)))
        axes.append(sorted(opts.items()))
    best, best_cost = None, math.inf
    for kz, (cz, bz) in axes[0]:
        for ky, (cy, by) in axes[1]:
            ks = np.array([k for k, _ in axes[2]])
            bx = np.array([b for _, (_, b) in axes[2]], float)
            box = float(bz) * by * bx
            n_chunks = kz * ky * ks
            cost = np.ceil(n_chunks / max(1, int(workers))) * box + n_chunks * chunk_overhead
            cost[box > budget] = np.inf
            i = int(np.argmin(cost))
            if cost[i] < best_cost:
                best_cost, best = cost[i], (cz, cy, axes[2][i][1][0])
    return tuple(int(c) for c in best) if best is not None else balanced_chunk(shape, chunk, workers, halo)


class ChunkProgress:
    """A tqdm bar over the voxels of finished chunk cores (Mvox/s, time left) that also hands
    each finished chunk's result to ``on_done(i, result)``: a local dask scheduler callback
    (:meth:`callback`) or called by hand (:meth:`done`)."""

    def __init__(self, prefix: str, sizes: Sequence[int], *, initial: int = 0, enabled: bool, desc: str,
                 on_done=None):
        self.prefix = prefix
        self.sizes = [int(s) for s in sizes]
        self.on_done = on_done
        self.bar = tqdm(total=sum(self.sizes), initial=int(initial), desc=desc, unit="vox",
                        unit_scale=True, disable=not enabled)

    def done(self, i: int, result) -> None:
        if self.on_done is not None:
            self.on_done(i, result)
        self.bar.update(self.sizes[i])

    def callback(self):
        outer = self

        class _CB(Callback):
            def _posttask(self, key, result, dsk, state, id):
                k = key[0] if isinstance(key, tuple) else key
                if isinstance(k, str) and k.startswith(outer.prefix + "-"):
                    outer.done(int(k[len(outer.prefix) + 1:]), result)

        return _CB()


def _chunk_tasks(cores, todo, shared: ChunkJob, prefix: str, local_ship: bool) -> list:
    """One delayed :func:`run_chunk` per core index of ``todo`` (key ``<prefix>-<index>``)."""
    shared_d = (dask.delayed(shared, name=f"clarity-detect-shared-{shared.token}", traverse=False)
                if not local_ship else None)
    tasks = []
    for i in todo:
        core = cores[i]
        if local_ship:
            # an in-memory array cannot be read by a remote worker: send each chunk's box
            lo = [max(0, c.start - h) for c, h in zip(core, shared.halo)]
            hi = [min(n, c.stop + h) for c, n, h in zip(core, shared.shape, shared.halo)]
            block = shared.reader.array[tuple(slice(a, b) for a, b in zip(lo, hi))]
            if not hasattr(block, "__dask_graph__"):
                block = np.asarray(block)  # a view of a numpy array; a dask array stays lazy
            if shared_d is None:
                sh = replace(shared, reader=ArrayReader(np.zeros((1, 1, 1), np.uint8), shared.reader.name),
                             token=shared.token)
                shared_d = dask.delayed(sh, name=f"clarity-detect-shared-{shared.token}", traverse=False)
            tasks.append(dask.delayed(run_chunk, pure=False)(core, shared_d, block,
                                                              dask_key_name=f"{prefix}-{i}"))
        else:
            tasks.append(dask.delayed(run_chunk, pure=False)(core, shared_d, dask_key_name=f"{prefix}-{i}"))
    return tasks


def compute_chunks(cores, shared: ChunkJob, *, scheduler, num_workers, progress, desc, state=None) -> list[dict]:
    """Run :func:`run_chunk` over ``cores`` with dask; results in chunk order.

    With ``state`` (:class:`clarity.detect.resume.ChunkState`) the chunks it holds are read back,
    not computed, and each chunk computed is recorded there as soon as it finishes. The progress
    bar counts the voxels of the chunk cores (those read back included).
    """
    prefix = f"clarity-detect-chunk-{shared.token}"
    in_memory = isinstance(shared.reader, ArrayReader) and not isinstance(shared.reader, MemmapReader)
    distributed = scheduler is not None and not (isinstance(scheduler, str) and
                                                 scheduler in ("threads", "sync", "processes", "synchronous"))
    local_ship = in_memory and (distributed or scheduler == "processes")
    out: list = [state.load(c) if state is not None else None for c in cores]
    todo = [i for i, r in enumerate(out) if r is None]
    sizes = [int(np.prod([c.stop - c.start for c in core])) for core in cores]

    def record(i, result):
        out[i] = result
        if state is not None:
            state.record(cores[i], result)
        release_memory()  # the finished chunk's blocks: back to the OS, not kept by malloc

    prog = ChunkProgress(prefix, sizes, initial=sum(sizes) - sum(sizes[i] for i in todo), enabled=progress,
                         desc=desc, on_done=record)
    tasks = _chunk_tasks(cores, todo, shared, prefix, local_ship)
    try:
        if distributed:
            _compute_distributed(tasks, todo, scheduler, prog)
            return out
        sched = {"sync": "sync", "synchronous": "sync", "processes": "processes"}.get(scheduler, "threads")
        workers = 1 if sched == "sync" else int(num_workers or cpus())
        kw = {} if sched == "sync" else {"num_workers": workers}
        if sched != "processes":
            _POOLS[shared.token] = BufferPool()  # released when the run ends
        # torch's threads follow the whole run's chunk count (not the chunks left), so a resumed
        # run computes each chunk exactly as an uninterrupted one
        with prog.callback(), _torch_threads(min(workers, len(cores)) if sched == "threads" else 1):
            results = dask.compute(*tasks, scheduler=sched, **kw)
        for i, r in zip(todo, results):
            out[i] = r
        return out
    finally:
        _POOLS.pop(shared.token, None)
        prog.bar.close()


@contextlib.contextmanager
def _torch_threads(concurrent: int):
    """Give each of ``concurrent`` chunk threads its share of the cores for torch (no
    oversubscription: torch's intra-op pool is per process)."""
    before = torch.get_num_threads()
    share = max(1, cpus() // max(1, concurrent))
    if share < before:
        torch.set_num_threads(share)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _compute_distributed(tasks, todo: Sequence[int], scheduler, prog: ChunkProgress) -> None:
    """Run ``tasks`` (the chunks ``todo``) on a dask.distributed cluster; each result goes to
    ``prog.done`` as it arrives."""
    from distributed import Client, as_completed
    own = not isinstance(scheduler, Client)
    client = Client(scheduler, set_as_default=False) if own else scheduler
    try:
        futures = client.compute(tasks)
        index = {f.key: i for i, f in zip(todo, futures)}
        with client.as_current():
            for fut in as_completed(futures):
                prog.done(index[fut.key], fut.result())
    finally:
        if own:
            client.close()
