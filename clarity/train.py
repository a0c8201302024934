"""Seeded, resumable training of :class:`clarity.model.CellCNN` on a :class:`PatchSet`.

Patches are (N, P, P, P) float32 arrays with axes (z, y, x), in voxels; labels are
``PatchSet.label`` (1 = cell, 0 = not a cell).

One call of :func:`train_model` writes into ``out_dir``:

``checkpoint.pt``  after every epoch (weights, optimiser, scheduler, RNG states, history, best
                   state), so ``resume=True`` continues after a crash where it stopped;
``history.csv``    one row per epoch (losses, validation ROC/PR AUC, learning rate, seconds);
``model.pt``       the best model by validation ROC AUC, ties broken by validation loss (by
                   validation loss alone when the validation
                   set has one class only, training loss without a validation set), with its
                   normalisation, max-F1 threshold and provenance (see :func:`clarity.model.save_model`),
                   plus ``config.json`` beside it.

Every random choice (initial weights, batch order, augmentation, dropout) derives from
``TrainConfig.seed`` and the epoch number, so the same seed and data give the same weights on
the same machine with the same thread count (parallel reductions round differently with another
count; fix it with ``TrainConfig.num_threads``), and a resumed run gives the same weights as an
uninterrupted one.

Speed (2 CPU cores, default model, 12^3 patches): about 5,000 patches/s training and 10,000
patches/s inference on an idle machine; see ``bench/bench_model.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm.auto import tqdm

from .evaluate import threshold_max_f1
from .io import ClarityInputError, atomic_write
from .augment import augment, intensity_augment
from .model import CellCNN, ModelConfig, pick_device, save_model
from .sampling import PatchSet

__all__ = ["TrainConfig", "TrainResult", "augment", "train_model", "max_f1_threshold", "onecycle_lr", "torch_settings"]

CHECKPOINT_FORMAT = "clarity-train-checkpoint"
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_roc_auc", "val_pr_auc", "lr", "seconds"]


# ---- configuration and result
@dataclass
class TrainConfig:
    """Options of :func:`train_model`.

    Attributes
    ----------
    epochs : int
        Maximum number of passes over the training set. The default, 8 with the one-cycle
        schedule, gave the default report's held-out detection F1 0.908 and patch CV F1 0.912 /
        ROC AUC 0.996; 10 gave 0.908, 0.915, 0.996, and the earlier 30 cosine epochs 0.904,
        0.915, 0.996 in almost four times the time; 60 cosine epochs over-fitted (0.860-0.871 on
        two folds).
    batch_size : int
        Patches per optimiser step.
    lr, weight_decay : float
        AdamW learning rate and decoupled weight decay.
    seed : int
        Seeds initial weights, batch order, augmentation and dropout.
    patience : int
        Stop after this many epochs without improvement of the monitored metric (validation
        ROC AUC, ties broken by validation loss; else validation loss; else training loss);
        0 (default) disables early stopping. The best epoch by that metric is kept either way.
    balance : {"weighted", "sampler", "none"}
        Class balance: ``pos_weight = n_neg / n_pos`` in the BCE loss, or class-balanced
        sampling with replacement (epoch length = training set size), or nothing.
    augment : bool
        Random flips along z, y, x and 90-degree rotations in the y-x plane.
    intensity : bool
        Also random brain-to-brain intensity differences (:func:`clarity.augment.intensity_augment`:
        contrast x1/2-x2, offset, noise), for brains that differ in brightness.
    lr_schedule : {"plateau", "cosine", "onecycle", "none"}
        ``"plateau"`` halves the learning rate after 2 epochs without improvement of the
        validation loss (training loss without a validation set); ``"cosine"`` anneals from
        ``lr`` to 0 over ``epochs``, once per epoch; ``"onecycle"`` (default) sets it at every step
        (Smith's one-cycle policy, as :class:`torch.optim.lr_scheduler.OneCycleLR`): up from
        ``lr / 25`` to ``lr`` over the first ``warmup`` share of the steps, then cosine down to
        ``lr / 25e4``: as good a model in a third of the epochs (:func:`onecycle_lr`).
    warmup : float
        Share of the steps the one-cycle schedule spends rising (``"onecycle"`` only).
    num_threads : int or None
        ``torch.set_num_threads`` during training (restored afterwards); None keeps torch's.
    eval_batch_size : int
        Batch size for validation scoring.
    """

    epochs: int = 8
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 0
    balance: str = "weighted"
    augment: bool = True
    intensity: bool = False
    lr_schedule: str = "onecycle"
    warmup: float = 0.3
    num_threads: int | None = None
    eval_batch_size: int = 2048

    def __post_init__(self):
        if self.balance not in ("weighted", "sampler", "none"):
            raise ValueError(f"balance must be 'weighted', 'sampler' or 'none', not {self.balance!r}")
        if self.lr_schedule not in ("plateau", "cosine", "onecycle", "none"):
            raise ValueError(
                f"lr_schedule must be 'plateau', 'cosine', 'onecycle' or 'none', not {self.lr_schedule!r}")
        if not 0.0 < self.warmup < 1.0:
            raise ValueError(f"warmup must lie in (0, 1), not {self.warmup}")
        if self.epochs < 0 or self.batch_size < 2 or self.lr <= 0 or self.patience < 0:
            raise ValueError(f"invalid TrainConfig {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in dict(d).items() if k in cls.__dataclass_fields__})


@dataclass
class TrainResult:
    """What :func:`train_model` returns.

    Attributes
    ----------
    model : CellCNN
        The best model (eval mode).
    history : pandas.DataFrame
        Columns epoch, train_loss, val_loss, val_roc_auc, val_pr_auc, lr, seconds.
    best_epoch : int
        1-based epoch of the best model.
    out_dir, model_path : Path
    threshold : float
        Max-F1 probability threshold on the validation set (0.5 without one).
    """

    model: CellCNN
    history: pd.DataFrame
    best_epoch: int
    out_dir: Path
    model_path: Path
    threshold: float = 0.5


def onecycle_lr(step: int, total: int, *, lr: float, warmup: float = 0.3,
                div: float = 25.0, final_div: float = 1e4) -> float:
    """Learning rate of the one-cycle policy at optimiser step ``step`` (0-based) of ``total``.

    Cosine up from ``lr / div`` to ``lr`` over the first ``warmup`` share of the steps, then
    cosine down to ``lr / (div * final_div)`` at the last step (the shape of
    :class:`torch.optim.lr_scheduler.OneCycleLR`, computed from the step alone so that a resumed
    run follows the same schedule).
    """
    total = max(int(total), 1)
    start, end = lr / div, lr / (div * final_div)
    up = max(int(round(warmup * total)), 1)
    if step < up:
        t = step / up
        return start + (lr - start) * 0.5 * (1 - math.cos(math.pi * t))
    t = min((step - up) / max(total - 1 - up, 1), 1.0)
    return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * t))


# ---- helpers
def max_f1_threshold(labels: np.ndarray, scores: np.ndarray, *, default: float = 0.5) -> float:
    """Probability threshold maximising F1 of ``scores >= t`` (``default`` when ``labels`` hold one
    class only); see :func:`clarity.evaluate.threshold_max_f1`."""
    labels = np.asarray(labels).astype(int)
    if labels.min(initial=0) == labels.max(initial=0):
        return float(default)
    return threshold_max_f1(labels, scores)


def _metrics(labels: np.ndarray, logits: np.ndarray) -> dict:
    y = torch.from_numpy(labels.astype(np.float32))
    loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), y))
    two = 0 < labels.sum() < len(labels)
    prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return {"val_loss": loss,
            "val_roc_auc": float(roc_auc_score(labels, prob)) if two else float("nan"),
            "val_pr_auc": float(average_precision_score(labels, prob)) if two else float("nan"),
            "prob": prob}


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


@contextlib.contextmanager
def torch_settings(device: torch.device, num_threads: int | None) -> Iterator[None]:
    """Deterministic algorithms and a thread count for the duration of training, then restore."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    prev_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*deterministic.*")
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_cudnn


