"""The CUDA-graph training step gives the same loss and gradients as eager autograd."""

from __future__ import annotations

import pytest
import torch

from ipoke.losses.flow import gaussian_nll
from ipoke.models.cinn import ConditionalINN
from ipoke.models.cinn.graphed import GraphedNLLStep


def _setup(device: str, architecture: str = "macow"):
    torch.manual_seed(0)
    extra = dict(num_steps=[1, 1], factor=4) if architecture == "macow" else dict(num_blocks=3)
    flow = ConditionalINN(z_dim=8, condition_channels=6, spatial_size=8, architecture=architecture,
                          hidden_channels=16, **extra).to(device)
    z = torch.randn(4, 8, 8, 8, device=device)
    h = torch.randn(4, 6, 8, 8, device=device)
    flow.initialize_actnorm(z, h)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return flow.train(), z, h


def _eager_grads(flow, z, h):
    flow.zero_grad(set_to_none=True)
    loss = gaussian_nll(*flow(z, h))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in flow.parameters()]


def test_cpu_falls_back_to_eager_with_identical_results():
    flow, z, h = _setup("cpu")
    loss, grads = _eager_grads(flow, z, h)
    step = GraphedNLLStep(flow)
    terms = step(z, h)
    assert not step.captured
    torch.testing.assert_close(terms["nll"], loss, atol=0, rtol=0)
    for parameter, grad in zip(flow.parameters(), grads):
        torch.testing.assert_close(parameter.grad, grad, atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("architecture", ["macow", "coupling"])
def test_graph_replay_matches_eager_on_cuda(architecture):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    flow, z, h = _setup("cuda", architecture)
    step = GraphedNLLStep(flow, warmup_steps=1)
    step(z, h)                       # eager warm-up
    step(z, h)                       # capture + replay
    assert step.captured
    for seed in (1, 2):              # new data through the same graph
        generator = torch.Generator(device="cuda").manual_seed(seed)
        z2 = torch.randn(z.shape, device="cuda", generator=generator)
        h2 = torch.randn(h.shape, device="cuda", generator=generator)
        terms = step(z2, h2)             # (the eager reference below replaced .grad; the replay re-attaches)
        graph_grads = [p.grad.clone() for p in flow.parameters()]
        loss, grads = _eager_grads(flow, z2, h2)
        torch.testing.assert_close(terms["nll"], loss, atol=1e-4, rtol=1e-5)
        for graph_grad, grad in zip(graph_grads, grads):
            torch.testing.assert_close(graph_grad, grad, atol=1e-4, rtol=1e-4)
