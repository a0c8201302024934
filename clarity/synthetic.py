"""Synthetic CLARITY brains with complete ground truth: the built-in dataset.

No real annotated CLARITY brains ship with clarity, so the default dataset is generated. It is
built to be hard in the ways real light-sheet data of cleared tissue is hard (compare with the
real planes in ``shared/data/real_unannotated``):

* somata of varied size (xy radius ~3-6 voxels, flatter in z) and brightness (some barely above
  background), some touching, a share with a dark nucleus (cytoplasmic reporters look like rings);
* a strong smooth multiplicative illumination field (several-fold across the volume), depth
  attenuation along z, light-sheet stripes and a tile seam; dark regions outside the tissue;
* distractors that are not cells: neurite/vessel fragments (bright tubes), small very bright debris
  (also outside the tissue), textured autofluorescent background;
* anisotropic blur (z worse than x/y), Poisson-Gaussian noise, uint16 output;
* annotations of only a fraction of the cells (default 40 %, brighter cells more likely, as with a
  human annotator), with ~1 voxel click jitter, and the complete truth beside them.

All arrays are (z, y, x) in voxels. Everything is drawn from one seed: the same seed gives the same
brain, bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from .io import BRAINS_CSV, DEFAULT_VOXEL_UM, atomic_write, save_npy, write_json, write_points_csv
from .resources import die_with_parent

__all__ = ["SyntheticConfig", "SyntheticBrain", "make_brain", "write_dataset", "brain_names", "untrained_model"]


@dataclass
class SyntheticConfig:
    """Parameters of a synthetic brain. Lengths in voxels, intensities relative to background."""

    shape: tuple[int, int, int] = (96, 384, 384)
    cell_density: float = 5.0e-5          # cells per tissue voxel (~650 in the default shape)
    radius_xy: tuple[float, float] = (3.0, 6.0)
    z_flattening: tuple[float, float] = (0.6, 0.85)   # r_z = r_xy * this (anisotropic somata)
    contrast_median: float = 1.6          # peak soma intensity above background (x background)
    contrast_sigma: float = 0.65          # lognormal spread: a tail of cells near background
    dim_fraction: float = 0.12            # share of cells with contrast 0.25-0.6 (hard to see)
    ring_fraction: float = 0.3            # share with a dark nucleus
    touching_fraction: float = 0.12       # share placed touching another cell
    n_tubes: int = 45                     # neurite / vessel fragments
    n_debris: int = 35                    # tiny very bright particles
    field_fold: float = 4.0               # max/min of the smooth illumination field
    depth_attenuation: float = 2.0        # intensity ratio top/bottom of the stack along z
    stripe_amplitude: float = 0.06        # light-sheet stripes along x
    seam_step: float = 0.1                # tile seam brightness step
    psf_sigma: tuple[float, float, float] = (1.6, 0.8, 0.8)
    photons_background: tuple[float, float] = (120.0, 320.0)   # counts of tissue background
    read_noise: float = 3.0
    offset: float = 5.0
    annotated_fraction: float = 0.4
    annotation_jitter: float = 0.7        # sd of click error, voxels per axis
    brightness_bias: float = 0.5          # annotation probability ~ contrast ** bias

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SyntheticBrain:
    """A generated brain.

    Attributes
    ----------
    volume : uint16 array (z, y, x)
    cells : float array (N, 3)
        Every cell centre (z, y, x), voxels: the complete truth.
    annotated : float array (M, 3)
        The partial annotations (integer voxel clicks with jitter), M ~ annotated_fraction * N.
    annotated_index : int array (M,)
        Which truth cell each annotation belongs to.
    radius : float array (N,)   xy radius of each cell, voxels
    contrast : float array (N,) peak intensity above background, x background
    ring : bool array (N,)      dark nucleus
    field : float32 array       the smooth illumination field (incl. depth attenuation) at 1/4
        resolution, ``field_shrink`` per axis; what N4 should recover.
    tissue : bool array (z, y, x) tissue mask (at full resolution)
    """

    volume: np.ndarray
    cells: np.ndarray
    annotated: np.ndarray
    annotated_index: np.ndarray
    radius: np.ndarray
    contrast: np.ndarray
    ring: np.ndarray
    field: np.ndarray
    field_shrink: tuple[int, int, int]
    tissue: np.ndarray
    seed: int
    config: SyntheticConfig = field(default_factory=SyntheticConfig)


# ----------------------------------------------------------------------------------------------
def _unit(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    s = a.std()
    return a / s if s > 0 else a


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    return _unit(ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma))


def _tissue(rng, shape) -> np.ndarray:
    """Soft tissue fraction in [0, 1]: tissue below a wavy surface, optionally a dark ventricle."""
    nz, ny, nx = shape
    z = np.arange(nz)[:, None, None]
    x = np.arange(nx)[None, None, :]
    top = rng.uniform(0.08, 0.3) * ny
    amp = rng.uniform(0.03, 0.1) * ny
    surface = top + amp * np.sin(2 * np.pi * x / rng.uniform(0.8, 2.0) / nx + rng.uniform(0, 2 * np.pi)) \
        + 0.02 * ny * np.sin(2 * np.pi * z / max(nz, 1) + rng.uniform(0, 2 * np.pi))
    y = np.arange(ny)[None, :, None]
    frac = 1.0 / (1.0 + np.exp(-(y - surface) / 1.5))
    if rng.random() < 0.5:  # a ventricle: dark fluid-filled ellipsoid inside the tissue
        c = np.array([rng.uniform(0.3, 0.7) * nz, rng.uniform(0.55, 0.85) * ny, rng.uniform(0.2, 0.8) * nx])
        r = np.array([nz * rng.uniform(0.3, 0.6), ny * rng.uniform(0.05, 0.09), nx * rng.uniform(0.08, 0.16)])
        zz, yy, xx = np.ogrid[:nz, :ny, :nx]
        d = np.sqrt(((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2)
        frac = frac * (1.0 / (1.0 + np.exp(-(d - 1.0) * 8.0)))
    return frac.astype(np.float32)


def _place_cells(rng, tissue, cfg: SyntheticConfig):
    shape = np.array(tissue.shape)
    n_tissue = float((tissue > 0.5).sum())
    n_target = max(1, int(rng.poisson(cfg.cell_density * n_tissue)))
    # candidates inside tissue (rejection sampling), leave a 2-voxel margin from the borders
    cand = []
    while sum(len(c) for c in cand) < n_target * 2:
        p = rng.uniform(2, shape - 3, size=(n_target * 2, 3))
        keep = tissue[tuple(np.rint(p).astype(int).T)] > 0.9
        cand.append(p[keep])
        if len(cand) > 50:
            break
    pts = np.concatenate(cand)[: n_target]
    n = len(pts)
    r = rng.uniform(*cfg.radius_xy, size=n)
    # touching pairs: move a share of cells next to another one
    n_touch = int(cfg.touching_fraction * n)
    if n > 1 and n_touch:
        movers = rng.choice(n, size=n_touch, replace=False)
        for i in movers:
            j = int(rng.integers(n))
            if j == i:
                continue
            v = rng.standard_normal(3)
            v[0] *= 0.4
            v /= np.linalg.norm(v)
            d = (r[i] + r[j]) * rng.uniform(0.85, 1.0)
            q = pts[j] + v * d * np.array([0.75, 1.0, 1.0])
            if np.all(q >= 2) and np.all(q <= shape - 3) and tissue[tuple(np.rint(q).astype(int))] > 0.9:
                pts[i] = q
    # remove overlaps beyond touching: keep the first of any pair closer than 0.8 (ri + rj)
    scale = np.array([1 / 0.75, 1.0, 1.0])
    tree = cKDTree(pts * scale)
    pairs = tree.query_pairs(r=0.8 * 2 * cfg.radius_xy[1], output_type="ndarray")
    drop = np.zeros(n, bool)
    if len(pairs):
        d = np.linalg.norm((pts[pairs[:, 0]] - pts[pairs[:, 1]]) * scale, axis=1)
        bad = pairs[d < 0.8 * (r[pairs[:, 0]] + r[pairs[:, 1]])]
        for a, b in bad[np.lexsort((bad[:, 1], bad[:, 0]))]:
            if not drop[a] and not drop[b]:
                drop[max(a, b)] = True
    return pts[~drop], r[~drop]


def _render_cells(rng, vol, pts, r, cfg: SyntheticConfig):
    n = len(pts)
    contrast = rng.lognormal(np.log(cfg.contrast_median), cfg.contrast_sigma, size=n)
    dim = rng.random(n) < cfg.dim_fraction
    contrast[dim] = rng.uniform(0.25, 0.6, size=int(dim.sum()))
    contrast = np.clip(contrast, 0.25, 12.0)
    ring = rng.random(n) < cfg.ring_fraction
    flat = rng.uniform(*cfg.z_flattening, size=n)
    aspect = rng.uniform(0.8, 1.25, size=n)
    shape = np.array(vol.shape)
    for i in range(n):
        rz, ry, rx = r[i] * flat[i], r[i] * aspect[i] ** 0.5, r[i] / aspect[i] ** 0.5
        half = np.ceil(np.array([rz, ry, rx]) + 2.5).astype(int)
        lo = np.maximum(np.floor(pts[i]).astype(int) - half, 0)
        hi = np.minimum(np.floor(pts[i]).astype(int) + half + 1, shape)
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d = np.sqrt(((zz - pts[i, 0]) / rz) ** 2 + ((yy - pts[i, 1]) / ry) ** 2 + ((xx - pts[i, 2]) / rx) ** 2)
        body = 1.0 / (1.0 + np.exp((d - 1.0) * r[i] / 0.7))
        if ring[i]:
            nuc = 1.0 / (1.0 + np.exp((d / rng.uniform(0.45, 0.6) - 1.0) * r[i] / 0.7))
            body = body * (1.0 - rng.uniform(0.5, 0.85) * nuc)
        vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += (contrast[i] * body).astype(np.float32)
    return contrast, ring


def _splat(shape, pts, weights) -> np.ndarray:
    """Accumulate weighted points into a volume (nearest voxel)."""
    out = np.zeros(shape, np.float32)
    idx = np.rint(pts).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
    np.add.at(out, tuple(idx[ok].T), weights[ok].astype(np.float32))
    return out


def _tubes(rng, shape, tissue, cfg: SyntheticConfig) -> np.ndarray:
    """Neurite (thin) and vessel (thicker) fragments as blurred random curves."""
    out = np.zeros(shape, np.float32)
    groups = {0.9: [], 1.4: [], 2.2: []}
    step = 0.5
    for _ in range(cfg.n_tubes):
        sigma = float(rng.choice(list(groups), p=[0.5, 0.3, 0.2]))
        contrast = rng.uniform(0.3, 1.6) if sigma < 2 else rng.uniform(0.2, 0.8)
        length = rng.uniform(20, 140)
        p = rng.uniform([0, 0, 0], shape)
        v = rng.standard_normal(3)
        v[0] *= 0.3
        v /= np.linalg.norm(v)
        pts = []
        for _ in range(int(length / step)):
            v = v + rng.standard_normal(3) * 0.05
            v[0] *= 0.9
            v /= np.linalg.norm(v)
            p = p + v * step
            pts.append(p)
        pts = np.array(pts)
        # in 3D, a line of point density 1/step blurred with sigma has cross-section peak
        # 1 / (2 pi sigma^2 step): weight each point to give the wanted peak contrast
        w = np.full(len(pts), contrast * 2 * np.pi * sigma**2 * step)
        groups[sigma].append((pts, w))
    for sigma, items in groups.items():
        if items:
            pts = np.concatenate([a for a, _ in items])
            w = np.concatenate([b for _, b in items])
            out += ndi.gaussian_filter(_splat(shape, pts, w), sigma)
    return out * np.clip(tissue, 0.0, 1.0)


def _debris(rng, shape, cfg: SyntheticConfig) -> np.ndarray:
    pts = rng.uniform([0, 0, 0], shape, size=(cfg.n_debris, 3))
    sigma = 1.0
    contrast = rng.uniform(6, 30, size=cfg.n_debris)
    w = contrast * (2 * np.pi) ** 1.5 * sigma**3
    return ndi.gaussian_filter(_splat(shape, pts, w), sigma)


def _illumination(rng, shape, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """(smooth field incl. depth attenuation, full field incl. stripes and seam), both (z, y, x)."""
    nz, ny, nx = shape
    z = np.linspace(0, 1, nz)[:, None, None]
    y = np.linspace(0, 1, ny)[None, :, None]
    x = np.linspace(0, 1, nx)[None, None, :]
    logf = np.zeros((nz, ny, nx), np.float32)
    for _ in range(4):
        kz, ky, kx = rng.uniform(0, 0.6), rng.uniform(0.2, 1.2), rng.uniform(0.2, 1.2)
        logf += (np.cos(np.pi * (kz * z + rng.uniform()) * 1.0) * np.cos(np.pi * (ky * y + rng.uniform()))
                 * np.cos(np.pi * (kx * x + rng.uniform()))).astype(np.float32)
    logf -= logf.min()
    logf *= np.log(cfg.field_fold) / max(float(logf.max()), 1e-6)
    logf -= np.log(cfg.depth_attenuation) * z.astype(np.float32)
    smooth = np.exp(logf - np.median(logf)).astype(np.float32)
    stripes = 1.0 + cfg.stripe_amplitude * _unit(ndi.gaussian_filter1d(rng.standard_normal(ny), 1.5))
    seam_y = int(rng.uniform(0.3, 0.7) * ny)
    seam = np.ones(ny, np.float32)
    seam[seam_y:] *= 1.0 - cfg.seam_step * rng.choice([-1, 1])
    full = smooth * (stripes * seam).astype(np.float32)[None, :, None]
    return smooth, full


def make_brain(seed: int, *, config: SyntheticConfig | None = None, **overrides) -> SyntheticBrain:
    """Generate one synthetic CLARITY brain.

    Parameters
    ----------
    seed : int
        All random choices derive from it; the same seed gives the same brain, bit for bit.
    config : SyntheticConfig, keyword-only
        Generator parameters (default: ``SyntheticConfig()``, shape (96, 384, 384)).
    **overrides
        Fields of ``SyntheticConfig`` to override, e.g. ``shape=(32, 96, 96)``.

    Returns
    -------
    SyntheticBrain
        ``volume`` is uint16 (z, y, x); ``cells`` the complete truth; ``annotated`` the partial,
        jittered annotations.
    """
    cfg = SyntheticConfig(**{**(asdict(config) if config else {}), **overrides})
    cfg.shape = tuple(int(s) for s in cfg.shape)
    if len(cfg.shape) != 3 or min(cfg.shape) < 8:
        raise ValueError(f"shape must be 3D with every side >= 8, not {cfg.shape}")
    rng = np.random.default_rng(seed)
    shape = cfg.shape
    tissue = _tissue(rng, shape)
    # textured autofluorescent background with a mild layer structure along y
    layers = 1.0 + 0.08 * np.sin(2 * np.pi * np.arange(shape[1]) / rng.uniform(60, 140) + rng.uniform(0, 6.3))
    bg = (1.0 + 0.10 * _smooth_noise(rng, shape, 1.2) + 0.08 * _smooth_noise(rng, shape, 5.0))
    bg *= layers.astype(np.float32)[None, :, None]
    img = np.clip(bg, 0.3, None) * tissue + 0.02 * (1.0 - tissue)
    pts, r = _place_cells(rng, tissue, cfg)
    contrast, ring = _render_cells(rng, img, pts, r, cfg)
    img += _tubes(rng, shape, tissue, cfg)
    img += _debris(rng, shape, cfg)
    img = ndi.gaussian_filter(img, cfg.psf_sigma)
    smooth, full = _illumination(rng, shape, cfg)
    photons = rng.uniform(*cfg.photons_background)
    lam = np.clip(img * full * photons, 0, None)
    counts = rng.poisson(lam).astype(np.float32)
    counts += cfg.offset + cfg.read_noise * rng.standard_normal(shape, dtype=np.float32)
    volume = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    # partial annotation, biased towards bright cells, with click jitter
    n = len(pts)
    m = int(round(cfg.annotated_fraction * n))
    p = contrast ** cfg.brightness_bias
    idx = np.sort(rng.choice(n, size=m, replace=False, p=p / p.sum())) if m else np.zeros(0, int)
    ann = pts[idx] + rng.normal(0, cfg.annotation_jitter, size=(m, 3))
    ann = np.clip(np.rint(ann), 0, np.array(shape) - 1)
    f = 4
    field_small = smooth[f // 2::f, f // 2::f, f // 2::f].astype(np.float32)
    return SyntheticBrain(volume=volume, cells=pts, annotated=ann, annotated_index=idx, radius=r,
                          contrast=contrast, ring=ring, field=field_small, field_shrink=(f, f, f),
                          tissue=tissue > 0.5, seed=int(seed), config=cfg)


def brain_names(n: int) -> list[str]:
    """Default brain names: ``brain01``, ``brain02``, ..."""
    return [f"brain{i:02d}" for i in range(1, n + 1)]


def _write_brain(brain_seed: int, config, overrides: dict, raw: Path, truth: Path, name: str) -> SyntheticConfig:
    """Build one brain and write its files (a process-pool job of :func:`write_dataset`)."""
    b = make_brain(brain_seed, config=config, **overrides)
    with atomic_write(raw / f"{name}.tif") as tmp:
        tifffile.imwrite(tmp, b.volume, photometric="minisblack", metadata={"axes": "ZYX"})
    write_points_csv(raw / f"{name}.csv", b.annotated)
    write_points_csv(truth / f"{name}.csv", np.round(b.cells, 2),
                     columns={"radius": np.round(b.radius, 2), "contrast": np.round(b.contrast, 3),
                              "ring": b.ring.astype(int),
                              "annotated": np.isin(np.arange(len(b.cells)), b.annotated_index).astype(int)})
    save_npy(truth / f"{name}_field.npy", b.field)
    return b.config


def write_dataset(data_dir: str | os.PathLike, *, n_brains: int = 8, seed: int = 0,
                  config: SyntheticConfig | None = None, overwrite: bool = False,
                  progress: bool = True, workers: int | None = None, **overrides) -> list[Path]:
    """Write a synthetic dataset into a data root.

    Writes ``raw/brainNN.tif`` (uint16, uncompressed, memory-mappable), ``raw/brainNN.csv``
    (partial annotations, header ``z,y,x``), ``truth/brainNN.csv`` (every cell, with radius,
    contrast and ring columns), ``truth/brainNN_field.npy`` (smooth illumination field at
    1/4 resolution), ``raw/dataset.json`` (parameters) and ``brains.csv`` (each volume its own brain,
    voxel size :data:`clarity.io.DEFAULT_VOXEL_UM`). Brain ``i`` uses seed
    ``seed * 1000 + i``. Existing brains are kept unless ``overwrite``. Brains are built in
    ``workers`` processes (default: one per core for brains of 2 million voxels or more, else
    this process); each depends on its own seed only, so the
    files are the same for any number of workers.

    Returns the volume paths.
    """
    data_dir = Path(data_dir)
    raw, truth = data_dir / "raw", data_dir / "truth"
    raw.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    names = brain_names(n_brains)
    out = [raw / f"{name}.tif" for name in names]
    todo = [(i, name) for i, name in enumerate(names, start=1)
            if overwrite or not ((raw / f"{name}.tif").exists() and (raw / f"{name}.csv").exists())]
    cfg_used = None
    # each brain depends on its own seed only: built on every core, written as each one finishes
    if workers is None:  # a process costs ~2 s to start: worth it for brains of millions of voxels
        shape = overrides.get("shape", (config or SyntheticConfig()).shape)
        workers = (os.cpu_count() or 1) if int(np.prod(shape)) >= 2_000_000 else 1
    workers = max(1, min(len(todo), int(workers)))
    jobs = [(seed * 1000 + i, config, overrides, raw, truth, name) for i, name in todo]
    bar = tqdm(total=len(todo), desc="synthetic brains", disable=not progress)
    if workers == 1:
        for job in jobs:
            cfg_used = _write_brain(*job)
            bar.update()
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                    initializer=die_with_parent) as pool:
            for cfg_used in pool.map(_write_brain, *zip(*jobs)):
                bar.update()
    bar.close()
    if cfg_used is not None:
        meta = {"generator": "clarity.synthetic", "seed": seed, "n_brains": n_brains,
                "brains": names, "config": cfg_used.to_dict(), "field_shrink": 4,
                "voxel_um": list(DEFAULT_VOXEL_UM)}
        write_json(raw / "dataset.json", meta)
        # the synthetic brains state their voxel size like any data root (data/README.md)
        vz, vy, vx = DEFAULT_VOXEL_UM
        with atomic_write(data_dir / BRAINS_CSV) as tmp:
            tmp.write_text("volume,brain,voxel_um_z,voxel_um_y,voxel_um_x\n"
                           + "".join(f"{n},{n},{vz:g},{vy:g},{vx:g}\n" for n in names))
    return out


def untrained_model(path: str | os.PathLike, *, seed: int = 0, threshold: float = 0.5,
                    note: str = "untrained test model") -> Path:
    """Save a seeded, untrained :class:`clarity.model.CellCNN` whose scores spread over (0, 1)
    (a wide output layer), its output flipped, which ranks the synthetic brains' bright cells
    above the background (ROC AUC about 0.7: a poor model, as on a new brain). For tests and
    benchmarks that need a model file without training; returns the saved path."""
    import torch

    from .model import CellCNN, ModelConfig, save_model

    torch.manual_seed(seed)
    net = CellCNN(ModelConfig())
    torch.nn.init.normal_(net.fc2.weight, std=0.5)
    with torch.no_grad():
        net.fc2.weight.neg_()
        net.fc2.bias.neg_()
    return save_model(path, net.eval(), normalisation={"method": "contrast"}, threshold=threshold,
                      provenance={"note": note})
