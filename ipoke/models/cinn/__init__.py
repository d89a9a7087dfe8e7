"""Stage 2 of iPOKE: the conditional invertible network (cINN) ``r = tau(z | h)`` and its building blocks."""

from ipoke.models.cinn.blocks import ActNorm, AffineCoupling, ChannelShuffle, MaskedConvFlow
from ipoke.models.cinn.condition import stage2_condition, static_latent
from ipoke.models.cinn.coupling import build_coupling_flow
from ipoke.models.cinn.graphed import GraphedNLLStep
from ipoke.models.cinn.macow import MaCowMultiScale, MaCowStep, MaCowUnit, MultiScalePrior
from ipoke.models.cinn.network import ConditionalINN, broadcast_actnorm
from ipoke.models.cinn.optim import WarmupLinearDecay, build_flow_optimizer

__all__ = [
    "ActNorm", "AffineCoupling", "ChannelShuffle", "MaskedConvFlow", "MaCowStep", "MaCowUnit", "MultiScalePrior",
    "MaCowMultiScale", "build_coupling_flow", "ConditionalINN", "broadcast_actnorm", "WarmupLinearDecay",
    "build_flow_optimizer", "GraphedNLLStep", "static_latent", "stage2_condition",
]
