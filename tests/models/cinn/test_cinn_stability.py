"""Regression: one full-learning-rate Adam step must not blow up a deep MaCow cINN (bug: log-det -3.8e28 at step 1).

A plain zero-initialised output layer of ``fan_in`` weights jumps to ``+-lr`` per weight on Adam's first step, with
signs as coherent as its (ELU, mean > 0) inputs, so every masked convolution / coupling started to amplify its input
and the depth compounded it (reference-size flow: activations 1e14, MCF raw scales -1e25 -> inf NLL). The
weight-normalised output layer (:class:`~ipoke.models.cinn.blocks.ZeroGainConv2d`, as the reference) only moves its
per-channel gain at first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ipoke.losses.flow import gaussian_nll
from ipoke.models.cinn import ConditionalINN, build_flow_optimizer
from ipoke.models.cinn.blocks import ZeroGainConv2d


def _one_full_lr_step(flow: ConditionalINN, z: torch.Tensor, h: torch.Tensor):
    """ActNorm init, then one Adam step at the full learning rate: ``(nll before, nll after, r, log_det after)``.

    A short run's warm-up (PokeINNModule: total_steps // 2 = 1 step) gives the full lr to the very first step.
    """
    flow.initialize_actnorm(z, h)
    optimizer, _ = build_flow_optimizer(flow.parameters(), lr=1e-3, warmup_steps=1, total_steps=10)
    before = gaussian_nll(*flow(z, h))
    before.backward()
    optimizer.step()
    with torch.no_grad():
        r, log_det = flow(z, h)
        return before, gaussian_nll(r, log_det), r, log_det


def test_one_full_lr_adam_step_keeps_a_deep_flow_bounded():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 8, 4, 4, generator=generator) + torch.randn(1, 8, 1, 1, generator=generator)
    h = F.elu(torch.randn(2, 32, 4, 4, generator=generator) + 0.5)  # like the stage-1 embeddings: ELU, mean > 0
    flow = ConditionalINN(z_dim=8, condition_channels=32, spatial_size=4, num_steps=[16, 16], factor=4,
                          hidden_channels=8)
    before, after, r, log_det = _one_full_lr_step(flow, z, h)
    # Before the fix: NLL 54 -> 9821, max |r| 81 (and inf at the reference size); after: ~100 and ~5.
    assert torch.isfinite(r).all() and torch.isfinite(log_det).all()
    assert r.abs().max() < 10
    assert after < 3 * before
    assert all(torch.isfinite(p).all() for p in flow.parameters())


def test_one_full_lr_adam_step_keeps_the_coupling_flow_bounded():
    # The coupling architecture's subnets ended in a plain zero-initialised conv: NLL 1040 -> 1.4e23 in one step.
    # (synthetic_64_coupling.yaml's flow: 16 blocks of width 512.)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(8, 32, 8, 8, generator=generator)
    h = F.elu(2 * torch.randn(8, 128, 8, 8, generator=generator))
    flow = ConditionalINN(z_dim=32, condition_channels=128, spatial_size=8, architecture="coupling", num_blocks=16,
                          hidden_channels=512)
    before, after, r, _ = _one_full_lr_step(flow, z, h)
    assert torch.isfinite(r).all() and r.abs().max() < 10
    assert after < 1.5 * before


def test_zero_gain_conv_starts_at_zero_and_moves_only_its_gain_first():
    layer = ZeroGainConv2d(16, 4, 1)
    x = F.elu(torch.randn(3, 16, 5, 5) + 1)
    assert torch.equal(layer(x), torch.zeros(3, 4, 5, 5))
    (layer(x) * torch.randn(3, 4, 5, 5)).sum().backward()
    assert layer.weight.grad.abs().max() == 0 and layer.gain.grad.abs().max() > 0


def test_zero_gain_conv_loads_a_plain_conv_state_dict_as_the_same_function():
    plain = nn.Conv2d(16, 4, 3, padding=1)
    with torch.no_grad():
        plain.weight[1].zero_()  # a never-trained output channel (all-zero weights) must stay trainable
    layer = ZeroGainConv2d(16, 4, 3, padding=1)
    layer.load_state_dict(plain.state_dict())
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(layer(x), plain(x))
    assert layer.gain[1].item() == 0 and layer.weight[1].abs().sum() > 0
