"""The flow's NLL forward + backward captured in one CUDA graph (training step without kernel-launch overhead).

A MaCow step launches ~14k small kernels per forward on 8x8 maps, so on a GPU eager training is bound by the CPU
launching them, and bf16 brings nothing. Replaying a captured graph removes that cost: 4.1x the fp32 eager
throughput on an H100 at the reference size (docs/cinn.md). The optimiser step stays outside the graph (one fused
kernel per parameter group).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ipoke.losses.flow import gaussian_nll
from ipoke.models.cinn.network import ConditionalINN


class GraphedNLLStep:
    """Computes ``gaussian_nll(*flow(z, h))`` and fills the flow's ``.grad`` s, through a CUDA graph when possible.

    Usage per training step: ``terms = step(z, h)`` then ``optimizer.step()`` (no ``zero_grad`` needed: every call
    overwrites the gradients). The graph writes the gradients into tensors it owns and re-attaches them as the
    parameters' ``.grad`` on every replay, so a ``zero_grad(set_to_none=True)`` elsewhere does no harm. The first
    ``warmup_steps`` calls (and every call off CUDA, or with a new batch shape) run eagerly.

    Args:
        flow: The cINN being trained (its ActNorm must be initialised before the capture, i.e. within the warm-up).
        warmup_steps: Eager steps before the capture (CUDA's allocator and cuDNN settle during them).
    """

    def __init__(self, flow: ConditionalINN, *, warmup_steps: int = 3):
        self.flow = flow
        self.warmup_steps = warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self._shapes: tuple | None = None
        self._static_inputs: tuple[Tensor, Tensor] | None = None
        self._static_terms: dict[str, Tensor] | None = None
        self._static_grads: list[tuple[torch.nn.Parameter, Tensor]] = []
        self._eager_calls = 0

    @property
    def captured(self) -> bool:
        """Whether steps now replay the graph."""
        return self.graph is not None

    def _terms(self, z: Tensor, h: Tensor) -> dict[str, Tensor]:
        r, log_det = self.flow(z, h)
        loss = gaussian_nll(r, log_det)
        return {"nll": loss, "log_det": log_det.detach().float().mean(),
                "half_squared_norm": 0.5 * r.detach().float().pow(2).flatten(1).sum(1).mean()}

    def _eager(self, z: Tensor, h: Tensor) -> dict[str, Tensor]:
        self.flow.zero_grad(set_to_none=True)
        terms = self._terms(z, h)
        terms["nll"].backward()
        terms["nll"] = terms["nll"].detach()
        return terms

    def __call__(self, z: Tensor, h: Tensor) -> dict[str, Tensor]:
        """One forward + backward on ``z`` ``(B, z_dim, S, S)`` given ``h`` ``(B, C_h, S, S)``.

        Returns:
            ``{"nll", "log_det", "half_squared_norm"}`` as detached scalars (copies, safe to keep).
        """
        shapes = (tuple(z.shape), tuple(h.shape), z.dtype, z.device)
        if z.device.type != "cuda":
            return self._eager(z, h)
        if self.graph is not None and shapes == self._shapes:
            static_z, static_h = self._static_inputs
            static_z.copy_(z)
            static_h.copy_(h)
            self.graph.replay()
            self._attach_grads()
            return {key: value.clone() for key, value in self._static_terms.items()}
        if self._eager_calls < self.warmup_steps or not self.flow.actnorm_initialized:
            self._eager_calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                terms = self._eager(z, h)
            torch.cuda.current_stream().wait_stream(side)
            return terms
        return self._capture(z, h, shapes)

    def _capture(self, z: Tensor, h: Tensor, shapes: tuple) -> dict[str, Tensor]:
        # A new shape (e.g. a short last batch without drop_last) replaces the old graph.
        self.graph = None
        self._static_inputs = (z.detach().clone(), h.detach().clone())
        self.flow.zero_grad(set_to_none=True)
        autocast_on = torch.is_autocast_enabled("cuda")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            # The autocast weight cache would hold tensors created outside the graph's memory pool.
            with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=autocast_on,
                                cache_enabled=False):
                terms = self._terms(*self._static_inputs)
            terms["nll"].backward()
            terms["nll"] = terms["nll"].detach()
        self.graph, self._shapes, self._static_terms = graph, shapes, terms
        self._static_grads = [(p, p.grad) for p in self.flow.parameters() if p.grad is not None]
        graph.replay()
        return {key: value.clone() for key, value in terms.items()}

    def _attach_grads(self) -> None:
        for parameter, grad in self._static_grads:
            if parameter.grad is not grad:
                parameter.grad = grad
