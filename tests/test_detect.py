"""Tests of clarity.detect: the candidate screen, NMS, chunked / distributed whole-volume detection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from clarity.detect import (DetectionConfig, RunOptions, candidate_halo, chunk_boxes, detect_block,
                            detect_volume, find_candidates, find_peaks, fit_log_threshold, local_snr,
                            log_detect, nms)
from clarity.detect.filters import max_filter, neg_laplacian
from clarity.io import ClarityInputError, VolumeReader
from clarity.patches import cut_patches
from clarity.model import CellCNN, ModelConfig, load_model, save_model
from clarity.preprocess import N4Config, correct_volume, estimate_normalisation, fit_bias_field
from clarity.synthetic import make_brain

SHAPE = (32, 96, 96)
N4_FAST = N4Config(iterations=10, levels=2)


def _model(seed: int = 0) -> CellCNN:
    """An untrained CellCNN whose scores spread over (0, 1) (a wide output layer), so that the
    threshold and NMS see clearly different scores."""
    torch.manual_seed(seed)
    net = CellCNN(ModelConfig())
    torch.nn.init.normal_(net.fc2.weight, std=0.5)
    return net.eval()


@pytest.fixture(scope="module")
def brain():
    return make_brain(7, shape=SHAPE, cell_density=4e-4)


@pytest.fixture(scope="module")
def files(tmp_path_factory, brain):
    d = tmp_path_factory.mktemp("detect")
    vol = d / "tiny.tif"
    tifffile.imwrite(vol, brain.volume)
    model = save_model(d / "model.pt", _model(), normalisation={"method": "contrast"},
                       threshold=0.5, provenance={"note": "untrained test model"})
    return {"volume": vol, "model": model, "dir": d}


@pytest.fixture(scope="module")
def reference(files):
    """Unchunked detection of the tiny volume (one chunk), N4 included."""
    return detect_volume(files['volume'], model=load_model(files['model'], device='cpu'), n4=N4_FAST, run=RunOptions(chunk=SHAPE, scheduler='sync', progress=False, device='cpu'))


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5])
def test_max_filter_equals_scipy(radius):
    a = np.random.default_rng(radius).standard_normal((9, 14, 11)).astype(np.float32)
    got = max_filter(a, radius, np.empty_like(a), np.empty_like(a))
    want = ndimage.maximum_filter(a, size=2 * radius + 1, mode="nearest")
    np.testing.assert_array_equal(got, want)


def test_neg_laplacian_matches_scipy():
    g = np.random.default_rng(1).standard_normal((7, 12, 10)).astype(np.float32)
    sigma = (2.0, 1.25, 1.25)
    got = neg_laplacian(g, sigma, np.empty_like(g), np.empty_like(g))
    want = np.zeros_like(g, dtype=np.float64)
    for a, s in enumerate(sigma):
        want -= s ** 2 * ndimage.correlate1d(g.astype(np.float64), [1.0, -2.0, 1.0], axis=a, mode="nearest")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_find_candidates_finds_blobs_and_respects_tissue():
    shape = (24, 48, 48)
    zz, yy, xx = np.indices(shape)
    v = np.zeros(shape, np.float32)
    centres = np.array([[8, 12, 12], [15, 30, 20], [10, 36, 38]])
    for c in centres:
        v += 1.5 * np.exp(-((zz - c[0]) ** 2 / (2 * 2.0 ** 2) + (yy - c[1]) ** 2 / 8 + (xx - c[2]) ** 2 / 8))
    got, resp = find_candidates(v)
    assert got.dtype == np.int64 and got.shape == (3, 3)
    np.testing.assert_array_equal(got, centres[np.lexsort(centres.T[::-1])])
    assert (resp > 0.3).all()
    # outside the tissue (normalised ~ -1) nothing is a candidate
    dark = 0.3 * v - 1.0
    assert len(find_candidates(dark, tissue_level=None)[0]) == 3
    assert len(find_candidates(dark)[0]) == 0
    mask = np.zeros(shape, bool)
    mask[:, :24] = True
    assert len(find_candidates(v, mask=mask)[0]) == 1


def test_find_candidates_recall_on_synthetic_brain():
    """>= 0.9 of the true cells have a candidate within 4 voxels, at < 20 candidates per cell
    (two small brains pooled; measured 0.95, ~9 per cell)."""
    found, n_cells, n_cand = 0, 0, 0
    for seed in (12, 13):
        b = make_brain(seed, shape=(48, 128, 128), cell_density=1.2e-4)
        field = fit_bias_field(b.volume)
        v = correct_volume(b.volume, field, estimate_normalisation(b.volume, field))
        cand, resp = find_candidates(v)
        assert (resp >= 0.12).all()
        dist, _ = cKDTree(cand).query(b.cells)
        found += int(np.sum(dist <= 4))
        n_cells += len(b.cells)
        n_cand += len(cand)
    assert n_cells > 100
    assert found / n_cells >= 0.9, found / n_cells
    assert n_cand < 20 * n_cells


def test_candidate_halo():
    assert candidate_halo(sigmas=((2.0, 1.25, 1.25),), min_distance=1) == (8, 6, 6)
    assert candidate_halo(sigmas=(2.0, 3.0), min_distance=3) == (13, 13, 13)


def test_nms_merges_duplicates_within_radius():
    pts = np.array([[10, 10, 10], [10, 10, 13], [10, 10, 15.5], [30, 30, 30], [30, 30, 34.5]])
    sc = np.array([0.9, 0.95, 0.5, 0.7, 0.6])
    keep = nms(pts, sc, radius=4.0)
    # 1 (0.95) suppresses 0 (3 away) and 2 (2.5 away); 3 and 4 are 4.5 apart: both stay
    assert keep.tolist() == [1, 3, 4]
    # anisotropy: z distances count double
    pz = np.array([[10, 10, 10], [12.5, 10, 10]])
    assert len(nms(pz, [1.0, 0.5], radius=4.0)) == 1
    assert len(nms(pz, [1.0, 0.5], radius=4.0, scale=(2.0, 1.0, 1.0))) == 2
    # thresholding commutes with NMS
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 40, (300, 3))
    s = rng.random(300)
    full = set(nms(p, s, radius=5.0).tolist())
    hi = np.flatnonzero(s >= 0.6)
    assert {int(hi[i]) for i in nms(p[hi], s[hi], radius=5.0)} == {i for i in full if s[i] >= 0.6}
    assert len(nms(np.zeros((0, 3)), np.zeros(0))) == 0


def test_cut_patches_edge_replication():
    a = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    c = np.array([[0, 0, 0], [2, 3, 3], [4, 5, 6]])
    got = cut_patches(a, c, size=4)
    padded = np.pad(a, 2, mode="edge")
    for i, (z, y, x) in enumerate(c):
        np.testing.assert_array_equal(got[i], padded[z:z + 4, y:y + 4, x:x + 4])


def test_find_peaks():
    s = np.zeros((10, 10, 10), np.float32)
    s[2, 2, 2], s[2, 2, 4], s[7, 7, 7] = 0.9, 0.8, 0.6
    idx, val = find_peaks(s, threshold=0.5, min_distance=3)
    assert idx.tolist() == [[2, 2, 2], [7, 7, 7]]
    np.testing.assert_allclose(val, [0.9, 0.6])


def test_chunk_boxes_partition():
    boxes = chunk_boxes((10, 25, 7), (4, 10, 7))
    cover = np.zeros((10, 25, 7), int)
    for b in boxes:
        cover[b] += 1
    assert (cover == 1).all() and len(boxes) == 3 * 3 * 1


def test_volume_reader_formats(tmp_path):
    a = np.random.default_rng(0).integers(0, 60000, (6, 13, 11)).astype(np.uint16)
    np.save(tmp_path / "a.npy", a)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "c.tif", a, compression="zlib")
    (tmp_path / "planes").mkdir()
    for i, p in enumerate(a):
        tifffile.imwrite(tmp_path / "planes" / f"p{i}.tif", p)
    keys = [(slice(None),) * 3, (slice(1, 5), slice(2, 9), slice(3, 8)),
            (slice(None, None, 2), slice(None, None, 4), slice(1, None, 4))]
    for name in ("a.npy", "a.tif", "c.tif", "planes"):
        r = VolumeReader(tmp_path / name)
        assert r.shape == a.shape
        for k in keys:
            np.testing.assert_array_equal(r[k], a[k])
    bad = a.astype(np.float32)
    bad[4, 3, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(ClarityInputError, match="NaN"):
        VolumeReader(tmp_path / "nan.tif")[3:6]


# --------------------------------------------------------------------------------------------
# whole volumes
# --------------------------------------------------------------------------------------------
def _same(a: pd.DataFrame, b: pd.DataFrame):
    np.testing.assert_array_equal(a[["z", "y", "x"]].to_numpy(), b[["z", "y", "x"]].to_numpy())
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(a["snr"].to_numpy(), b["snr"].to_numpy(), rtol=1e-4, atol=1e-4)


def test_detect_volume_result(reference, brain):
    cells = reference.cells
    assert list(cells.columns[:4]) == ["z", "y", "x", "score"]
    assert reference.n_cells == len(cells) > 0 and reference.chunks == 1
    assert (cells["score"] >= 0.5).all()
    assert cells[["z", "y", "x"]].min().min() >= 0
    assert (cells[["z", "y", "x"]].to_numpy() < np.array(SHAPE)).all()
    # NMS: no two cells within 4 voxels
    pairs = cKDTree(cells[["z", "y", "x"]].to_numpy(float)).query_pairs(4.0)
    assert not pairs
    info = reference.info
    assert info["n_candidates"] >= reference.n_cells
    assert info["normalisation"]["background"] > 0
    assert reference.field is not None and reference.field.full_shape == SHAPE


def test_chunked_equals_unchunked(reference, files):
    chunk = (10, 40, 30)
    res = detect_volume(files['volume'], model=load_model(files['model'], device='cpu'), field=reference.field, normalisation=reference.normalisation, run=RunOptions(chunk=chunk, progress=False, device='cpu'))
    assert res.chunks == 4 * 3 * 4
    _same(res.cells, reference.cells)
    # the test means something: candidates sat on the chunk borders
    pts = reference.cells[["z", "y", "x"]].to_numpy()
    near = np.zeros(len(pts), bool)
    for a, c in enumerate(chunk):
        r = pts[:, a] % c
        near |= (r < 3) | (r >= c - 3)
    assert near.sum() >= 5
    # same again with the sync scheduler and an in-memory array source
    vol = tifffile.imread(files["volume"])
    res2 = detect_volume(vol, model=load_model(files['model'], device='cpu'), field=reference.field, normalisation=reference.normalisation, run=RunOptions(chunk=(16, 48, 48), scheduler='sync', progress=False, device='cpu'))
    _same(res2.cells, reference.cells)


def test_distributed_cluster_matches_local(reference, files):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        res = detect_volume(files['volume'], model=load_model(files['model'], device='cpu'), field=reference.field, normalisation=reference.normalisation, run=RunOptions(chunk=(16, 48, 48), scheduler=cluster.scheduler_address, progress=False, device='cpu'))
        # an in-memory array is shipped chunk by chunk
        vol = tifffile.imread(files["volume"])
        res2 = detect_volume(vol, model=load_model(files['model'], device='cpu'), field=reference.field, normalisation=reference.normalisation, run=RunOptions(chunk=(16, 48, 48), scheduler=cluster.scheduler_address, progress=False, device='cpu'))
    _same(res.cells, reference.cells)
    _same(res2.cells, reference.cells)
    assert res.chunks == 2 * 2 * 2


def test_preprocessed_and_detect_block_agree(reference, files):
    vol = tifffile.imread(files["volume"])
    v = correct_volume(vol, reference.field, reference.normalisation)
    net = load_model(files["model"], device="cpu")
    a = detect_volume(v, model=net, preprocessed=True, run=RunOptions(chunk=(16, 40, 40), progress=False, device='cpu'))
    b = detect_block(v, model=net, run=RunOptions(device='cpu'))
    _same(a.cells, b)
    _same(a.cells, reference.cells)
    assert a.field is None and a.normalisation is None


def test_threshold_and_nan_input(reference, files, tmp_path):
    net = load_model(files["model"], device="cpu")
    hi = detect_volume(files['volume'], model=net, threshold=0.9, field=reference.field, normalisation=reference.normalisation, run=RunOptions(progress=False, device='cpu'))
    assert hi.n_cells < reference.n_cells and (hi.cells["score"] >= 0.9).all()
    bad = tifffile.imread(files["volume"]).astype(np.float32)
    bad[20, 50, 50] = np.nan
    with pytest.raises(ClarityInputError, match="NaN"):
        detect_volume(bad, model=net, run=RunOptions(progress=False))
    with pytest.raises(ClarityInputError, match="NaN"):
        detect_volume(bad, model=net, preprocessed=True, run=RunOptions(chunk=(8, 96, 96), progress=False))


def test_dense_mode_close_to_candidates_geometry(reference, files):
    net = load_model(files["model"], device="cpu")
    whole = detect_volume(files['volume'], model=net, field=reference.field, normalisation=reference.normalisation, config=DetectionConfig(mode='dense'), run=RunOptions(progress=False, device='cpu'))
    chunked = detect_volume(files['volume'], model=net, field=reference.field, normalisation=reference.normalisation, config=DetectionConfig(mode='dense'), run=RunOptions(chunk=(16, 48, 48), progress=False, device='cpu'))
    assert whole.n_cells > 0
    assert (whole.cells["score"] >= 0.5).all()
    # dense score maps of different tilings differ in the last float bits only
    d, _ = cKDTree(whole.points).query(chunked.points)
    assert abs(whole.n_cells - chunked.n_cells) <= max(1, whole.n_cells // 50)
    assert np.mean(d == 0) > 0.95


def test_log_baseline(brain):
    field = fit_bias_field(brain.volume, config=N4_FAST)
    v = correct_volume(brain.volume, field, estimate_normalisation(brain.volume, field))
    thr, table = fit_log_threshold([v], [brain.cells], n_thresholds=40)
    assert {"threshold", "precision", "recall", "f1"} <= set(table.columns)
    best = table["f1"].max()
    assert best > 0.5
    det = log_detect(v, threshold=thr)
    assert (det["score"] >= thr).all()
    whole = detect_volume(v, threshold=thr, preprocessed=True, config=DetectionConfig(mode='log'), run=RunOptions(chunk=(16, 40, 40), progress=False))
    _same(whole.cells, det)
    with pytest.raises(ValueError, match="threshold"):
        detect_volume(v, preprocessed=True, config=DetectionConfig(mode='log'), run=RunOptions(progress=False))


@pytest.mark.slow
def test_distributed_worker_processes_match_local(reference, files):
    """Worker processes: the model, field and reader really travel pickled (a few seconds)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        res = detect_volume(files['volume'], model=load_model(files['model'], device='cpu'), field=reference.field, normalisation=reference.normalisation, run=RunOptions(chunk=(16, 48, 48), scheduler=cluster.scheduler_address, progress=False, device='cpu'))
    _same(res.cells, reference.cells)


