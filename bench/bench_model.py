"""Throughput of the patch CNN on random data: training and inference, in patches per second.

Usage::

    python bench/bench_model.py [--patch-size 12] [--channels 16,32,32] [--fc 64]
                                [--batch-size 256] [--eval-batch-size 2048] [--threads 2]
                                [--n-train 20000] [--device cpu]

Prints figures only; asserts nothing about time (the machine may be shared). Patches are
random (N, P, P, P) float32 cubes, axes (z, y, x); 10 % are labelled positive.

Reported:

* ``train step``  optimiser steps alone (forward, backward, AdamW; augmentation included);
* ``train_model`` one full epoch of :func:`clarity.train.train_model` on ``--n-train`` patches
  (batching, augmentation, checkpoint, history and model files included);
* ``inference``   :func:`clarity.model.score_patches` in eval mode;
* ``dense map``   :func:`clarity.model.dense_score_map` on a 64^3 block, in voxels per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# sleeping (not spinning) OpenMP threads: must be set before torch loads; see clarity.model
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarity.model import CellCNN, ModelConfig, dense_score_map, pick_device, score_patches  # noqa: E402
from clarity.sampling import PatchSet  # noqa: E402
from clarity.train import TrainConfig, augment, train_model  # noqa: E402


def bench_train_steps(cfg: ModelConfig, *, batch_size: int, steps: int, device: torch.device,
                      seed: int = 0) -> float:
    """Patches per second of plain training steps (median over ``steps`` after 3 warm-up)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    fmt = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
    model = CellCNN(cfg).to(device).to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    p = cfg.patch_size
    x = torch.randn(batch_size, 1, p, p, p, device=device)
    y = (torch.rand(batch_size, device=device) < 0.1).float()
    pos_weight = torch.tensor(9.0, device=device)
    times = []
    for i in range(steps + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        xb = augment(x, rng).contiguous(memory_format=fmt)
        loss = F.binary_cross_entropy_with_logits(model(xb), y, pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return batch_size / float(np.median(times))


def bench_train_model(cfg: ModelConfig, *, n: int, batch_size: int, device: torch.device,
                      seed: int = 0) -> tuple[float, float]:
    """(patches/s, seconds) of one train_model epoch on ``n`` random patches, no validation."""
    rng = np.random.default_rng(seed)
    p = cfg.patch_size
    label = (rng.random(n) < 0.1).astype(np.int8)
    label[:2] = (0, 1)
    ps = PatchSet(rng.normal(size=(n, p, p, p)).astype(np.float32), np.full(n, "bench"),
                  np.zeros((n, 3)), label, np.full(n, "background"), -np.ones(n), {"patch_size": p})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train_model(ps, None, model_config=cfg, out_dir=tmp, resume=False, progress=False,
                    device=device, config=TrainConfig(epochs=1, batch_size=batch_size, seed=seed))
        dt = time.perf_counter() - t0
    return n / dt, dt


def bench_inference(cfg: ModelConfig, *, n: int, batch_size: int, device: torch.device) -> float:
    """Patches per second of :func:`score_patches` (best of 3 after one warm-up)."""
    torch.manual_seed(0)
    model = CellCNN(cfg).to(device).eval()
    p = cfg.patch_size
    x = np.random.default_rng(0).normal(size=(n, p, p, p)).astype(np.float32)
    score_patches(model, x[:batch_size], batch_size=batch_size)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        score_patches(model, x, batch_size=batch_size)
        best = min(best, time.perf_counter() - t0)
    return n / best


def bench_dense(cfg: ModelConfig, *, edge: int, device: torch.device) -> float:
    """Voxels per second of :func:`dense_score_map` on an ``edge``^3 block."""
    torch.manual_seed(0)
    model = CellCNN(cfg).to(device).eval()
    block = np.random.default_rng(0).normal(size=(edge,) * 3).astype(np.float32)
    dense_score_map(model, block[:cfg.patch_size + 4])
    t0 = time.perf_counter()
    dense_score_map(model, block)
    return block.size / (time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patch-size", type=int, default=12)
    ap.add_argument("--channels", default=None, help="three conv widths, e.g. 16,32,32")
    ap.add_argument("--fc", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    ap.add_argument("--eval-batch-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps")
    ap.add_argument("--n-train", type=int, default=20000, help="patches of the train_model epoch (0: skip)")
    ap.add_argument("--n-infer", type=int, default=16384)
    ap.add_argument("--dense-edge", type=int, default=64, help="block edge of the dense map (0: skip)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    kw = {"patch_size": args.patch_size}
    if args.channels:
        kw["channels"] = tuple(int(c) for c in args.channels.split(","))
    if args.fc:
        kw["fc"] = args.fc
    cfg = ModelConfig(**kw)
    device = pick_device(args.device)
    n_params = sum(p.numel() for p in CellCNN(cfg).parameters())

    print(f"torch {torch.__version__} | python {platform.python_version()} | device {device} | "
          f"threads {torch.get_num_threads()} | OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')} | "
          f"cpu {platform.processor() or platform.machine()}")
    print(f"model {cfg.to_dict()} | {n_params} parameters")
    print(f"train batch {args.batch_size} | eval batch {args.eval_batch_size}")

    tr = bench_train_steps(cfg, batch_size=args.batch_size, steps=args.steps, device=device)
    print(f"train step   : {tr:10,.0f} patches/s  (forward+backward+AdamW, augmentation on)")
    if args.n_train:
        rate, dt = bench_train_model(cfg, n=args.n_train, batch_size=args.batch_size, device=device)
        print(f"train_model  : {rate:10,.0f} patches/s  (1 epoch of {args.n_train:,} patches in "
              f"{dt:.1f} s, files included; 15 epochs ~ {15 * dt:.0f} s)")
    inf = bench_inference(cfg, n=args.n_infer, batch_size=args.eval_batch_size, device=device)
    print(f"inference    : {inf:10,.0f} patches/s  (score_patches, {args.n_infer:,} patches)")
    if args.dense_edge:
        vox = bench_dense(cfg, edge=args.dense_edge, device=device)
        print(f"dense map    : {vox:10,.0f} voxels/s   (dense_score_map, {args.dense_edge}^3 block)")


if __name__ == "__main__":
    main()
