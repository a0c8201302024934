"""Fixtures of the clarity.validate tests: a tiny preprocessed, sampled data root, tiny configs,
and fold 1 run once on it (shared by the test files of this folder)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import tifffile

from clarity import validate as V
from clarity.io import write_points_csv
from clarity.model import ModelConfig
from clarity.paths import Paths
from clarity.preprocess import N4Config, preprocess_dataset
from clarity.sampling import SamplingConfig, sample_dataset
from clarity.synthetic import make_brain
from clarity.train import TrainConfig

TINY = ModelConfig(patch_size=12, channels=(4, 8, 8), fc=8, dropout=0.1)
CFG = TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=0, patience=0, num_threads=1)
RECFG = TrainConfig(epochs=1, batch_size=64, lr=1e-3, seed=0, patience=0, num_threads=1)


@pytest.fixture(scope="session")
def tiny():
    """Tiny model and training configs: ``model``, ``train``, ``retrain``."""
    return SimpleNamespace(model=TINY, train=CFG, retrain=RECFG)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory, small_kwargs):
    """Four tiny synthetic brains, preprocessed and sampled: a complete data root."""
    root = tmp_path_factory.mktemp("validate") / "data"
    (root / "raw").mkdir(parents=True)
    (root / "truth").mkdir()
    for i in range(4):
        b = make_brain(20 + i, **small_kwargs)
        tifffile.imwrite(root / "raw" / f"b{i + 1}.tif", b.volume, photometric="minisblack")
        write_points_csv(root / "raw" / f"b{i + 1}.csv", b.annotated)
        write_points_csv(root / "truth" / f"b{i + 1}.csv", b.cells)
    paths = Paths(data_dir=root, run="t", models_root=root.parent / "models",
                  reports_root=root.parent / "reports")
    preprocess_dataset(paths, config=N4Config(shrink=4, iterations=5, levels=1), progress=False)
    ps = sample_dataset(paths, config=SamplingConfig(seed=0, background_per_pos=1.0), progress=False)
    ps.save(paths.patchset())
    return paths


@pytest.fixture(scope="session")
def paths_for(tiny_root):
    """``paths_for(run)``: the tiny data root with its own models and reports of ``run``."""
    def make(run: str) -> Paths:
        return Paths(data_dir=tiny_root.data_dir, run=run, models_root=tiny_root.models_root,
                     reports_root=tiny_root.reports_root)
    return make


@pytest.fixture(scope="session")
def run_small():
    """``run_small(paths, split, **options)``: :func:`clarity.validate.run_split` with the tiny
    configs, seed 0, 2 folds, no progress bars, hard-example retraining on (``cnn_retrained``;
    off by default in :class:`SplitConfig`); ``options`` override :class:`SplitConfig` fields."""
    def run(paths, split, **kw):
        kw = {"retrain": True, **kw}
        opts = V.SplitConfig(train_config=CFG, retrain_config=RECFG, model_config=TINY, seed=0, n_folds=2, **kw)
        return V.run_split(paths, split, opts, progress=False)
    return run


@pytest.fixture(scope="session")
def trained_files():
    """Model path -> (bytes, mtime_ns) of each model file as training left it, recorded while
    :func:`fold1` runs (before the split calibrates it)."""
    return {}


@pytest.fixture(scope="session")
def fold1(paths_for, run_small, trained_files):
    """Fold 1 of run ``a``, with retraining: (paths, SplitResult)."""
    from clarity.validate import fold

    def recording(*args, **kw):
        res = train_variant(*args, **kw)
        trained_files[res.model_path] = (res.model_path.read_bytes(), res.model_path.stat().st_mtime_ns)
        return res

    train_variant = fold.train_variant
    paths = paths_for("a")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fold, "train_variant", recording)
        return paths, run_small(paths, "fold1")