def test_balanced_chunk_keeps_every_worker_busy():
    from clarity.detect.chunks import balanced_chunk

    assert balanced_chunk((64, 512, 512), (64, 512, 512), 2, (8, 6, 6)) == (64, 256, 512)
    assert balanced_chunk((256, 1024, 1024), (64, 512, 512), 2, (8, 6, 6)) == (64, 512, 512)
    assert balanced_chunk((20, 30, 30), (64, 512, 512), 8, (8, 6, 6)) == (20, 15, 15)
    with pytest.raises(ValueError):
        balanced_chunk((10, 10, 10), (0, 5, 5), 1, (1, 1, 1))


# --------------------------------------------------------------------------------------------
# the detection threshold
# --------------------------------------------------------------------------------------------
def test_calibrated_detection_threshold(reference, files, tmp_path):
    """The calibration sweep is exact (each row equals a detection run at that threshold), picks
    the row of maximum F1, and a saved detection threshold becomes detection's default."""
    from clarity.detect.calibrate import calibrate_detection_threshold
    from clarity.evaluate import match_points

    vol = tifffile.imread(files["volume"])
    v = correct_volume(vol, reference.field, reference.normalisation)
    net = load_model(files["model"], device="cpu")
    cells = detect_block(v, model=net, threshold=0.05, run=RunOptions(device='cpu'))
    # labels: the detections scoring >= 0.7 plus far-away points that no detection can match,
    # so the best threshold is 0.7 exactly
    labels = cells.loc[cells.score >= 0.7, ["z", "y", "x"]].to_numpy(float)
    labels = np.vstack([labels, [[0.0, 0.0, 0.0]]])
    thr, table = calibrate_detection_threshold(net, [v], [labels], thresholds=[0.3, 0.5, 0.7, 0.9])
    assert thr == pytest.approx(0.7)
    assert table.f1.idxmax() == 2 and table.f1.iloc[2] > table.f1.iloc[[0, 1, 3]].max()
    for _, row in table.iterrows():
        det = detect_block(v, model=net, threshold=row.threshold, run=RunOptions(device='cpu'))
        m = match_points(det[["z", "y", "x"]].to_numpy(float), labels, radius=6.0)
        assert (row.n_detected, row.tp, row.fp, row.fn) == (len(det), m.tp, m.fp, m.fn)
    with pytest.raises(ValueError, match="label sets"):
        calibrate_detection_threshold(net, [v], [])

    # saved with the model, the calibrated threshold is what detection uses by default
    path = save_model(tmp_path / "cal.pt", net.model, normalisation=net.normalisation, threshold=0.2,
                      provenance={}, detection_threshold=thr)
    cal = load_model(path, device="cpu")
    assert cal.threshold == pytest.approx(0.2) and cal.detection_threshold == pytest.approx(0.7)
    assert cal.operating_threshold == pytest.approx(0.7)
    default = detect_block(v, model=cal, run=RunOptions(device='cpu'))
    _same(default, detect_block(v, model=net, threshold=0.7, run=RunOptions(device='cpu')))
    assert load_model(files["model"], device="cpu").detection_threshold is None
    # a count factor turns the detections at the calibrated threshold into an estimated count
    path = save_model(tmp_path / "cal2.pt", net.model, normalisation=net.normalisation, threshold=0.2,
                      provenance={}, detection_threshold=thr, count_factor=1.25)
    cal2 = load_model(path, device="cpu")
    assert cal2.count_factor == pytest.approx(1.25)
    res = detect_volume(v, model=cal2, preprocessed=True, run=RunOptions(progress=False, device='cpu'))
    assert res.estimated_count == pytest.approx(1.25 * res.n_cells)
    assert detect_volume(v, model=cal2, threshold=0.5, preprocessed=True, run=RunOptions(progress=False, device='cpu')).estimated_count is None
    assert detect_volume(v, model=cal, preprocessed=True, run=RunOptions(progress=False, device='cpu')).estimated_count is None


