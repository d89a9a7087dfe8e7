"""Every invertible block of the cINN: exact inverse, log-det against a numerical Jacobian, causality, ActNorm init."""

from __future__ import annotations

import copy

import pytest
import torch

from ipoke.models.cinn import ActNorm, AffineCoupling, ChannelShuffle, MaCowStep, MaCowUnit, MaskedConvFlow
from ipoke.models.cinn.macow import MultiScalePrior

CHANNELS, SIZE, COND = 4, 4, 3
SHAPE = (CHANNELS, SIZE, SIZE)
COND_SHAPE = (COND, SIZE, SIZE)


def perturb(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised output layers make every block the identity; add noise so the tests see real transforms."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module


def make_block(name: str) -> tuple[torch.nn.Module, bool]:
    """A float64 block in eval mode and whether it takes a condition."""
    cond = [COND_SHAPE]
    blocks = {
        "actnorm": (lambda: ActNorm([SHAPE]), False),
        "shuffle": (lambda: ChannelShuffle([SHAPE], seed=3), False),
        "coupling_continuous_up": (lambda: AffineCoupling([SHAPE], hidden_channels=8, direction="up"), False),
        "coupling_continuous_down_cond": (
            lambda: AffineCoupling([SHAPE], cond, hidden_channels=8, direction="down"), True),
        "coupling_interleaved_up_cond": (
            lambda: AffineCoupling([SHAPE], cond, hidden_channels=8, split="interleaved", direction="up"), True),
        "coupling_interleaved_down": (
            lambda: AffineCoupling([SHAPE], hidden_channels=8, split="interleaved", direction="down"), False),
        "coupling_prior_k1": (
            lambda: AffineCoupling([SHAPE], hidden_channels=8, transformed_channels=1), False),
        "mcf_top": (lambda: MaskedConvFlow([SHAPE], cond, order="top"), True),
        "mcf_bottom": (lambda: MaskedConvFlow([SHAPE], cond, order="bottom"), True),
        "mcf_left": (lambda: MaskedConvFlow([SHAPE], cond, order="left"), True),
        "mcf_right_uncond": (lambda: MaskedConvFlow([SHAPE], order="right", hidden_channels=5), False),
        "macow_unit": (lambda: MaCowUnit([SHAPE], cond), True),
        "macow_step": (lambda: MaCowStep([SHAPE], cond, hidden_channels=8, seed=1), True),
        "multiscale_prior": (lambda: MultiScalePrior([SHAPE], factored_channels=1, hidden_channels=8), False),
    }
    factory, conditional = blocks[name]
    # Deep composites get smaller noise: random weights of unit size would push the bounded scales towards 0 and
    # make the inverse divide by ~1e-30.
    scale = 0.03 if name.startswith("macow") else 0.2
    block = perturb(factory().double(), scale).eval()
    return block, conditional


BLOCK_NAMES = [
    "actnorm", "shuffle", "coupling_continuous_up", "coupling_continuous_down_cond", "coupling_interleaved_up_cond",
    "coupling_interleaved_down", "coupling_prior_k1", "mcf_top", "mcf_bottom", "mcf_left", "mcf_right_uncond",
    "macow_unit", "macow_step", "multiscale_prior",
]


def _inputs(batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *SHAPE, generator=generator, dtype=torch.float64)
    h = torch.randn(batch, *COND_SHAPE, generator=generator, dtype=torch.float64)
    return x, h


def _per_sample(log_det, batch: int) -> torch.Tensor:
    return torch.zeros(batch, dtype=torch.float64) + log_det


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_block_inverts_and_log_dets_cancel(name):
    block, conditional = make_block(name)
    x, h = _inputs()
    c = [h] if conditional else []
    (y,), log_det = block([x], c=c)
    (x_back,), log_det_rev = block([y], c=c, rev=True)
    assert y.shape == x.shape
    assert not torch.allclose(y, x), "the perturbed block should not be the identity"
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(_per_sample(log_det, 3) + _per_sample(log_det_rev, 3),
                               torch.zeros(3, dtype=torch.float64), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_block_log_det_matches_numerical_jacobian(name):
    block, conditional = make_block(name)
    x, h = _inputs(batch=1)
    c = [h] if conditional else []

    def f(flat):
        return block([flat.view(1, *SHAPE)], c=c)[0][0].flatten()

    jacobian = torch.autograd.functional.jacobian(f, x.flatten())
    sign, expected = torch.linalg.slogdet(jacobian)
    assert sign != 0
    (_,), log_det = block([x], c=c)
    torch.testing.assert_close(_per_sample(log_det, 1), expected.view(1), atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("name", ["coupling_continuous_down_cond", "coupling_interleaved_up_cond", "mcf_top",
                                  "mcf_left", "macow_step"])
def test_condition_changes_the_output(name):
    block, _ = make_block(name)
    x, h = _inputs()
    (y1,), ld1 = block([x], c=[h])
    (y2,), ld2 = block([x], c=[h + 1.0])
    assert (y1 - y2).abs().max() > 1e-3
    assert (ld1 - ld2).abs().max() > 1e-6


# Pixel (i, j) in the canonical frame of each order, mapped back to image coordinates: "before" means strictly earlier
# rows for top, later rows for bottom, earlier columns for left, later columns for right.
def _is_before(order: str, target: tuple[int, int], source: tuple[int, int]) -> bool:
    (ti, tj), (si, sj) = target, source
    return {"top": si < ti, "bottom": si > ti, "left": sj < tj, "right": sj > tj}[order]


@pytest.mark.parametrize("order", ["top", "bottom", "left", "right"])
def test_masked_conv_flow_is_causal_in_its_order(order):
    block = perturb(MaskedConvFlow([SHAPE], order=order).double()).eval()
    x, _ = _inputs(batch=1)
    jacobian = torch.autograd.functional.jacobian(lambda t: block([t])[0][0], x).view(*SHAPE, *SHAPE)
    dependent = jacobian.abs().amax(dim=(0, 3)) > 0  # (H, W, H, W): output pixel depends on input pixel
    receptive = 0
    for ti in range(SIZE):
        for tj in range(SIZE):
            for si in range(SIZE):
                for sj in range(SIZE):
                    same = (ti, tj) == (si, sj)
                    if dependent[ti, tj, si, sj] and not same:
                        assert _is_before(order, (ti, tj), (si, sj)), (order, (ti, tj), (si, sj))
                        receptive += 1
    # The 2x3 (or 3x2) causal kernel really reaches the neighbouring pixels (not a block that ignores its input).
    assert receptive >= 2 * (SIZE - 1) * SIZE
    # Within a pixel, channels only scale themselves: the diagonal (per-pixel) Jacobian is diagonal in channels.
    per_pixel = torch.stack([jacobian[:, i, j, :, i, j] for i in range(SIZE) for j in range(SIZE)])
    off_diagonal = per_pixel - torch.diag_embed(torch.diagonal(per_pixel, dim1=1, dim2=2))
    assert off_diagonal.abs().max() == 0


def test_masked_conv_inverse_is_differentiable():
    block = perturb(MaskedConvFlow([SHAPE], [COND_SHAPE], order="right").double())
    x, h = _inputs()
    h.requires_grad_(True)
    (z,), _ = block([x], c=[h], rev=True)
    z.square().sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_actnorm_data_dependent_init_standardises_the_first_training_batch_only():
    layer = ActNorm([SHAPE]).double().train()
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.5, 2.0, 3.0, 10.0], dtype=torch.float64).view(1, -1, 1, 1)
    x = torch.randn(16, *SHAPE, generator=generator, dtype=torch.float64) * scale + 4.0
    assert layer.initialized.item() == 0
    (y,), log_det = layer([x])
    assert layer.initialized.item() == 1
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(CHANNELS, dtype=torch.float64), atol=1e-10,
                               rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(CHANNELS, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    expected = -torch.log(x.std(dim=(0, 2, 3), unbiased=False)).sum() * SIZE * SIZE
    torch.testing.assert_close(log_det, expected.expand(16), atol=1e-4, rtol=0)
    # A second batch does not re-initialise.
    before = layer.log_scale.detach().clone()
    layer([x * 7.0])
    torch.testing.assert_close(layer.log_scale.detach(), before, atol=0, rtol=0)


def test_actnorm_init_flag_travels_in_the_state_dict():
    layer = ActNorm([SHAPE]).train()
    layer([torch.randn(8, *SHAPE) * 3 + 1])
    loaded = ActNorm([SHAPE]).train()
    loaded.load_state_dict(layer.state_dict())
    x = torch.randn(8, *SHAPE) * 100
    torch.testing.assert_close(loaded([x])[0][0], layer([x])[0][0], atol=0, rtol=0)
    assert loaded.initialized.item() == 1


def test_actnorm_is_not_initialised_in_eval_or_reverse():
    layer = ActNorm([SHAPE]).eval()
    x = torch.randn(4, *SHAPE) + 5
    (y,), _ = layer([x])
    torch.testing.assert_close(y, x)
    layer.train()
    layer([x], rev=True)
    assert layer.initialized.item() == 0


def test_channel_shuffle_depends_on_seed_only():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    a = ChannelShuffle([(8, 1, 1)], seed=5)([x])[0][0].flatten()
    b = ChannelShuffle([(8, 1, 1)], seed=5)([x])[0][0].flatten()
    c = ChannelShuffle([(8, 1, 1)], seed=6)([x])[0][0].flatten()
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert sorted(a.tolist()) == list(range(8))


def test_zero_initialised_blocks_are_the_identity():
    x, h = _inputs()
    for block in (MaCowStep([SHAPE], [COND_SHAPE], hidden_channels=8).double().eval(),
                  MultiScalePrior([SHAPE], factored_channels=1, hidden_channels=8).double().eval()):
        shuffles = [m for m in block.modules() if isinstance(m, ChannelShuffle)]
        (y,), log_det = block([x], c=[h] if block.dims_c else [])
        permuted = x
        for shuffle in shuffles:
            permuted = shuffle([permuted])[0][0]
        torch.testing.assert_close(y, permuted, atol=1e-12, rtol=0)
        torch.testing.assert_close(_per_sample(log_det, 3), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_blocks_deepcopy_and_state_dict_round_trip():
    block, _ = make_block("macow_step")
    clone = copy.deepcopy(block)
    fresh = MaCowStep([SHAPE], [COND_SHAPE], hidden_channels=8, seed=1).double().eval()
    fresh.load_state_dict(block.state_dict())
    x, h = _inputs()
    torch.testing.assert_close(fresh([x], c=[h])[0][0], block([x], c=[h])[0][0], atol=0, rtol=0)
    torch.testing.assert_close(clone([x], c=[h])[0][0], block([x], c=[h])[0][0], atol=0, rtol=0)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="order"):
        MaskedConvFlow([SHAPE], order="diagonal")
    with pytest.raises(ValueError, match="split"):
        AffineCoupling([SHAPE], hidden_channels=4, split="checkerboard")
    with pytest.raises(ValueError, match="transform"):
        AffineCoupling([SHAPE], hidden_channels=4, transformed_channels=4)
