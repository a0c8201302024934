"""A small 3D U-Net that maps a volume to a per-voxel probability of "inside a labelled cell".

Arrays are (z, y, x), voxels. The pooling of each level follows the grid, as nnU-Net plans it: an
axis is halved at a level only while its voxel (after the pooling above) is at most twice the
finest axis's, so on light-sheet voxels of 6 x 1.62 x 1.62 um the first level pools y and x only
and the second all three; on the synthetic grid (2 x 1.6 x 1.6 um) every level pools all three.

Architecture (``levels = 2``, ``width = 8``)::

    input (B, 1, z, y, x)
    [conv 3^3, BatchNorm, ReLU] x 2, 1 -> 8        -- skip 0
    max-pool (pool of level 1)
    [conv 3^3, BatchNorm, ReLU] x 2, 8 -> 16       -- skip 1
    max-pool (pool of level 2)
    [conv 3^3, BatchNorm, ReLU] x 2, 16 -> 32      (bottleneck)
    transposed conv (pool 2), 32 -> 16, concat skip 1, [conv, BN, ReLU] x 2 -> 16
    transposed conv (pool 1), 16 -> 8, concat skip 0, [conv, BN, ReLU] x 2 -> 8
    conv 1^3, 8 -> 1                               -> logit per voxel

Every spatial size must be a multiple of the product of the pools along its axis
(:meth:`UNetConfig.multiple`); :func:`clarity.dense.predict.probability_map` pads for it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["UNetConfig", "UNet3D", "plan_pools"]


def plan_pools(voxel_um: Sequence[float] | None, levels: int) -> list[tuple[int, int, int]]:
    """The (z, y, x) pooling factor (1 or 2) of each of ``levels`` levels on a grid of
    ``voxel_um`` (z, y, x um; None: isotropic).

    An axis is pooled at a level when its current voxel is at most twice the finest current
    voxel, then its voxel doubles.

    >>> plan_pools((6.0, 1.62, 1.62), 2)
    [(1, 2, 2), (2, 2, 2)]
    >>> plan_pools(None, 2)
    [(2, 2, 2), (2, 2, 2)]
    """
    if int(levels) < 0:
        raise ValueError(f"levels must be >= 0, not {levels}")
    size = [1.0, 1.0, 1.0] if voxel_um is None else [float(v) for v in voxel_um]
    if len(size) != 3 or min(size) <= 0:
        raise ValueError(f"voxel_um must be 3 positive numbers (z, y, x um), not {voxel_um}")
    pools = []
    for _ in range(int(levels)):
        finest = min(size)
        pool = tuple(2 if s <= 2 * finest + 1e-9 else 1 for s in size)
        size = [s * p for s, p in zip(size, pool)]
        pools.append(pool)
    return pools


@dataclass
class UNetConfig:
    """Shape of a :class:`UNet3D`.

    Attributes
    ----------
    pools : list of (z, y, x) ints
        Pooling factor per level (:func:`plan_pools`); its length is the number of levels.
    width : int
        Channels of the first level; each level below doubles them.

    BatchNorm, not GroupNorm: in evaluation it uses the statistics of training, so a voxel's
    probability does not depend on how the volume is cut into tiles (GroupNorm would normalise
    each tile by its own content).
    """

    pools: list = field(default_factory=lambda: [(2, 2, 2), (2, 2, 2)])
    width: int = 8

    def __post_init__(self):
        self.pools = [tuple(int(v) for v in p) for p in self.pools]
        for p in self.pools:
            if len(p) != 3 or any(v not in (1, 2) for v in p):
                raise ValueError(f"each pool must be 3 factors of 1 or 2 (z, y, x), not {p}")
        if int(self.width) < 1:
            raise ValueError(f"width must be >= 1, not {self.width}")

    def multiple(self) -> tuple[int, int, int]:
        """Every input size must be a multiple of this (z, y, x)."""
        m = [1, 1, 1]
        for p in self.pools:
            m = [a * b for a, b in zip(m, p)]
        return tuple(m)

    def context(self) -> tuple[int, int, int]:
        """Voxels (z, y, x) on each side that reach one output voxel (half the receptive field):
        two 3^3 convolutions per block at the block's scale on the way down and up, plus what
        each pooling window spans. A tile run with this much halo gives its core exactly as the
        whole volume would."""
        out = []
        for axis in range(3):
            f, half = 1, 2  # the first block
            for p in self.pools:
                half += (p[axis] - 1) * f  # the pooling window
                half += 2 * f              # the up block at this level (same scale as its down block)
                f *= p[axis]
                half += 2 * f              # the down block below
            out.append(int(half))
        return tuple(out)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pools"] = [list(p) for p in self.pools]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return cls(**{k: v for k, v in d.items() if k in ("pools", "width")})


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
                         nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


class UNet3D(nn.Module):
    """The U-Net of the module docstring; ``forward`` maps (B, 1, z, y, x) to logits (B, 1, z, y, x)."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config or UNetConfig()
        w = int(self.config.width)
        chans = [w * 2 ** i for i in range(len(self.config.pools) + 1)]
        self.down = nn.ModuleList([_block(1, chans[0])] +
                                  [_block(chans[i], chans[i + 1]) for i in range(len(self.config.pools))])
        self.pool = nn.ModuleList([nn.MaxPool3d(p, stride=p) for p in self.config.pools])
        self.upconv = nn.ModuleList([nn.ConvTranspose3d(chans[i + 1], chans[i], p, stride=p)
                                     for i, p in enumerate(self.config.pools)])
        self.up = nn.ModuleList([_block(2 * chans[i], chans[i]) for i in range(len(self.config.pools))])
        self.head = nn.Conv3d(chans[0], 1, 1)
        nn.init.constant_(self.head.bias, -4.0)  # start near the background's share: calm first steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.config.multiple()
        if x.ndim != 5 or any(s % k for s, k in zip(x.shape[2:], m)):
            raise ValueError(f"expected (B, 1, z, y, x) with z, y, x multiples of {m}, got {tuple(x.shape)}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.pool):
                skips.append(x)
                x = self.pool[i](x)
        for i in reversed(range(len(self.pool))):
            x = self.up[i](torch.cat([self.upconv[i](x), skips[i]], dim=1))
        return self.head(x)