def test_refine_candidates_climbs_the_score(files):
    """Refinement never lowers a score, moves at most `steps` voxels, leaves candidates below the
    floor alone, and leaves a refined candidate in place only at a face-neighbour maximum."""
    from clarity.detect import refine_candidates, score_candidates

    rng = np.random.default_rng(0)
    block = ndimage.gaussian_filter(rng.standard_normal((24, 40, 40)).astype(np.float32), 1.5) * 3
    net = load_model(files["model"], device="cpu").model
    cent = np.argwhere(np.ones(block.shape, bool))[rng.choice(block.size, 60, replace=False)]
    sc = score_candidates(net, block, cent)
    floor = float(np.median(sc))
    c2, s2 = refine_candidates(net, block, cent, sc, steps=3, floor=floor)
    assert c2.shape == cent.shape and (s2 >= sc).all()
    moved = np.abs(c2 - cent).sum(axis=1)
    assert moved.max() <= 3 and moved.max() > 0
    low = sc < floor
    assert (moved[low] == 0).all() and np.array_equal(s2[low], sc[low])
    np.testing.assert_allclose(s2, score_candidates(net, block, c2), atol=1e-6)
    hi = np.array(block.shape) - 1
    assert (~low & (moved == 0)).any()
    for i in np.flatnonzero(~low & (moved == 0)):
        nb = np.clip(c2[i] + np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]]), 0, hi)
        assert score_candidates(net, block, nb).max() <= s2[i] + 1e-6
    c0, s0 = refine_candidates(net, block, cent, sc, steps=0)
    assert np.array_equal(c0, cent) and np.array_equal(s0, sc)
    with pytest.raises(ValueError, match="refine_steps"):
        detect_block(block, model=net, config=DetectionConfig(refine='climb', refine_steps=-1))
    with pytest.raises(ValueError, match="refine must be"):
        detect_block(block, model=net, config=DetectionConfig(refine='sideways'))


