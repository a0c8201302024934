"""Tests of clarity.detect.chunks: chunked, threaded, multi-process and distributed execution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile

from clarity.detect import (DetectionConfig, RunOptions, chunk_boxes, detect_block,
                            detect_volume)
from clarity.model import load_model
from clarity.preprocess import correct_volume


def test_chunk_boxes_partition():
    boxes = chunk_boxes((10, 25, 7), (4, 10, 7))
    cover = np.zeros((10, 25, 7), int)
    for b in boxes:
        cover[b] += 1
    assert (cover == 1).all() and len(boxes) == 3 * 3 * 1


def test_chunk_boxes_with_a_halo_keep_every_block_the_same_size():
    """End cores span the chunk, the cores between it less the halo: every core read with its halo
    spans at most chunk + halo voxels, in a small volume as in a large one (memory flat)."""
    chunk, halo = (64, 512, 512), (10, 10, 10)
    for shape in [(128, 1024, 1024), (512, 2048, 4096), (300, 700, 1500)]:
        boxes = chunk_boxes(shape, chunk, halo)
        starts = [sorted({b[a].start for b in boxes}) for a in range(3)]
        for a in range(3):  # a partition along every axis
            stops = sorted({b[a].stop for b in boxes})
            assert starts[a][0] == 0 and stops[-1] == shape[a] and starts[a][1:] == stops[:-1]
        spans = [{(b[a].start, b[a].stop) for b in boxes} for a in range(3)]
        ext = [max(min(e + h, n) - max(s - h, 0) for s, e in spans[a]) for a, (n, h) in enumerate(zip(shape, halo))]
        assert all(e <= c + h for e, c, h in zip(ext, chunk, halo)), (shape, ext)
        for a in range(3):  # evenly sized: the cores between the ends differ by at most a voxel
            inner = sorted({e - s for s, e in spans[a] if 0 < s and e < shape[a]})
            assert not inner or inner[-1] - inner[0] <= 1
    assert len(chunk_boxes((128, 1024, 1024), chunk, halo)) == 8  # 2 x 2 x 2 blocks of 74 x 522 x 522
    # 4.3 Gvox: 10 x 5 x 9 cores, none longer than 64 x 512 x 512, blocks at most 74 x 522 x 522
    assert len(chunk_boxes((512, 2048, 4096), chunk, halo)) == 10 * 5 * 9
    # a halo of more than half the chunk: plain chunk-sized cores (they would be mostly halo)
    assert chunk_boxes((100, 10, 10), (10, 10, 10), (6, 0, 0)) == chunk_boxes((100, 10, 10), (10, 10, 10))


def test_balanced_chunk_keeps_every_worker_busy():
    from clarity.detect.chunks import balanced_chunk

    assert balanced_chunk((64, 512, 512), (64, 512, 512), 2, (8, 6, 6)) == (64, 256, 512)
    assert balanced_chunk((256, 1024, 1024), (64, 512, 512), 2, (8, 6, 6)) == (64, 512, 512)
    assert balanced_chunk((20, 30, 30), (64, 512, 512), 8, (8, 6, 6)) == (20, 15, 15)
    with pytest.raises(ValueError):
        balanced_chunk((10, 10, 10), (0, 5, 5), 1, (1, 1, 1))


def test_chunked_equals_unchunked(reference, files, same_cells):
    chunk = (10, 40, 30)
    res = detect_volume(files['volume'], model=load_model(files['model'], device='cpu'), field=reference.field, normalisation=reference.normalisation, run=RunOptions(reshape_chunk=False, chunk=chunk, progress=False, device='cpu'))
    assert res.chunks == 4 * 3 * 4
    same_cells(res.cells, reference.cells)
    # the test means something: candidates sat on the chunk borders
    pts = reference.cells[["z", "y", "x"]].to_numpy()
    near = np.zeros(len(pts), bool)
    for a, c in enumerate(chunk):
        r = pts[:, a] % c
        near |= (r < 3) | (r >= c - 3)
    assert near.sum() >= 5
    # same again with the sync scheduler and an in-memory array source
    vol = tifffile.imread(files["volume"])
    res2 = detect_volume(vol, model=load_model(files['model'], device='cpu'), field=reference.field, normalisation=reference.normalisation, run=RunOptions(reshape_chunk=False, chunk=(16, 48, 48), scheduler='sync', progress=False, device='cpu'))
    same_cells(res2.cells, reference.cells)


@pytest.mark.parametrize("refine", ["climb", "none"])
def test_chunked_equals_unchunked_every_refinement(reference, files, refine, same_cells):
    vol = tifffile.imread(files["volume"])
    v = correct_volume(vol, reference.field, reference.normalisation)
    net = load_model(files["model"], device="cpu")
    whole = detect_block(v, model=net, config=DetectionConfig(refine=refine), run=RunOptions(device='cpu'))
    chunked = detect_volume(v, model=net, preprocessed=True, config=DetectionConfig(refine=refine), run=RunOptions(reshape_chunk=False, chunk=(12, 40, 40), scheduler='sync', progress=False, device='cpu'))
    assert chunked.chunks > 1
    same_cells(chunked.cells, whole)


def test_distributed_cluster_matches_local(reference, files, same_cells):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        res = detect_volume(files['volume'], model=load_model(files['model'], device='cpu'), field=reference.field, normalisation=reference.normalisation, run=RunOptions(reshape_chunk=False, chunk=(16, 48, 48), scheduler=cluster.scheduler_address, progress=False, device='cpu'))
        # an in-memory array is shipped chunk by chunk
        vol = tifffile.imread(files["volume"])
        res2 = detect_volume(vol, model=load_model(files['model'], device='cpu'), field=reference.field, normalisation=reference.normalisation, run=RunOptions(reshape_chunk=False, chunk=(16, 48, 48), scheduler=cluster.scheduler_address, progress=False, device='cpu'))
    same_cells(res.cells, reference.cells)
    same_cells(res2.cells, reference.cells)
    assert res.chunks == 2 * 2 * 2


@pytest.mark.slow
def test_distributed_worker_processes_match_local(reference, files, same_cells):
    """Worker processes: the model, field and reader really travel pickled (a few seconds)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        res = detect_volume(files['volume'], model=load_model(files['model'], device='cpu'), field=reference.field, normalisation=reference.normalisation, run=RunOptions(reshape_chunk=False, chunk=(16, 48, 48), scheduler=cluster.scheduler_address, progress=False, device='cpu'))
    same_cells(res.cells, reference.cells)


