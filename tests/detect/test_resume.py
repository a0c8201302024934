"""Resumable detection (clarity.detect.resume): a run killed after some chunks, started again,
computes only the chunks left and gives the cells of a run never stopped; records of another
model, other settings or a changed volume are never reused. Also ``clarity detect`` on OME-Zarr."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import tifffile

from clarity.__main__ import main
from clarity.detect import RunOptions, chunks, detect_volume
from clarity.io import write_ome_zarr
from clarity.model import load_model
from clarity.preprocess import N4Config
from clarity.synthetic import make_brain, untrained_model

SHAPE = (16, 64, 64)
CHUNK = (8, 32, 32)  # 8 chunks
N_CHUNKS = 8
RUN_CHUNK = chunks.run_chunk


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    vol = make_brain(3, shape=SHAPE, cell_density=6e-4).volume
    tifffile.imwrite(d / "tiny.tif", vol)
    write_ome_zarr(d / "tiny.ome.zarr", vol, voxel_um=(2, 1.6, 1.6), chunks=(8, 32, 32))
    return {"dir": d, "volume": d / "tiny.tif", "zarr": d / "tiny.ome.zarr", "data": vol,
            "model": untrained_model(d / "m0" / "model.pt", seed=0),
            "other_model": untrained_model(d / "m1" / "model.pt", seed=1)}


def _run(**kw) -> RunOptions:
    return RunOptions(reshape_chunk=False, chunk=CHUNK, scheduler="sync", progress=False, device="cpu", **kw)


def _detect(volume, model, **kw):
    return detect_volume(volume, model=load_model(model, device="cpu"), n4=N4Config(iterations=10, levels=2), **kw)


@pytest.fixture(scope="module")
def uninterrupted(setup):
    return _detect(setup["volume"], setup["model"], run=_run())


class Counter:
    """A stand-in for :func:`clarity.detect.chunks.run_chunk` that counts its calls and raises
    (a kill) on call ``kill_at``."""

    def __init__(self, kill_at: int | None = None):
        self.calls, self.kill_at = 0, kill_at

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.kill_at is not None and self.calls == self.kill_at:
            raise KeyboardInterrupt("killed")
        return RUN_CHUNK(*args, **kwargs)


def test_killed_run_resumes_with_identical_cells(setup, uninterrupted, tmp_path, monkeypatch, capsys):
    state = tmp_path / "state"
    k = 3
    assert uninterrupted.chunks == N_CHUNKS and uninterrupted.n_cells > 0
    killer = Counter(kill_at=k + 1)
    monkeypatch.setattr(chunks, "run_chunk", killer)
    with pytest.raises(KeyboardInterrupt):
        _detect(setup["volume"], setup["model"], run=_run(state_dir=state))
    recorded = sorted(state.glob("chunk_*.npz"))
    assert len(recorded) == k and (state / "field.npz").exists() and (state / "state.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in recorded}
    # a kill during a chunk's write leaves a temporary file beside it (clarity.io.atomic_write)
    partial = state / ".chunk_z8-16_y32-64_x32-64.npz.k1ll3d.tmp.npz"
    partial.write_bytes(b"PK\x03\x04 half a zip")
    counter = Counter()
    monkeypatch.setattr(chunks, "run_chunk", counter)
    res = _detect(setup["volume"], setup["model"], run=_run(state_dir=state))
    assert counter.calls == N_CHUNKS - k  # finished chunks are not computed again
    assert res.info["chunks_resumed"] == k
    assert "resuming: 3 finished chunk(s)" in capsys.readouterr().err
    assert not partial.exists()
    assert {p: p.stat().st_mtime_ns for p in recorded} == stamps
    assert len(list(state.glob("chunk_*.npz"))) == N_CHUNKS
    pd.testing.assert_frame_equal(res.cells, uninterrupted.cells)
    # all recorded: a third run computes nothing and still gives the same cells
    counter = Counter()
    monkeypatch.setattr(chunks, "run_chunk", counter)
    again = _detect(setup["volume"], setup["model"], run=_run(state_dir=state))
    assert counter.calls == 0
    pd.testing.assert_frame_equal(again.cells, uninterrupted.cells)


@pytest.mark.parametrize("change", ["model", "settings", "volume"])
def test_stale_records_are_never_reused(setup, uninterrupted, tmp_path, monkeypatch, capsys, change):
    vol = tmp_path / "tiny.tif"
    tifffile.imwrite(vol, setup["data"])
    state = tmp_path / "state"
    _detect(vol, setup["model"], run=_run(state_dir=state))
    capsys.readouterr()
    model, kw = setup["model"], {}
    if change == "model":
        model = setup["other_model"]
    elif change == "settings":
        kw = {"threshold": 0.3}
    else:
        data = setup["data"].copy()
        data[:, :8, :8] = 0
        tifffile.imwrite(vol, data)
        os.utime(vol, ns=(1, 1))  # another modification time whatever the file system's resolution
    counter = Counter()
    monkeypatch.setattr(chunks, "run_chunk", counter)
    res = _detect(vol, model, run=_run(state_dir=state), **kw)
    err = capsys.readouterr().err
    assert f"are of another detection ({change} changed); starting fresh" in err
    assert counter.calls == N_CHUNKS and res.info["chunks_resumed"] == 0
    fresh = _detect(vol, model, run=_run(), **kw)
    pd.testing.assert_frame_equal(res.cells, fresh.cells)


def test_cli_detect_ome_zarr_and_resume(setup, uninterrupted, tmp_path, capsys):
    out = tmp_path / "out"
    opts = ["--model", str(setup["model"]), "--chunk", *map(str, CHUNK), "--scheduler", "sync", "--device", "cpu"]
    argv = ["detect", str(setup["zarr"]), "--out", str(out), *opts]
    assert main(argv + ["--progress"]) == 0
    cap = capsys.readouterr()
    assert "tiny: " in cap.out and "vox/s" in cap.err  # tqdm over voxels: Mvox/s and time left
    first = pd.read_csv(out / "tiny.csv")
    assert len(list((out / ".clarity-state" / "tiny").glob("chunk_*.npz"))) == N_CHUNKS
    # the same command again: every chunk read back, the same cells
    assert main(argv + ["--no-progress"]) == 0
    assert "resuming: 8 finished chunk(s)" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(out / "tiny.csv"), first)
    # the same cells as the TIFF of the same voxels (N4 there with its default settings)
    tif_out = tmp_path / "tif"
    assert main(["detect", str(setup["volume"]), "--out", str(tif_out), *opts, "--no-progress"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tif_out / "tiny.csv"), first)
    # a voxel size given that contradicts the metadata: used, with a one-line warning
    assert main(argv + ["--no-progress", "--voxel-size", "3", "1.6", "1.6"]) == 0
    err = capsys.readouterr().err
    assert ("clarity: warning: " in err and "(3 x 1.6 x 1.6 um) differs from its OME-Zarr metadata "
            "(2 x 1.6 x 1.6 um); using the voxel size given" in err)
    # bad input: one line, exit code 2
    assert main(argv + ["--level", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"clarity: error: {setup['zarr']}: level 1 missing; the image has only level 0"