def test_snap_candidates_moves_to_the_brightest_point_when_it_scores_higher(files):
    from clarity.detect import score_candidates, snap_candidates
    from clarity.detect.config import SNAP_SIGMA
    from clarity.detect.score import gaussian_smoothed

    rng = np.random.default_rng(1)
    block = ndimage.gaussian_filter(rng.standard_normal((24, 40, 40)).astype(np.float32), 1.5) * 3
    net = load_model(files["model"], device="cpu").model
    cent = np.argwhere(np.ones(block.shape, bool))[rng.choice(block.size, 80, replace=False)]
    sc = score_candidates(net, block, cent)
    floor = float(np.median(sc))
    c2, s2 = snap_candidates(net, block, cent, sc, floor=floor, radius=(1, 2, 2))
    moved = np.any(c2 != cent, axis=1)
    assert moved.any() and (s2 >= sc).all() and (s2[moved] > sc[moved]).all()
    assert not moved[sc < floor].any()
    assert (np.abs(c2 - cent) <= [1, 2, 2]).all()
    np.testing.assert_allclose(s2, score_candidates(net, block, c2), atol=1e-6)
    g = gaussian_smoothed(block, SNAP_SIGMA)
    for i in np.flatnonzero(moved):  # a moved candidate sits on the brightest smoothed voxel of its box
        z, y, x = cent[i]
        box = g[max(z - 1, 0):z + 2, max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]
        assert g[tuple(c2[i])] == pytest.approx(box.max())


