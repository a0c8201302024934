"""The dense U-Net: pooling plan, shapes, targets, seeded training that learns, tiling, peaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clarity.dense import (DenseTrainConfig, DenseVolume, UNet3D, UNetConfig, ellipsoid_target, peak_cells,
                           plan_pools, probability_map, train_unet)
from clarity.matching import match_points


def test_plan_pools_follow_the_grid():
    assert plan_pools((6.0, 1.62, 1.62), 3) == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert plan_pools((2.0, 1.6, 1.6), 2) == [(2, 2, 2), (2, 2, 2)]
    assert plan_pools((10.0, 1.0, 1.0), 2) == [(1, 2, 2), (1, 2, 2)]
    assert UNetConfig(pools=plan_pools((6.0, 1.62, 1.62), 2)).multiple() == (2, 4, 4)
    with pytest.raises(ValueError, match="3 positive"):
        plan_pools((1.0, 0.0, 1.0), 2)
    with pytest.raises(ValueError, match="1 or 2"):
        UNetConfig(pools=[(3, 2, 2)])


def test_unet_maps_a_volume_to_logits_of_its_shape():
    net = UNet3D(UNetConfig(pools=[(1, 2, 2), (2, 2, 2)], width=4)).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 6, 12, 16))
    assert out.shape == (2, 1, 6, 12, 16)
    with pytest.raises(ValueError, match="multiples of"):
        net(torch.zeros(1, 1, 5, 12, 16))


def test_ellipsoid_target_has_the_cell_size():
    t = ellipsoid_target((20, 40, 40), [[10, 20, 20], [-5, 0, 0]], voxel_um=(2.0, 1.0, 1.0), cell_um=(8.0, 6.0, 6.0))
    z, y, x = np.nonzero(t)
    assert t.dtype == np.uint8 and t[10, 20, 20] == 1
    assert (z.max() - z.min() + 1, y.max() - y.min() + 1) == (5, 7)  # 4 um / 2 um either side in z, 3 um in y
    assert t.sum() == len(z)  # the point outside the volume adds nothing


def _blobs(seed, shape=(16, 48, 48), n=10):
    """Gaussian cells on noise, their centres and a mask of them."""
    rng = np.random.default_rng(seed)
    c = np.column_stack([rng.integers(3, s - 3, n) for s in shape]).astype(float)
    zz, yy, xx = np.indices(shape)
    img = rng.normal(0, 0.1, shape).astype(np.float32)
    for p in c:
        img += np.exp(-(((zz - p[0]) / 1.5) ** 2 + ((yy - p[1]) / 2.0) ** 2 + ((xx - p[2]) / 2.0) ** 2) / 2)
    return DenseVolume(f"v{seed}", img.astype(np.float32), ellipsoid_target(shape, c, cell_um=(6, 6, 6),
                                                                             voxel_um=(1.5, 1.5, 1.5)), c)


def test_training_is_seeded_and_learns_cells_it_never_saw():
    cfg = DenseTrainConfig(steps=60, batch_size=4, crop=(8, 24, 24), width=4, lr=1e-2, intensity=False,
                           num_threads=1)
    vols = [_blobs(1), _blobs(2)]
    a = train_unet(vols, config=cfg, voxel_um=(1.5, 1.5, 1.5), progress=False)
    b = train_unet(vols, config=cfg, voxel_um=(1.5, 1.5, 1.5), progress=False)
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(pa, pb)
    assert a.history[-1]["loss"] < a.history[0]["loss"]
    test = _blobs(3)
    prob = probability_map(a.model, test.image)
    cells = peak_cells(prob, voxel_um=(1.5, 1.5, 1.5), cell_um=(6, 6, 6))
    kept = cells[cells.score >= 0.5]
    m = match_points(kept[["z", "y", "x"]].to_numpy(), test.centres, radius=3.0)
    assert m.f1 >= 0.8, (m.tp, m.fp, m.fn)


def test_training_refuses_volumes_without_labels():
    v = _blobs(1)
    v.target[:] = 0
    with pytest.raises(ValueError, match="no labelled voxel"):
        train_unet([v], config=DenseTrainConfig(steps=1), progress=False)


@pytest.mark.parametrize("pools", [[(1, 2, 2), (2, 2, 2)], [(2, 2, 2), (2, 2, 2)]])
def test_context_covers_the_receptive_field(pools):
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(pools=pools, width=4)).eval()
    x = torch.randn(1, 1, 48, 96, 96).requires_grad_(True)
    net(x)[0, 0, 24, 48, 48].backward()
    reach = (x.grad[0, 0].abs() > 0).nonzero()
    seen = [int(max(c - reach[:, a].min(), reach[:, a].max() - c)) for a, c in enumerate((24, 48, 48))]
    assert all(s <= c for s, c in zip(seen, net.config.context())), (seen, net.config.context())
    assert all(c - s <= 2 for s, c in zip(seen, net.config.context()))  # and not much more


@pytest.mark.parametrize("shape", [(12, 40, 44), (13, 37, 45)])
def test_probability_map_does_not_depend_on_the_tiles(shape):
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(pools=[(1, 2, 2), (2, 2, 2)], width=4)).eval()
    vol = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    whole = probability_map(net, vol, tile=shape, halo=(0, 0, 0))
    tiled = probability_map(net, vol, tile=(4, 8, 12))  # the default halo: the network's context
    assert whole.shape == vol.shape
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_peaks_merge_within_a_cell_and_keep_the_floor():
    prob = np.zeros((10, 30, 30), np.float32)
    zz, yy, xx = np.indices(prob.shape)
    for (z, y, x), a in (((5, 8, 8), 0.9), ((5, 9, 10), 0.8), ((5, 22, 22), 0.6), ((5, 22, 5), 0.01)):
        prob = np.maximum(prob, a * np.exp(-((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) / 4.0))
    cells = peak_cells(prob, smooth=0.0)
    assert len(cells) == 2  # the bumps 2 voxels apart merge; the one below the floor is dropped
    assert list(cells.score.round(2)) == [0.9, 0.6]
    assert list(cells[["z", "y", "x"]].iloc[0]) == [5, 8, 8]
