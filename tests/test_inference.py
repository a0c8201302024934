"""Tests of clarity.inference: the folded patch CNN scores as the network does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clarity.inference import inference_logits, pool2
from clarity.model import CellCNN, ModelConfig, score_patches


def _trained_like(patch_size: int, batchnorm: bool) -> CellCNN:
    torch.manual_seed(0)
    net = CellCNN(ModelConfig(patch_size=patch_size, channels=(4, 8, 8), fc=16, batchnorm=batchnorm))
    if batchnorm:  # running statistics away from their initial 0 / 1, as after training
        for bn in (net.bn1, net.bn2, net.bn3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.mark.parametrize("shape", [(3, 4, 10, 10, 10), (2, 3, 11, 9, 7), (1, 1, 2, 3, 2)])
def test_strided_pooling_is_max_pool(shape):
    x = torch.randn(*shape)
    assert torch.equal(pool2(x), F.max_pool3d(x, 2))


@pytest.mark.parametrize("patch_size,batchnorm", [(12, True), (12, False), (13, True), (16, True)])
def test_folded_logits_equal_the_network_in_eval_mode(patch_size, batchnorm):
    net = _trained_like(patch_size, batchnorm).eval()
    x = torch.randn(40, 1, patch_size, patch_size, patch_size)
    with torch.no_grad():
        want = net(x)
    got = inference_logits(net, x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # whatever the module's mode: running statistics, no dropout
    net.train()
    torch.testing.assert_close(inference_logits(net, x), want, atol=1e-5, rtol=1e-5)


def test_folded_weights_follow_changed_weights():
    net = _trained_like(12, True).eval()
    x = torch.randn(8, 1, 12, 12, 12)
    before = inference_logits(net, x)
    with torch.no_grad():
        net.conv2.weight.mul_(1.5)     # in place, as an optimiser step does
        net.bn3.running_mean.add_(0.3)
    with torch.no_grad():
        want = net(x)
    after = inference_logits(net, x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, atol=1e-5, rtol=1e-5)
    other = _trained_like(12, True)
    other.load_state_dict({k: v * 0.5 if v.is_floating_point() else v for k, v in net.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(inference_logits(other.eval(), x), other(x), atol=1e-5, rtol=1e-5)


def test_score_patches_uses_a_subclass_forward():
    class Flipped(CellCNN):
        def forward(self, x):
            return -super().forward(x)

    net = _trained_like(12, True)
    sub = Flipped(net.config)
    sub.load_state_dict(net.state_dict())
    p = np.random.default_rng(0).normal(size=(10, 12, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(score_patches(sub, p), 1 - score_patches(net, p), atol=1e-5)
