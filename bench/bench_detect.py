"""End-to-end throughput and peak memory of :func:`clarity.detect.detect_volume`.

Usage::

    python bench/bench_detect.py [--sizes 64x512x512 256x1024x1024] [--shape Z Y X]
                                 [--chunk 64 512 512] [--mode candidates] [--model PATH] [--refine snap|climb|none]
                                 [--workers N] [--scheduler ADDRESS] [--workdir DIR] [--seed 0]

For each size a synthetic volume (uint16, (z, y, x)) is generated once into ``--workdir``
(default: a temporary folder, removed at the end) as an uncompressed 3D TIFF: tiles of
:func:`clarity.synthetic.make_brain` (at most 64x512x512 each, seeds ``seed * 1000 + tile``)
are written into a memory-mapped file, so generating a large volume never holds it in memory.
Tiles are independent brains, so the volume is a patchwork (throughput does not care).

The model is ``--model PATH`` when given, else ``models/default/final.pt`` when ``make report``
has written it (a trained model: candidate refinement, which only climbs from candidates the
network finds promising, then costs what it costs in practice), else a freshly initialised
(untrained, seeded) :class:`clarity.model.CellCNN` with threshold 0.5: the count is then
meaningless, and refinement costs more than with a trained model (about half the candidates
pass an untrained network). ``--model untrained`` forces the latter.

Detection runs in a fresh child process per size (``--run-one``), so that its peak resident
memory (``VmHWM`` of /proc/self/status, and ``ru_maxrss``) is that of the detection alone:
N4 fit on a shrunk copy, normalisation, chunked correction, candidate screen, CNN scoring and
NMS, everything that ``python -m clarity detect`` does except writing the CSV. Printed per size:
volume shape, Mvox/s end to end, seconds per stage, count, peak RSS.

Nothing is asserted about time (the machine may be shared); the targets are >= 5 Mvox/s and
<= ~1.5 GB peak on 2 CPU cores, independent of the volume size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# sleeping (not spinning) OpenMP threads between torch calls: set before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clarity.paths import Paths  # noqa: E402

TILE = (64, 512, 512)


def parse_size(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"size must be ZxYxX, not {text!r}")
    return tuple(int(p) for p in parts)


def generate_volume(path: Path, shape: tuple[int, int, int], *, seed: int, progress: bool = True) -> Path:
    """Tile synthetic brains into an uncompressed uint16 TIFF at ``path`` (memory-mapped writes)."""
    import tifffile
    from tqdm.auto import tqdm

    from clarity.io import atomic_write
    from clarity.synthetic import make_brain

    if path.exists():
        return path
    tiles = [(z, y, x) for z in range(0, shape[0], TILE[0]) for y in range(0, shape[1], TILE[1])
             for x in range(0, shape[2], TILE[2])]
    with atomic_write(path) as tmp:
        out = tifffile.memmap(tmp, shape=shape, dtype=np.uint16, metadata={"axes": "ZYX"})
        for i, (z, y, x) in enumerate(tqdm(tiles, desc=f"generate {'x'.join(map(str, shape))}",
                                           disable=not progress)):
            ts = tuple(min(t, n - a) for t, n, a in zip(TILE, shape, (z, y, x)))
            ts_gen = tuple(max(8, t) for t in ts)
            b = make_brain(seed * 1000 + i, shape=ts_gen)
            out[z:z + ts[0], y:y + ts[1], x:x + ts[2]] = b.volume[:ts[0], :ts[1], :ts[2]]
            del b
        out.flush()
        del out
    return path


def peak_rss_mb() -> dict:
    """Peak resident memory of this process: VmHWM (/proc) and ru_maxrss, in MB."""
    out = {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["vmhwm_mb"] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def run_one(args) -> dict:
    """Detection on one volume file, in this process; returns the figures as a dict."""
    import torch

    from clarity.detect import RunOptions, detect_volume
    from clarity.detect.config import resolve_config
    from clarity.model import CellCNN, ModelConfig, load_model

    if args.model and args.model != "untrained":
        model = load_model(args.model, device=args.device)
        model_desc = f"loaded {args.model}"
    else:
        torch.manual_seed(args.seed)
        model = CellCNN(ModelConfig()).eval()
        model_desc = f"untrained CellCNN (seed {args.seed}), threshold 0.5"
    rss_before = peak_rss_mb()
    load_before = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    config = resolve_config(model, None, mode=args.mode, refine=args.refine)
    run = RunOptions(chunk=tuple(args.chunk), scheduler=args.scheduler, num_workers=args.workers,
                     device=args.device, progress=not args.quiet)
    res = detect_volume(args.volume, model=model, config=config, run=run)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    info = res.info
    shape = info["shape"]
    nvox = float(np.prod(shape))
    return {
        "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)",
        "shape": shape, "voxels": nvox, "seconds": res.seconds, "mvox_s": nvox / 1e6 / res.seconds,
        "count": res.n_cells, "candidates": info.get("n_candidates"), "chunks": res.chunks,
        "chunk": list(args.chunk), "mode": args.mode, "device": info.get("device"),
        "refine": info.get("refine"),
        "model": model_desc, "workers": args.workers or os.cpu_count(),
        "stages_wall_s": {k: round(info[k], 2) for k in ("n4_s", "normalisation_s", "chunks_s", "nms_s")
                          if k in info},
        "stages_task_s": {k: round(info[k], 2) for k in ("read_s", "correct_s", "screen_s", "score_s", "refine_s")
                          if k in info},
        "halo": info.get("halo"), "n4_factors": info.get("n4", {}).get("factors"),
        "voxels_processed_ratio": info.get("voxels_processed", 0) / nvox,
        "rss_before_mb": rss_before.get("vmhwm_mb", rss_before["ru_maxrss_mb"]),
        "cpu_user_s": ru1.ru_utime - ru0.ru_utime, "cpu_sys_s": ru1.ru_stime - ru0.ru_stime,
        "loadavg_before": load_before,
        **peak_rss_mb(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=None, metavar="ZxYxX",
                    help="volume sizes to run (default: 64x512x512 256x1024x1024)")
    ap.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="one size")
    ap.add_argument("--chunk", type=int, nargs=3, default=[64, 512, 512], metavar=("Z", "Y", "X"))
    ap.add_argument("--mode", choices=["candidates", "dense", "log"], default="candidates")
    ap.add_argument("--model", help="a saved model (default: models/default/final.pt if present, else "
                                    "an untrained CellCNN; 'untrained' forces that)")
    ap.add_argument("--refine", default=None, choices=["snap", "climb", "none"],
                    help="candidate refinement (default: detect_volume's, snap)")
    ap.add_argument("--workers", type=int, default=None, help="local threads (default: CPU count)")
    ap.add_argument("--scheduler", default=None, help="threads (default), processes, sync or tcp://...")
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"])
    ap.add_argument("--workdir", default=None, help="keep generated volumes here (reused)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--run-one", dest="volume", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--generate-one", dest="generate", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", dest="json_out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode == "log":
        ap.error("--mode log needs a LoG threshold; benchmark candidates or dense")

    if args.model is None and not (args.generate or args.volume):
        default_model = Paths().final_model
        args.model = str(default_model) if default_model.exists() else "untrained"
    if args.generate:  # child: generate one volume (keeps the parent's memory small)
        generate_volume(Path(args.generate), tuple(args.shape), seed=args.seed, progress=not args.quiet)
        return 0
    if args.volume:  # child: one detection, figures as JSON
        fig = run_one(args)
        Path(args.json_out).write_text(json.dumps(fig))
        return 0

    sizes = [tuple(args.shape)] if args.shape else (args.sizes or [(64, 512, 512), (256, 1024, 1024)])
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="clarity-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"clarity detect benchmark: {os.cpu_count()} CPU cores, mode={args.mode}, refine={args.refine or 'default (snap)'}, "
          f"chunk={tuple(args.chunk)}, workdir={workdir}", flush=True)
    rows = []
    try:
        for shape in sizes:
            vol = workdir / f"synthetic_{'x'.join(map(str, shape))}_seed{args.seed}.tif"
            t0 = time.perf_counter()
            existed = vol.exists()
            if not existed:
                # in a child process: ru_maxrss survives fork+exec, so the parent must stay small
                gen = [sys.executable, __file__, "--generate-one", str(vol), "--shape",
                       *map(str, shape), "--seed", str(args.seed)]
                subprocess.run(gen + (["--quiet"] if args.quiet else []), check=True)
                print(f"generated {vol.name} in {time.perf_counter() - t0:.0f} s", flush=True)
            out_json = workdir / f"result_{'x'.join(map(str, shape))}.json"
            cmd = [sys.executable, __file__, "--run-one", str(vol), "--json", str(out_json),
                   "--chunk", *map(str, args.chunk), "--mode", args.mode, "--seed", str(args.seed)]
            for flag, val in (("--model", args.model), ("--workers", args.workers), ("--refine", args.refine),
                              ("--scheduler", args.scheduler), ("--device", args.device)):
                if val is not None:
                    cmd += [flag, str(val)]
            if args.quiet:
                cmd.append("--quiet")
            subprocess.run(cmd, check=True)
            fig = json.loads(out_json.read_text())
            rows.append(fig)
            peak = fig.get("vmhwm_mb", fig["ru_maxrss_mb"])
            print(f"\nshape {tuple(fig['shape'])} ({fig['voxels'] / 1e6:.0f} Mvox, {fig['chunks']} chunks, "
                  f"halo {fig['halo']}, processed x{fig['voxels_processed_ratio']:.2f}):\n"
                  f"  device {fig['device']}, torch {fig['torch']}, {fig['workers']} workers\n"
                  f"  {fig['mvox_s']:.2f} Mvox/s end to end, {fig['seconds']:.1f} s; "
                  f"count {fig['count']} from {fig['candidates']} candidates ({fig['model']})\n"
                  f"  wall per stage  {fig['stages_wall_s']}\n"
                  f"  task time (summed over {fig['workers']} workers) {fig['stages_task_s']}\n"
                  f"  CPU {fig['cpu_user_s']:.1f} s user + {fig['cpu_sys_s']:.1f} s sys "
                  f"(= {(fig['cpu_user_s'] + fig['cpu_sys_s']) / fig['seconds']:.2f} cores busy; "
                  f"load average {fig['loadavg_before']:.1f} before: the machine may be shared)\n"
                  f"  peak RSS {peak:.0f} MB (VmHWM; ru_maxrss {fig['ru_maxrss_mb']:.0f} MB; "
                  f"{fig['rss_before_mb']:.0f} MB after imports)", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nsummary")
    print(f"{'shape':>18} {'Mvox/s':>8} {'seconds':>8} {'peak MB':>8} {'count':>7}")
    for f in rows:
        print(f"{'x'.join(map(str, f['shape'])):>18} {f['mvox_s']:8.2f} {f['seconds']:8.1f} "
              f"{f.get('vmhwm_mb', f['ru_maxrss_mb']):8.0f} {f['count']:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