def _rank_key(row: dict, monitor: str) -> tuple[float, float]:
    """Larger is better: the monitored metric, ties (ROC AUC of 1.0...) broken by lower loss."""
    def val(x, sign):
        return -math.inf if x is None or math.isnan(x) else sign * float(x)

    if monitor == "val_roc_auc":
        return (val(row["val_roc_auc"], 1), val(row["val_loss"], -1))
    return (val(row[monitor], -1), val(row["train_loss"], -1))


def _history_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS).astype({"epoch": int})


def _write_history(path: Path, rows: list[dict]) -> None:
    with atomic_write(path) as tmp:
        _history_frame(rows).to_csv(tmp, index=False)


def _state_copy(model: CellCNN) -> dict:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _fingerprint(train_set: PatchSet, val_set: PatchSet | None) -> list[float]:
    """Cheap summary of the data (sizes, positives, intensity sums) to spot a changed set."""
    out = []
    for ps in (train_set, val_set):
        if ps is None:
            out += [0.0, 0.0, 0.0]
        else:
            out += [float(len(ps)), float(ps.label.sum()),
                    round(float(ps.patches.sum(dtype=np.float64)), 3)]
    return out


# ---- training
def _checked_sets(train_set: PatchSet, val_set: PatchSet | None, p: int) -> PatchSet | None:
    """Check both sets for patch size ``p`` and both classes; an empty ``val_set`` becomes None."""
    val_set = None if val_set is not None and len(val_set) == 0 else val_set
    for ps, name in ((train_set, "training set"), (val_set, "validation set")):
        if ps is not None and len(ps) == 0:
            raise ClarityInputError(f"{name}: empty patch set")
        if ps is not None and ps.patches.shape[1:] != (p, p, p):
            raise ClarityInputError(f"{name}: patches of shape {ps.patches.shape[1:]} do not match "
                                    f"the model's patch size {p}")
    n_pos = int(train_set.label.sum())
    if n_pos == 0 or n_pos == len(train_set):
        raise ClarityInputError(f"training set has {n_pos} positive and {len(train_set) - n_pos} negative "
                                "patches; both classes are needed")
    return val_set


