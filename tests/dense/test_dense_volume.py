"""clarity.dense.volume: a U-Net over a whole volume, chunk by chunk, and ``clarity detect`` with it."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from clarity.dense import (DenseTrainConfig, DenseVolume, TrainedUNet, ellipsoid_target, peak_cells,
                           probability_map, save_unet, train_unet)
from clarity.dense.volume import detect_volume_unet, unet_halo
from clarity.detect import nms
from clarity.io import ClarityInputError
from clarity.matching import match_points
from clarity.scale import CellScale

VOX = (1.5, 1.5, 1.5)
CELL = (6.0, 6.0, 6.0)


def _volume(shape=(22, 70, 66), seed=0, n=25):
    """Gaussian cells on noise (normalised intensities) and their centres."""
    rng = np.random.default_rng(seed)
    v = rng.normal(0, 0.2, shape).astype(np.float32)
    zz, yy, xx = np.indices(shape)
    c = np.column_stack([rng.integers(2, s - 2, n) for s in shape])
    for p in c:
        v += 2 * np.exp(-(((zz - p[0]) / 1.5) ** 2 + ((yy - p[1]) / 2.0) ** 2 + ((xx - p[2]) / 2.0) ** 2) / 2)
    return v, c


@pytest.fixture(scope="module")
def trained():
    """A small U-Net trained for a few seconds on two volumes of cells."""
    vols = []
    for seed in (10, 11):
        v, c = _volume((16, 48, 48), seed=seed, n=12)
        vols.append(DenseVolume(f"v{seed}", v, ellipsoid_target(v.shape, c, voxel_um=VOX, cell_um=CELL), c))
    cfg = DenseTrainConfig(steps=60, batch_size=4, crop=(8, 24, 24), width=4, lr=1e-2, intensity=False,
                           num_threads=1)
    res = train_unet(vols, config=cfg, voxel_um=VOX, progress=False)
    return TrainedUNet(model=res.model.eval(), threshold=0.5, voxel_um=VOX, cell_um=CELL)


def _same(a, b):
    np.testing.assert_array_equal(a[["z", "y", "x"]].to_numpy(), b[["z", "y", "x"]].to_numpy())
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), atol=1e-5)


def test_chunks_give_the_whole_volume_cells(trained):
    unet, (v, truth) = trained, _volume()
    ref = peak_cells(probability_map(unet.model, v), voxel_um=VOX, cell_um=CELL)
    thr = float(ref.score.median())  # a threshold that keeps half the peaks
    whole = detect_volume_unet(v, unet, threshold=thr, preprocessed=True, chunk=v.shape, progress=False)
    chunked = detect_volume_unet(v, unet, threshold=thr, preprocessed=True, chunk=(6, 20, 24), progress=False)
    assert whole.chunks == 1 and chunked.chunks > 8 and whole.n_cells > 10
    _same(chunked.cells, whole.cells)
    # the cells are the peaks of the whole volume's map, merged within the peaks' radius
    ref = ref[ref.score >= thr].sort_values(["z", "y", "x"]).reset_index(drop=True)
    _same(whole.cells, ref)
    assert {"snr"} <= set(whole.cells.columns) and np.isfinite(whole.cells.snr).all()
    assert all(h >= c for h, c in zip(unet_halo(unet), unet.model.config.context()))


def test_another_voxel_size_is_resampled_chunk_by_chunk(trained):
    unet, (v, _) = trained, _volume((14, 60, 60), seed=1)
    thr = float(peak_cells(probability_map(unet.model, v), voxel_um=VOX, cell_um=CELL).score.median())
    kw = dict(threshold=thr, preprocessed=True, voxel_um=(2.25, 1.5, 1.5), progress=False)
    whole = detect_volume_unet(v, unet, chunk=(64, 128, 128), **kw)
    chunked = detect_volume_unet(v, unet, chunk=(4, 8, 8), **kw)  # blocks of at most (4, 8, 8) + halo
    assert whole.info["scale_factors"] == [1.5, 1.0, 1.0] and whole.info["model_shape"][0] == 21
    assert chunked.chunks > whole.chunks and whole.n_cells > 0
    _same(chunked.cells, whole.cells)
    assert chunked.cells.z.max() < v.shape[0]  # reported in the volume's voxels


def test_raw_volume_gate_and_bad_input(trained):
    unet, (v, truth) = trained, _volume((16, 48, 48), seed=2, n=12)
    raw = (100 + 100 * v).clip(0).astype(np.uint16)  # normalised: about v again
    res = detect_volume_unet(raw, unet, threshold=0.05, progress=False)  # N4 and normalisation
    m = match_points(res.cells[res.cells.score >= 0.5][["z", "y", "x"]].to_numpy(), truth, radius=3.0)
    assert m.f1 >= 0.8, (m.tp, m.fp, m.fn)  # cells it never saw, from raw intensities
    assert res.field is not None and res.n_cells > 0
    gate = float(np.median(res.cells.snr))
    gated = detect_volume_unet(raw, unet, threshold=0.05, min_snr=gate, progress=False)
    assert 0 < gated.n_cells < res.n_cells and (gated.cells.snr >= gate).all()
    bad = raw.astype(np.float32)
    bad[3, 4, 5] = np.nan
    with pytest.raises(ClarityInputError, match="NaN"):
        detect_volume_unet(bad, unet, progress=False)
    # NMS over the chunks: no two cells closer than the peaks' radius
    pts = res.cells[["z", "y", "x"]].to_numpy(float)
    keep = nms(pts, res.cells.score.to_numpy(float), radius=4.0, scale=CellScale(voxel_um=VOX, cell_um=CELL).factors)
    assert len(keep) == len(pts)


def test_clarity_detect_takes_a_unet_file(trained, tmp_path, capsys):
    from clarity.__main__ import main

    path = save_unet(tmp_path / "fold1" / "unet" / "model.pt", trained)
    vol = tmp_path / "brain.tif"
    tifffile.imwrite(vol, (100 + 100 * _volume((16, 48, 48), seed=4, n=12)[0]).clip(0).astype(np.uint16))
    out = tmp_path / "out"
    assert main(["detect", str(vol), "--model", str(path), "--out", str(out), "--voxel-size", *map(str, VOX),
                 "--xml", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "brain:" in text and "U-Net" in text
    rows = (out / "brain.csv").read_text().splitlines()
    assert rows[0] == "z,y,x,score,snr" and len(rows) > 1 and (out / "brain.xml").exists()
    # every chunk recorded: the same command again reads them back, with the same cells
    assert (out / ".clarity-state" / "brain" / "state.json").exists()
    assert main(["detect", str(vol), "--model", str(path), "--out", str(out), "--voxel-size", *map(str, VOX),
                 "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().err and (out / "brain.csv").read_text().splitlines() == rows
    # options of the CNN's detection are refused, not ignored
    assert main(["detect", str(vol), "--model", str(path), "--out", str(out), "--refine", "none"]) == 2
    assert "--refine applies to the patch CNN" in capsys.readouterr().err


def test_a_killed_unet_run_resumes_with_the_same_cells(trained, tmp_path, monkeypatch, capsys):
    import clarity.dense.volume as dv

    unet, (v, _) = trained, _volume((16, 48, 48), seed=5, n=12)
    vol = tmp_path / "brain.tif"
    tifffile.imwrite(vol, (100 + 100 * v).clip(0).astype(np.uint16))
    kw = dict(threshold=0.3, chunk=(6, 24, 24), progress=False)
    ref = detect_volume_unet(vol, unet, **kw)
    assert ref.chunks >= 6 and ref.n_cells > 0
    real, calls, kill = dv._run_core, [], [4]

    def killed_after_three(*a, **k):
        calls.append(1)
        if len(calls) in kill:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    state = tmp_path / "state"
    monkeypatch.setattr(dv, "_run_core", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        detect_volume_unet(vol, unet, state_dir=state, **kw)
    assert len(list(state.glob("chunk_*.npz"))) == 3 and (state / "field.npz").exists()
    calls.clear()
    kill.clear()
    again = detect_volume_unet(vol, unet, state_dir=state, **kw)
    assert again.info["chunks_resumed"] == 3 and len(calls) == ref.chunks - 3  # only the rest computed
    assert "resuming: 3 finished chunk(s)" in capsys.readouterr().err
    _same(again.cells, ref.cells)
    np.testing.assert_allclose(again.cells.snr.to_numpy(), ref.cells.snr.to_numpy(), atol=1e-5)
    # another threshold is another detection: its records are cleared, never used
    calls.clear()
    other = detect_volume_unet(vol, unet, state_dir=state, **{**kw, "threshold": float(ref.cells.score.median())})
    assert other.info["chunks_resumed"] == 0 and len(calls) == other.chunks
    assert "of another detection (settings changed)" in capsys.readouterr().err
    assert set(other.cells.score) <= set(ref.cells.score) and other.n_cells < ref.n_cells
    with pytest.raises(ValueError, match="read from a file"):
        detect_volume_unet(v, unet, preprocessed=True, state_dir=tmp_path / "s2", progress=False)
