"""Optimiser and learning-rate schedule of stage 2, as in the reference (Adam with AMSGrad, warm-up, linear decay)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupLinearDecay:
    """LR factor: linear from ``1/warmup_steps`` to 1 over ``warmup_steps`` steps, then linear to 0 at ``total_steps``.

    A callable object rather than a lambda so that ``LambdaLR.state_dict()`` stores it and checkpoints resume on the
    same schedule. The reference's warm-up starts at exactly 0, which wastes the first step; this starts at
    ``1/warmup_steps``.

    Args:
        warmup_steps: Length of the warm-up (500 in the reference).
        total_steps: Step at which the factor reaches 0 (``n_epochs * batches_per_epoch``, 200k in the reference);
            ``None`` keeps it at 1 after the warm-up.
    """

    def __init__(self, warmup_steps: int = 500, total_steps: int | None = 200_000):
        if total_steps is not None and total_steps <= warmup_steps:
            raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None:
            return 1.0
        return max(0.0, (self.total_steps - step) / (self.total_steps - self.warmup_steps))


def build_flow_optimizer(parameters: Iterable[torch.nn.Parameter], *, lr: float = 1e-3, weight_decay: float = 1e-5,
                         betas: tuple[float, float] = (0.9, 0.999), amsgrad: bool = True, warmup_steps: int = 500,
                         total_steps: int | None = 200_000, fused: bool | None = None,
                         ) -> tuple[torch.optim.Adam, LambdaLR]:
    """Adam (AMSGrad, L2 weight decay as in the reference, not decoupled) with a per-step LR schedule.

    Args:
        parameters: The cINN's parameters (only those are trained in stage 2).
        lr: Peak learning rate.
        weight_decay: L2 penalty added to the gradients (``torch.optim.Adam`` semantics).
        betas: Adam betas.
        amsgrad: Use AMSGrad.
        warmup_steps: See :class:`WarmupLinearDecay`.
        total_steps: See :class:`WarmupLinearDecay`.
        fused: Use the fused CUDA Adam kernel (all parameters on GPU); ``None`` keeps torch's default.

    Returns:
        ``(optimizer, scheduler)``; step the scheduler once per optimiser step (Lightning: ``interval="step"``).
    """
    optimizer = torch.optim.Adam(parameters, lr=lr, betas=betas, weight_decay=weight_decay, amsgrad=amsgrad,
                                 fused=fused)
    scheduler = LambdaLR(optimizer, WarmupLinearDecay(warmup_steps, total_steps))
    return optimizer, scheduler