def test_planned_chunks_read_less_halo_within_the_same_memory():
    from clarity.detect.chunks import plan_chunk

    def blocks(shape, chunk, halo):
        return [int(np.prod([min(s.stop + h, n) - max(s.start - h, 0) for s, h, n in zip(b, halo, shape)]))
                for b in chunk_boxes(shape, chunk, halo)]

    budget = (64 + 10) * (512 + 10) ** 2  # chunk_boxes: a block spans at most chunk + halo per axis
    for shape, workers in [((128, 1024, 1024), 2), ((256, 1024, 1024), 2), ((512, 2048, 4096), 128),
                           ((40, 3000, 200), 4)]:
        planned = plan_chunk(shape, (64, 512, 512), workers, (10, 10, 10))
        new, old = blocks(shape, planned, (10,) * 3), blocks(shape, (64, 512, 512), (10,) * 3)
        assert max(new) <= budget                    # memory per chunk in flight: bounded as before
        rounds = [math.ceil(len(b) / workers) for b in (new, old)]
        assert rounds[0] * max(new) <= rounds[1] * max(old)  # the slowest worker finishes no later
        assert len(new) >= workers                   # every worker has a chunk
        if shape[0] >= 128:
            assert sum(new) <= sum(old)              # and no more is read twice
    # the bench volume: whole in z, 8 blocks for 2 workers, 14 % fewer voxels read
    assert plan_chunk((128, 1024, 1024), (64, 512, 512), 2, (10, 10, 10)) == (128, 522, 266)
    # a whole brain (many chunks per worker) keeps the chunk: every large volume is cut alike
    assert plan_chunk((512, 2048, 4096), (64, 512, 512), 2, (10, 10, 10)) == (64, 512, 512)
    assert plan_chunk((256, 2048, 2048), (64, 512, 512), 16, (10, 10, 10)) == (64, 512, 512)
    # a volume smaller than a chunk stays one chunk when halving it would mostly add halo
    assert plan_chunk((20, 30, 30), (64, 512, 512), 8, (8, 6, 6)) == (20, 30, 30)


def test_planned_chunks_give_the_same_cells(reference, files, same_cells):
    # a small budget so that the plan cuts the tiny volume into several chunks
    res = detect_volume(files['volume'], model=load_model(files['model'], device='cpu'), field=reference.field,
                        normalisation=reference.normalisation,
                        run=RunOptions(chunk=(8, 40, 40), progress=False, device='cpu'))
    assert res.chunks > 2
    same_cells(res.cells, reference.cells)
