"""Training a :class:`~clarity.dense.unet.UNet3D` on labelled volumes: human masks where the data
root has them, else cell-sized ellipsoids at the labelled centres.

Arrays are (z, y, x), voxels. Training draws random crops (a share of them centred on a
labelled cell, the cells being sparse), flips them along every axis, optionally varies their
intensity as :func:`clarity.augment.intensity_augment` does for the patch CNN, and minimises the
per-voxel binary cross-entropy. Every random choice comes from ``seed``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..augment import intensity_augment
from ..model import pick_device
from ..scale import CellScale
from ..train import torch_settings, onecycle_lr
from .unet import UNet3D, UNetConfig, plan_pools

__all__ = ["DenseTrainConfig", "DenseVolume", "DenseTrainResult", "ellipsoid_target", "train_unet"]


@dataclass
class DenseTrainConfig:
    """Options of :func:`train_unet`.

    Attributes
    ----------
    steps : int
        Optimiser steps (one-cycle learning rate, :func:`clarity.train.onecycle_lr`).
    batch_size : int
        Crops per step.
    crop : (z, y, x) ints
        Crop size in voxels (shrunk to the smallest volume and to the network's multiple).
    lr : float
        Peak AdamW learning rate.
    cell_fraction : float
        Share of crops centred (within a quarter crop) on a labelled cell.
    pos_weight : float
        Weight of the cell voxels in the cross-entropy.
    intensity : bool
        Random contrast, offset and noise per crop.
    levels, width : int
        The network (:class:`~clarity.dense.unet.UNetConfig`; pools planned from the voxel size).
    seed : int
        Seeds the crops and weights, and (with ``annotation_fraction``) which labels are kept.
    num_threads : int or None
        torch threads while training (None: torch's default).
    annotation_fraction : float
        < 1: train on a seeded fraction of each volume's labels, the same ones the patch CNN
        keeps (:func:`clarity.sampling.keep_fraction` with ``seed``): the report's
        ``ANNOTATION_FRACTION`` (the seed's partial annotations, simulated). A human mask keeps
        only its cells that hold a kept label (:func:`clarity.dense.heldout.dense_volume`).
    """

    steps: int = 300
    batch_size: int = 4
    crop: tuple = (16, 64, 64)
    lr: float = 3e-3
    cell_fraction: float = 0.7
    pos_weight: float = 3.0
    intensity: bool = True
    levels: int = 2
    width: int = 8
    seed: int = 0
    num_threads: int | None = None
    annotation_fraction: float = 1.0

    def __post_init__(self):
        self.crop = tuple(int(c) for c in self.crop)
        if len(self.crop) != 3 or min(self.crop) < 1:
            raise ValueError(f"crop must be 3 positive sizes (z, y, x), not {self.crop}")
        if int(self.steps) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"steps and batch_size must be >= 1, not {self.steps}, {self.batch_size}")
        if not 0 <= float(self.cell_fraction) <= 1:
            raise ValueError(f"cell_fraction must be in [0, 1], not {self.cell_fraction}")
        if not 0 < float(self.annotation_fraction) <= 1:
            raise ValueError(f"annotation_fraction must lie in (0, 1], not {self.annotation_fraction}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["crop"] = list(self.crop)
        return d


@dataclass
class DenseVolume:
    """One training volume: normalised intensities, a binary target of the same shape and the
    labelled centres (N, 3) voxels that crops are centred on."""

    name: str
    image: np.ndarray
    target: np.ndarray
    centres: np.ndarray

    def __post_init__(self):
        if self.image.ndim != 3 or self.image.shape != self.target.shape:
            raise ValueError(f"{self.name}: image {self.image.shape} and target {self.target.shape} must be "
                             f"3D (z, y, x) of the same shape")
        self.centres = np.asarray(self.centres, float).reshape(-1, 3)


@dataclass
class DenseTrainResult:
    model: UNet3D
    config: DenseTrainConfig
    history: list = field(default_factory=list)   # one dict per logged step: step, loss, lr
    seconds: float = 0.0


def ellipsoid_target(shape: Sequence[int], centres, *, voxel_um=None, cell_um=None) -> np.ndarray:
    """A uint8 mask (z, y, x) with an ellipsoid of the cell size (``cell_um``, um; None: the
    reference cells) at each centre (N, 3 voxels): the target where a volume has no human mask."""
    scale = CellScale(voxel_um=voxel_um, cell_um=cell_um)
    semi = np.maximum(np.asarray(scale.cell_um) / np.asarray(scale.voxel_um) / 2.0, 0.5)
    r = np.ceil(semi).astype(int)
    grid = np.mgrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    ball = (((grid / semi[:, None, None, None]) ** 2).sum(0) <= 1.0).astype(np.uint8)
    out = np.zeros(tuple(int(s) for s in shape), np.uint8)
    seeds = np.zeros_like(out)
    c = np.rint(np.asarray(centres, float).reshape(-1, 3)).astype(int)
    ok = np.all((c >= 0) & (c < np.asarray(out.shape)), axis=1)
    seeds[tuple(c[ok].T)] = 1
    if ok.any():
        out = ndi.binary_dilation(seeds, structure=ball).astype(np.uint8)
    return out


def _crop_size(volumes: Sequence[DenseVolume], crop, multiple) -> tuple[int, int, int]:
    smallest = np.min([v.image.shape for v in volumes], axis=0)
    size = tuple(int(min(c, s) // m * m) for c, s, m in zip(crop, smallest, multiple))
    if min(size) < 1:
        raise ValueError(f"volumes of shape {tuple(smallest)} are smaller than the network's multiple {multiple}")
    return size


def _draw(volumes, size, n, rng, cell_fraction):
    """n crops (image, target) as arrays (n, 1, z, y, x)."""
    imgs, tgts = [], []
    for _ in range(n):
        v = volumes[int(rng.integers(len(volumes)))]
        shape = np.asarray(v.image.shape)
        hi = shape - np.asarray(size)
        if len(v.centres) and rng.random() < cell_fraction:
            c = v.centres[int(rng.integers(len(v.centres)))]
            jitter = rng.uniform(-0.25, 0.25, 3) * np.asarray(size)
            corner = np.rint(c + jitter - np.asarray(size) / 2).astype(int)
        else:
            corner = np.array([rng.integers(h + 1) for h in hi])
        corner = np.clip(corner, 0, hi)
        sl = tuple(slice(int(a), int(a) + s) for a, s in zip(corner, size))
        im, tg = v.image[sl], v.target[sl]
        for ax in range(3):
            if rng.random() < 0.5:
                im, tg = np.flip(im, ax), np.flip(tg, ax)
        imgs.append(np.ascontiguousarray(im, np.float32))
        tgts.append(np.ascontiguousarray(tg, np.float32))
    return np.stack(imgs)[:, None], np.stack(tgts)[:, None]


def train_unet(volumes: Sequence[DenseVolume], *, config: DenseTrainConfig | None = None, voxel_um=None,
               device: str | torch.device | None = None, progress: bool = True) -> DenseTrainResult:
    """Train a U-Net on ``volumes`` (:class:`DenseVolume`); deterministic for a given ``config.seed``.

    Parameters
    ----------
    volumes : sequence of DenseVolume
        At least one, each with at least one labelled voxel among them all.
    config : DenseTrainConfig, keyword-only
    voxel_um : 3 floats or None, keyword-only
        The volumes' grid (z, y, x um): plans the pooling (:func:`~clarity.dense.unet.plan_pools`).
    device : torch device or None, keyword-only
        None: CUDA when there is one, else the CPU (:func:`clarity.model.pick_device`).
    progress : bool, keyword-only
        A tqdm bar over steps with the running loss.
    """
    from tqdm.auto import tqdm

    cfg = config or DenseTrainConfig()
    vols = list(volumes)
    if not vols:
        raise ValueError("no training volumes")
    if not any(v.target.any() for v in vols):
        raise ValueError("no labelled voxel in any training volume: nothing to learn")
    device = pick_device(device)
    net_cfg = UNetConfig(pools=plan_pools(voxel_um, cfg.levels), width=cfg.width)
    size = _crop_size(vols, cfg.crop, net_cfg.multiple())
    rng = np.random.default_rng(cfg.seed)
    t0, history = time.perf_counter(), []
    with torch_settings(device, cfg.num_threads):
        torch.manual_seed(int(cfg.seed))
        model = UNet3D(net_cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        pw = torch.tensor(float(cfg.pos_weight), device=device)
        bar = tqdm(range(int(cfg.steps)), desc="U-Net", disable=not progress, leave=False)
        running = None
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = onecycle_lr(step, int(cfg.steps), lr=cfg.lr)
            im, tg = _draw(vols, size, int(cfg.batch_size), rng, float(cfg.cell_fraction))
            x = torch.from_numpy(im).to(device)
            if cfg.intensity:
                x = intensity_augment(x, rng)
            y = torch.from_numpy(tg).to(device)
            model.train()
            loss = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=pw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            running = value if running is None else 0.9 * running + 0.1 * value
            if step % 10 == 0 or step == int(cfg.steps) - 1:
                history.append({"step": step, "loss": running, "lr": opt.param_groups[0]["lr"]})
                bar.set_postfix(loss=f"{running:.4f}")
    model.eval()
    return DenseTrainResult(model=model.cpu(), config=cfg, history=history, seconds=time.perf_counter() - t0)