@pytest.mark.parametrize("refine", ["climb", "none"])
def test_chunked_equals_unchunked_every_refinement(reference, files, refine):
    vol = tifffile.imread(files["volume"])
    v = correct_volume(vol, reference.field, reference.normalisation)
    net = load_model(files["model"], device="cpu")
    whole = detect_block(v, model=net, config=DetectionConfig(refine=refine), run=RunOptions(device='cpu'))
    chunked = detect_volume(v, model=net, preprocessed=True, config=DetectionConfig(refine=refine), run=RunOptions(chunk=(12, 40, 40), scheduler='sync', progress=False, device='cpu'))
    assert chunked.chunks > 1
    _same(chunked.cells, whole)


def test_local_snr_hand_made():
    rng = np.random.default_rng(0)
    v = rng.normal(10.0, 1.0, (20, 40, 40)).astype(np.float32)
    v[9:12, 18:23, 18:23] += 5.0          # a bright 3x5x5 soma at (10, 20, 20)
    s = local_snr(v, [[10, 20, 20], [10, 5, 30], [0, 0, 0]])
    assert s[0] > 4.0                      # ~5 sd above its surround
    assert abs(s[1]) < 1.5 and abs(s[2]) < 1.5  # plain noise, and a corner (edge-replicated)
    # scale-free: an affine change of the intensities changes nothing
    np.testing.assert_allclose(local_snr(3.0 * v - 7.0, [[10, 20, 20]]), s[:1], rtol=1e-4)
    # flat surround: 0, not a division by zero
    assert local_snr(np.ones((9, 20, 20), np.float32), [[4, 10, 10]])[0] == 0
    assert local_snr(v, np.zeros((0, 3), int)).shape == (0,)
    with pytest.raises(ValueError, match="core <= inner < outer"):
        local_snr(v, [[10, 20, 20]], inner=(3, 8, 8))
    with pytest.raises(ValueError, match="block"):
        local_snr(v[0], [[1, 1, 1]])


def test_min_snr_gate(reference, files):
    vol = tifffile.imread(files["volume"])
    v = correct_volume(vol, reference.field, reference.normalisation)
    net = load_model(files["model"], device="cpu")
    every = detect_block(v, model=net, run=RunOptions(device='cpu'))
    assert "snr" in every and np.isfinite(every["snr"]).all()
    cut = float(np.median(every["snr"]))
    gated = detect_block(v, model=net, config=DetectionConfig(min_snr=cut), run=RunOptions(device='cpu'))
    # the gate runs after NMS: exactly the ungated cells at or above it
    _same(gated, every[every["snr"] >= cut].reset_index(drop=True))
    assert 0 < len(gated) < len(every)
    chunked = detect_volume(v, model=net, preprocessed=True, config=DetectionConfig(min_snr=cut), run=RunOptions(chunk=(12, 40, 40), scheduler='sync', progress=False, device='cpu'))
    _same(chunked.cells, gated)
    assert chunked.info["min_snr"] == cut and chunked.estimated_count is None
