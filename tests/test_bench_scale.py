"""The mirroring writer of bench/bench_scale.py: a mirrored zarr equals numpy's symmetric padding."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_scale():
    """bench/bench_scale.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "bench_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference(base: np.ndarray, tiles) -> np.ndarray:
    """``base`` tiled ``tiles`` times per axis, odd tiles flipped: symmetric padding."""
    return np.pad(base, [(0, n * (t - 1)) for n, t in zip(base.shape, tiles)], mode="symmetric")


def test_reference_flips_odd_tiles():
    base = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    ref = reference(base, (2, 1, 3))
    assert np.array_equal(ref[2:4, :, 0:4], base[::-1])
    assert np.array_equal(ref[0:2, :, 4:8], base[:, :, ::-1])
    assert np.array_equal(ref[2:4, :, 8:12], base[::-1])


@pytest.mark.parametrize("base_shape, tiles, chunks", [
    ((6, 10, 12), (2, 2, 2), (4, 4, 4)),      # chunks straddle the tiles' edges
    ((4, 8, 8), (4, 2, 4), (4, 8, 8)),        # the bench's 4 x 2 x 4, chunks = the base
    ((5, 7, 9), (1, 3, 2), (2, 3, 5)),        # odd sizes, partial chunks everywhere
    ((4, 6, 6), (1, 1, 1), (2, 2, 2)),        # the base itself
])
def test_mirrored_zarr_equals_symmetric_padding(bench_scale, tmp_path, base_shape, tiles, chunks):
    import zarr

    rng = np.random.default_rng(0)
    base = rng.integers(0, 60000, size=base_shape, dtype=np.uint16)
    shape = [n * t for n, t in zip(base_shape, tiles)]
    src = bench_scale.create_ome_zarr(tmp_path / "base.ome.zarr", shape=base_shape, dtype=np.uint16,
                                      chunks=chunks, voxel_um=(2.0, 1.6, 1.6))
    src[...] = base
    out = bench_scale.create_ome_zarr(tmp_path / "m.ome.zarr", shape=shape, dtype=np.uint16,
                                      chunks=chunks, voxel_um=(2.0, 1.6, 1.6))
    bench_scale.write_mirrored(src, out)
    again = zarr.open(store=str(tmp_path / "m.ome.zarr" / "0"), mode="r")
    assert np.array_equal(np.asarray(again[...]), reference(base, tiles))


def test_mirrored_blocks_are_whole_chunks(bench_scale):
    blocks = bench_scale.mirror_blocks((512, 2048, 4096), (64, 256, 256), (128, 1024, 1024))
    assert len(blocks) == 8 * 2 * 4
    assert all((b[0].stop - b[0].start, b[1].stop - b[1].start, b[2].stop - b[2].start) == (64, 1024, 1024)
               for b in blocks)


def test_store_is_an_ngff_image_clarity_reads(bench_scale, tmp_path):
    from clarity.io.omezarr import open_ome_zarr

    arr = bench_scale.create_ome_zarr(tmp_path / "v.ome.zarr", shape=(4, 8, 8), dtype=np.uint16,
                                      chunks=(64, 256, 256), voxel_um=(2.0, 1.6, 1.6))
    arr[...] = 7
    level = open_ome_zarr(tmp_path / "v.ome.zarr")
    assert level.shape == (4, 8, 8) and level.voxel_um == (2.0, 1.6, 1.6)
    attrs = json.loads((tmp_path / "v.ome.zarr" / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"
    assert json.loads((tmp_path / "v.ome.zarr" / "0" / ".zarray").read_text())["compressor"]["id"] == "blosc"


def test_parse_sizes(bench_scale):
    assert bench_scale.parse_sizes("base,2x2x2, 4x2x4,base") == [
        ("base", (1, 1, 1)), ("2x2x2", (2, 2, 2)), ("4x2x4", (4, 2, 4))]
    assert bench_scale.parse_sizes("1x1x1,3x1x2") == [("base", (1, 1, 1)), ("3x1x2", (3, 1, 2))]
    with pytest.raises(Exception):
        bench_scale.parse_sizes("huge")


def test_time_ratio_uses_both_runs_of_the_bracketing_size(bench_scale):
    def row(vox, detect_s, seconds, peak, **kw):
        return {"shape": [1, 1, vox], "voxels": vox, "seconds": seconds, "detect_s": detect_s, "peak_rss": peak,
                "cells": 1, "cpu_s": 1.0, "returncode": 0, **kw}

    rows = {"base": row(1, 1.0, 1.0, 100), "2x2x2": row(8, 8.0, 9.0, 110),
            "4x2x4": row(32, 40.0, 41.0, 120)}
    _, rec = bench_scale.summary(rows, None)
    value = {r["name"]: r["value"] for r in rec if r["kind"] == "ratio"}
    assert value["detect_s_per_voxel 4x2x4/2x2x2"] == pytest.approx((40 / 32) / (8 / 8), abs=1e-4)
    assert value["peak_rss 4x2x4/base"] == pytest.approx(1.2, abs=1e-4)
    rows["2x2x2"].update(detect_s_runs=[8.0, 12.0], seconds_runs=[9.0, 13.0])  # slower the second time
    lines, rec = bench_scale.summary(rows, None)
    value = {r["name"]: r["value"] for r in rec if r["kind"] == "ratio"}
    assert value["detect_s_per_voxel 4x2x4/2x2x2"] == pytest.approx((40 / 32) / (10 / 8), abs=1e-4)
    assert value["wall_s_per_voxel 4x2x4/2x2x2"] == pytest.approx((41 / 32) / (11 / 8), abs=1e-4)
    assert any("before and after" in line for line in lines)