class _Training:
    """The steps of one :func:`train_model` (construct inside :func:`torch_settings`): seeded
    model, optimiser and scheduler, the data on the device, and ``state`` (epoch, history, best
    model, early stopping), which every checkpoint holds whole."""

    def __init__(self, train_set: PatchSet, val_set: PatchSet | None, *, model_config: ModelConfig,
                 config: TrainConfig, out_dir: Path, dev: torch.device):
        self.train_set, self.val_set, self.config, self.model_config = train_set, val_set, config, model_config
        self.out_dir, self.dev = out_dir, dev
        self.fmt = torch.channels_last_3d if dev.type == "cpu" else torch.contiguous_format
        self.y_val = val_set.label.astype(np.int64) if val_set is not None else None
        two = val_set is not None and 0 < self.y_val.sum() < len(self.y_val)
        self.monitor = "val_roc_auc" if two else ("val_loss" if val_set is not None else "train_loss")
        self.data = _fingerprint(train_set, val_set)
        torch.manual_seed(config.seed)
        self.model = CellCNN(model_config).to(dev).to(memory_format=self.fmt)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="min", factor=0.5, patience=1)
                      if config.lr_schedule == "plateau" else None)
        self.state = {"epoch": 0, "history": [], "best_state": None, "best_epoch": 0,
                      "best_metric": None, "best_threshold": 0.5, "bad_epochs": 0, "stopped": False}
        y_train = train_set.label.astype(np.float32)  # no random numbers drawn from here on
        n_pos, n_neg = int(y_train.sum()), len(y_train) - int(y_train.sum())
        self.x_train = torch.from_numpy(train_set.patches).unsqueeze(1).to(dev)
        self.t_train = torch.from_numpy(y_train).to(dev)
        self.x_val = torch.from_numpy(val_set.patches).unsqueeze(1).to(dev) if val_set is not None else None
        self.pos_weight = torch.tensor(n_neg / n_pos, device=dev) if config.balance == "weighted" else None
        self.sample_p = None
        if config.balance == "sampler":
            self.sample_p = np.where(y_train > 0, 0.5 / n_pos, 0.5 / n_neg)
            self.sample_p /= self.sample_p.sum()

    def start(self, *, resume: bool, init_state: dict | None) -> None:
        """Resume from ``checkpoint.pt`` (same model config; model, optimiser, scheduler, torch RNG,
        state), else start from ``init_state`` (fine-tuning; the RNG restarts from the seed)."""
        ckpt_path = self.out_dir / "checkpoint.pt"
        if not (resume and ckpt_path.exists()):
            if init_state is not None:
                self.model.load_state_dict(init_state)
                torch.set_rng_state(torch.Generator().manual_seed(int(self.config.seed)).get_state())
            return
        try:
            ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            if ck.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("format tag missing")
        except Exception as exc:
            raise ClarityInputError(f"{ckpt_path}: unreadable training checkpoint ({exc}); "
                                    "delete it or pass resume=False") from None
        if ModelConfig.from_dict(ck["model_config"]) != self.model_config:
            raise ClarityInputError(
                f"{ckpt_path}: checkpoint of model config {ck['model_config']} does not match "
                f"{self.model_config.to_dict()}; pass resume=False or use another out_dir")
        if ck.get("data") and ck["data"] != self.data:
            warnings.warn(f"{ckpt_path}: resuming on other patches than the checkpoint was "
                          f"trained on ({ck['data']} vs {self.data})", stacklevel=3)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.sched is not None and ck.get("scheduler"):
            self.sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        for k in self.state:
            self.state[k] = ck[k]

    def epoch(self, epoch: int, *, progress: bool) -> tuple[dict, np.ndarray | None, int]:
        """One epoch (seeded batch order, augmentation and dropout; the learning rate) and its
        validation; returns the history row, the validation probabilities and the epoch's seed."""
        cfg, t0 = self.config, time.perf_counter()
        eseed = _epoch_seed(cfg.seed, epoch)
        rng = np.random.default_rng(eseed)
        torch.manual_seed(eseed)  # dropout
        if cfg.lr_schedule == "cosine":
            for g in self.opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
        lr = float(self.opt.param_groups[0]["lr"])
        n = len(self.t_train)
        order = rng.choice(n, size=n, p=self.sample_p) if self.sample_p is not None else rng.permutation(n)
        order = torch.from_numpy(order).to(self.dev)
        bar = tqdm(total=len(order), desc=f"epoch {epoch}", unit="patch", unit_scale=True, leave=False,
                   disable=not progress)
        train_loss = self.train_pass(order, rng, bar, epoch=epoch)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": float("nan"),
               "val_roc_auc": float("nan"), "val_pr_auc": float("nan"), "lr": lr}
        val_prob = None
        if self.x_val is not None:
            m = _metrics(self.y_val, self.val_logits())
            val_prob = m.pop("prob")
            row.update(m)
        row["seconds"] = time.perf_counter() - t0
        return row, val_prob, eseed

    def train_pass(self, order: torch.Tensor, rng: np.random.Generator, bar, *, epoch: int = 1) -> float:
        """One pass over ``x_train[order]`` in batches; returns the mean training loss per patch.
        With the one-cycle schedule the learning rate is set before every step."""
        self.model.train()
        cfg = self.config
        total, seen, bs = 0.0, 0, cfg.batch_size
        per_epoch = math.ceil(len(order) / bs)
        with bar:
            for i, s in enumerate(range(0, len(order), bs)):
                if cfg.lr_schedule == "onecycle":
                    lr = onecycle_lr((epoch - 1) * per_epoch + i, cfg.epochs * per_epoch, lr=cfg.lr,
                                     warmup=cfg.warmup)
                    for g in self.opt.param_groups:
                        g["lr"] = lr
                idx = order[s:s + bs]
                bar.update(len(idx))
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                xb = augment(self.x_train[idx], rng) if self.config.augment else self.x_train[idx]
                if self.config.intensity:
                    xb = intensity_augment(xb, rng)
                xb = xb.contiguous(memory_format=self.fmt)
                loss = F.binary_cross_entropy_with_logits(self.model(xb), self.t_train[idx],
                                                          pos_weight=self.pos_weight)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
        return total / max(seen, 1)

    def val_logits(self) -> np.ndarray:
        """Logits of the validation patches (eval mode, no gradients)."""
        self.model.eval()
        out, bs = [], self.config.eval_batch_size
        with torch.no_grad():
            for s in range(0, len(self.x_val), bs):
                out.append(self.model(self.x_val[s:s + bs].contiguous(memory_format=self.fmt)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def end_epoch(self, row: dict, val_prob: np.ndarray | None, eseed: int) -> None:
        """Best model, early stopping, scheduler and history after an epoch; then write
        ``history.csv``, ``model.pt`` (when improved) and ``checkpoint.pt``, in that order."""
        state, epoch = self.state, row["epoch"]
        key = _rank_key(row, self.monitor)
        improved = state["best_metric"] is None or key > tuple(state["best_metric"])
        if improved:
            state.update(best_metric=list(key), best_epoch=epoch, bad_epochs=0,
                         best_state=_state_copy(self.model),
                         best_threshold=max_f1_threshold(self.y_val, val_prob) if val_prob is not None else 0.5)
        else:
            state["bad_epochs"] += 1
        if self.sched is not None:
            self.sched.step(row["val_loss"] if self.x_val is not None else row["train_loss"])
        state["history"].append(row)
        state["epoch"] = epoch
        if self.config.patience and state["bad_epochs"] >= self.config.patience:
            state["stopped"] = True
        ck = {"format": CHECKPOINT_FORMAT, "model": _state_copy(self.model), "optimizer": self.opt.state_dict(),
              "scheduler": self.sched.state_dict() if self.sched is not None else None,
              "rng": {"torch": torch.get_rng_state(), "epoch_seed": eseed},
              "model_config": self.model_config.to_dict(), "train_config": self.config.to_dict(),
              "monitor": self.monitor, "data": self.data, **state}
        _write_history(self.out_dir / "history.csv", state["history"])
        if improved:
            self.save_best()
        with atomic_write(self.out_dir / "checkpoint.pt") as tmp:
            torch.save(ck, tmp)

    def finish(self) -> CellCNN:
        """Write ``history.csv`` if missing and ``model.pt``; return the best model in eval mode."""
        if self.state["best_state"] is None:  # epochs=0 and nothing to resume: an untrained model
            self.state["best_state"] = _state_copy(self.model)
        if not (self.out_dir / "history.csv").exists():
            _write_history(self.out_dir / "history.csv", self.state["history"])
        self.save_best()
        best = CellCNN(self.model_config)
        best.load_state_dict(self.state["best_state"])
        return best.to(self.dev).eval()

    def save_best(self) -> Path:
        """Write ``model.pt`` (+ ``config.json``): the best state so far, its threshold, provenance."""
        state, train_set, val_set, config = self.state, self.train_set, self.val_set, self.config
        model = CellCNN(self.model_config)
        model.load_state_dict(state["best_state"])
        best_row = {r["epoch"]: r for r in state["history"]}.get(state["best_epoch"], {})
        provenance = {
            "train_brains": sorted(set(train_set.brain.tolist())),
            "val_brains": sorted(set(val_set.brain.tolist())) if val_set is not None else [],
            "seed": config.seed, "model_config": self.model_config.to_dict(), "train_config": config.to_dict(),
            "n_train": len(train_set), "n_train_pos": int(train_set.label.sum()),
            "n_val": len(val_set) if val_set is not None else 0,
            "n_val_pos": int(val_set.label.sum()) if val_set is not None else 0,
            "best_epoch": int(state["best_epoch"]), "epochs_run": int(state["epoch"]), "monitor": self.monitor,
            "best_metrics": {k: best_row.get(k) for k in ("train_loss", "val_loss", "val_roc_auc", "val_pr_auc")},
            "device": str(self.dev),
            "patchset_meta": {k: v for k, v in train_set.meta.items() if k != "normalisation"},
        }
        return save_model(self.out_dir / "model.pt", model, normalisation=train_set.meta.get("normalisation", {}),
                          threshold=float(state["best_threshold"]), provenance=provenance)


def train_model(train_set: PatchSet, val_set: PatchSet | None, *,
                model_config: ModelConfig | None = None, config: TrainConfig | None = None,
                out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
                device: str | torch.device | None = None, init_state: dict | None = None) -> TrainResult:
    """Train a :class:`CellCNN` with AdamW and BCE loss, checkpointing every epoch.

    Parameters
    ----------
    train_set : PatchSet
        Patches (N, P, P, P), axes (z, y, x), and labels; ``train_set.meta["normalisation"]``
        is stored with the model.
    val_set : PatchSet or None
        Validation patches: model selection, early stopping and the decision threshold.
    model_config : ModelConfig, keyword-only
        Default ``ModelConfig(patch_size=train_set.patch_size)``.
    config : TrainConfig, keyword-only
    out_dir : path, keyword-only
        Receives ``checkpoint.pt``, ``history.csv``, ``model.pt`` and ``config.json``.
    resume : bool, keyword-only
        Continue from ``out_dir/checkpoint.pt`` if there is one (same model config needed);
        epochs already done are not redone. A run that stopped early stays stopped.
        ``False`` starts over and overwrites.
    progress : bool, keyword-only
        tqdm progress bars (epochs and batches).
    init_state : dict, keyword-only
        Weights (a ``CellCNN`` state dict) to start from instead of the seeded initialisation:
        fine-tuning. Ignored when a checkpoint is resumed.
    device : str or torch.device, keyword-only
        Default: CUDA when available, else CPU.

    Returns
    -------
    TrainResult
    """
    config = config or TrainConfig()
    model_config = model_config or ModelConfig(patch_size=train_set.patch_size)
    val_set = _checked_sets(train_set, val_set, model_config.patch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    with torch_settings(dev, config.num_threads):
        run = _Training(train_set, val_set, model_config=model_config, config=config, out_dir=out_dir, dev=dev)
        run.start(resume=resume, init_state=init_state)
        start = run.state["epoch"] + 1
        epochs = tqdm(range(start, config.epochs + 1), desc="training", unit="epoch",
                      disable=not progress or run.state["stopped"], initial=start - 1, total=config.epochs)
        for epoch in epochs:
            if run.state["stopped"]:
                break
            row, val_prob, eseed = run.epoch(epoch, progress=progress)
            run.end_epoch(row, val_prob, eseed)
            epochs.set_postfix(loss=f"{row['train_loss']:.4f}", auc=f"{row['val_roc_auc']:.4f}")
            if run.state["stopped"]:
                break
        epochs.close()
        best = run.finish()
    return TrainResult(model=best, history=_history_frame(run.state["history"]),
                       best_epoch=int(run.state["best_epoch"]), out_dir=out_dir,
                       model_path=out_dir / "model.pt", threshold=float(run.state["best_threshold"]))
