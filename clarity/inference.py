"""The patch CNN's inference form: BatchNorm folded into the convolutions, pooling by strided maxima.

Scoring patches is most of a whole-volume detection's time on a CPU. Two changes make the same
network ~2.5x faster there without changing what it computes:

- In eval mode a BatchNorm layer is an affine map per channel, so it folds into the weights and
  bias of the convolution before it (``w * g / sqrt(v + eps)``, ``b' = beta + (b - mu) * g /
  sqrt(v + eps)``): one pass over the activations instead of three (convolution, normalisation,
  ReLU become convolution, in-place ReLU).
- ``torch.nn.functional.max_pool3d`` on small batches of 10^3 maps costs more on the CPU than the
  first convolution; the maximum of the eight strided views (``x[..., 0::2]``, ``x[..., 1::2]`` per
  axis) is the same pooling, exactly, at an eighth of the time.

Logits agree with ``CellCNN.forward`` in eval mode to float32 rounding (~1e-6; tested). The folded
weights are cached on the network and rebuilt whenever a parameter or buffer changes (torch's
in-place version counters), so training, ``load_state_dict`` or moving the network never leaves a
stale copy. Layout: plain contiguous (``(B, 1, P, P, P)``, axes z, y, x); channels-last was
measured slower with these layers on the CPU.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["pool2", "folded_layers", "inference_logits"]

_LOCK = threading.Lock()


def pool2(x: torch.Tensor) -> torch.Tensor:
    """Max-pooling with kernel 2 and stride 2 over the last three axes (odd edges dropped, as
    ``F.max_pool3d(x, 2)`` drops them), as the maximum of strided views."""
    d, h, w = x.shape[-3:]
    x = x[..., : d // 2 * 2, : h // 2 * 2, : w // 2 * 2]
    x = torch.maximum(x[..., 0::2, :, :], x[..., 1::2, :, :])
    x = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(x[..., 0::2], x[..., 1::2])


def _fold(conv: nn.Conv3d, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if not isinstance(bn, nn.BatchNorm3d):
        return w.contiguous(), b.contiguous()
    s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return ((w * s.reshape(-1, 1, 1, 1, 1)).contiguous(),
            (bn.bias.detach() + (b - bn.running_mean) * s).contiguous())


def _key(model: nn.Module) -> tuple:
    ts = list(model.parameters()) + list(model.buffers())
    return tuple((t.data_ptr(), t._version, str(t.device)) for t in ts)


def folded_layers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (weight, bias) of conv1-3 with their BatchNorm folded in, then fc1 and fc2; cached on
    ``model`` until one of its tensors changes."""
    key = _key(model)
    hit = model.__dict__.get("_folded")
    if hit is not None and hit[0] == key:
        return hit[1]
    with _LOCK, torch.no_grad():
        layers = [_fold(model.conv1, model.bn1), _fold(model.conv2, model.bn2), _fold(model.conv3, model.bn3),
                  _fold(model.fc1, nn.Identity()), _fold(model.fc2, nn.Identity())]
        model.__dict__["_folded"] = (key, layers)
    return layers


@torch.no_grad()
def inference_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(B,)`` of ``(B, 1, P, P, P)`` patches with inference semantics (running
    BatchNorm statistics, no dropout), whatever the module's mode: ``CellCNN.forward`` in eval
    mode, folded (see the module's docstring)."""
    (w1, b1), (w2, b2), (w3, b3), (w4, b4), (w5, b5) = folded_layers(model)
    x = F.relu_(F.conv3d(x, w1, b1))
    x = pool2(x)
    x = F.relu_(F.conv3d(x, w2, b2))
    x = F.relu_(F.conv3d(x, w3, b3))
    x = F.relu_(F.conv3d(x, w4, b4))
    return F.conv3d(x, w5, b5).reshape(-1)
