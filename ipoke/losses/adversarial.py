"""Adversarial losses as pure functions of discriminator outputs (the discriminators live in ipoke.models)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``; logits of any shape. Returns a scalar."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``-mean(D(fake))``; logits of any shape. Returns a scalar."""
    return -fake_logits.mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty ``E[||grad_x D(x)||^2]`` on real data (Mescheder et al. 2018), without the 1/2 factor.

    Args:
        real_logits: Discriminator output for ``real_inputs`` (any shape), built with ``create_graph`` possible.
        real_inputs: The real batch, with ``requires_grad=True`` set before the discriminator call.

    Returns:
        Scalar: squared gradient norm per sample, averaged over the batch.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(dim=1).mean()


def feature_matching_loss(real_features: Sequence[torch.Tensor], fake_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the L1 distance between fake and (detached) real discriminator features. Scalar."""
    if len(real_features) != len(fake_features) or not real_features:
        raise ValueError(f"need the same non-zero number of feature maps, got {len(real_features)} and "
                         f"{len(fake_features)}")
    losses = [(fake - real.detach()).abs().mean() for real, fake in zip(real_features, fake_features)]
    return torch.stack(losses).mean()


def adaptive_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance ``||grad rec|| / ||grad gan||`` at the decoder's last layer, detached and clamped.

    Args:
        reconstruction_loss: Scalar reconstruction loss with a graph through ``last_layer``.
        generator_loss: Scalar adversarial generator loss with a graph through ``last_layer``.
        last_layer: Weight of the decoder's output layer.
        max_weight: Upper clamp.

    Returns:
        Scalar weight for the adversarial term.
    """
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
