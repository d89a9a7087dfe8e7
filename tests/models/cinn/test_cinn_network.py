"""The whole cINN (both architectures): inverse, log-det, conditioning, sampling, saving, learning, optimiser."""

from __future__ import annotations

import pytest
import torch

from ipoke.losses.flow import gaussian_nll
from ipoke.models.base import save_pretrained
from ipoke.models.cinn import ConditionalINN, WarmupLinearDecay, build_flow_optimizer

Z_DIM, COND, SIZE = 8, 6, 4
STEPS = 60  # optimisation steps of the overfitting test (~15 s for MaCow on one busy core)

TINY = {
    "macow": dict(architecture="macow", num_steps=[2, 1], factor=4, hidden_channels=16),
    "coupling": dict(architecture="coupling", num_blocks=4, hidden_channels=16),
}


def tiny_inn(architecture: str, **overrides) -> ConditionalINN:
    kwargs = dict(z_dim=Z_DIM, condition_channels=COND, spatial_size=SIZE, **TINY[architecture])
    kwargs.update(overrides)
    return ConditionalINN(**kwargs)


def data(batch: int = 3, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, Z_DIM, SIZE, SIZE, generator=generator, dtype=dtype)
    h = torch.randn(batch, COND, SIZE, SIZE, generator=generator, dtype=dtype)
    return z, h


def trained_like(architecture: str, dtype=torch.float64) -> ConditionalINN:
    """A tiny cINN whose ActNorms are initialised and whose zero-init layers got noise (not the identity)."""
    model = tiny_inn(architecture).to(dtype)
    z, h = data(batch=8, seed=11, dtype=dtype)
    model.initialize_actnorm(z * 2 + 1, h)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.03 * torch.randn(parameter.shape, generator=generator, dtype=dtype))
    return model.eval()


@pytest.fixture(scope="module", params=["macow", "coupling"])
def model(request) -> ConditionalINN:
    return trained_like(request.param)


def test_forward_inverse_round_trips(model):
    z, h = data()
    r, log_det = model(z, h)
    assert r.shape == z.shape and log_det.shape == (3,)
    assert (r - z).abs().max() > 1e-2
    torch.testing.assert_close(model.inverse(r, h), z, atol=1e-5, rtol=0)
    # Transfer round trip: tau(tau^-1(r | h) | h) == r.
    r2 = torch.randn_like(r)
    torch.testing.assert_close(model(model.inverse(r2, h), h)[0], r2, atol=1e-5, rtol=0)


def test_float32_round_trip():
    model = trained_like("macow", dtype=torch.float32)
    z, h = data(dtype=torch.float32)
    torch.testing.assert_close(model.inverse(model(z, h)[0], h), z, atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", ["macow", "coupling"])
def test_half_precision_inputs_run_the_flow_in_float32(architecture):
    """Under bf16 autocast the frozen encoders give bf16 latents and conditions; the flow promotes them."""
    model = trained_like(architecture, dtype=torch.float32)
    z, h = (part.bfloat16() for part in data(dtype=torch.float32))
    r, log_det = model(z, h)
    assert r.dtype == log_det.dtype == torch.float32
    expected_r, expected_log_det = model(z.float(), h.float())
    torch.testing.assert_close(r, expected_r, atol=0, rtol=0)
    torch.testing.assert_close(log_det, expected_log_det, atol=0, rtol=0)
    assert model.inverse(r, h).dtype == torch.float32


def test_log_det_matches_numerical_jacobian(model):
    z, h = data(batch=1)
    jacobian = torch.autograd.functional.jacobian(
        lambda flat: model(flat.view_as(z), h)[0].flatten(), z.flatten())
    sign, expected = torch.linalg.slogdet(jacobian)
    assert sign != 0
    torch.testing.assert_close(model(z, h)[1], expected.view(1), atol=1e-7, rtol=1e-7)


def test_condition_changes_the_output(model):
    z, h = data()
    r1, log_det1 = model(z, h)
    r2, log_det2 = model(z, torch.roll(h, 1, dims=0))
    assert (r1 - r2).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    assert (log_det1 - log_det2).abs().min() > 1e-6
    assert (model.inverse(r1, h) - model.inverse(r1, h + 0.5)).abs().max() > 1e-3


def test_sampling_is_deterministic_per_generator(model):
    _, h = data(batch=2)
    a = model.sample(h, generator=torch.Generator().manual_seed(1))
    b = model.sample(h, generator=torch.Generator().manual_seed(1))
    c = model.sample(h, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, Z_DIM, SIZE, SIZE) and a.dtype == torch.float64
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - c).abs().max() > 0.1
    # The sample is tau^-1 of a standard normal draw from that generator, drawn in float32 whatever the model's
    # dtype (a float64 draw is another stream: the float64 and float32 models gave unrelated samples).
    r = torch.randn(2, Z_DIM, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).double()
    torch.testing.assert_close(model(a, h)[0], r, atol=1e-5, rtol=0)
    zero_temperature = model.sample(h, temperature=0.0)
    torch.testing.assert_close(zero_temperature, model.inverse(torch.zeros_like(r), h), atol=1e-10, rtol=0)
    for temperature in (-1.0, float("nan"), float("inf")):  # NaN gave an all-NaN z, -1 a mirrored draw
        with pytest.raises(ValueError, match="temperature"):
            model.sample(h, temperature=temperature)


@pytest.mark.parametrize("architecture", ["macow", "coupling"])
def test_state_dict_and_save_pretrained_round_trip(architecture, tmp_path):
    model = trained_like(architecture, dtype=torch.float32)
    fresh = tiny_inn(architecture)
    fresh.load_state_dict(model.state_dict())
    z, h = data(dtype=torch.float32)
    r, log_det = model(z, h)
    assert fresh.actnorm_initialized
    torch.testing.assert_close(fresh.eval()(z, h)[0], r, atol=0, rtol=0)

    directory = save_pretrained(model, tmp_path / "cinn")
    loaded = ConditionalINN.from_checkpoint(directory)
    assert loaded.config == model.config and not loaded.training
    torch.testing.assert_close(loaded(z, h)[0], r, atol=0, rtol=0)
    torch.testing.assert_close(loaded(z, h)[1], log_det, atol=0, rtol=0)


def test_actnorm_initialisation_standardises_the_first_layer():
    model = tiny_inn("coupling").double().eval()
    assert not model.actnorm_initialized
    z, h = data(batch=32)
    z = z * torch.linspace(0.5, 4, Z_DIM, dtype=torch.float64).view(1, -1, 1, 1) + 3
    model.initialize_actnorm(z, h)
    assert model.actnorm_initialized and not model.training, "the mode must be restored"
    first = model.actnorm_layers()[0]
    out = first([z])[0][0]
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(Z_DIM, dtype=torch.float64), atol=1e-8, rtol=0)
    # Zero-initialised couplings keep the whole net affine at init: r is standardised, so 0.5 r^2 ~ D / 2.
    r, _ = model(z, h)
    assert abs(0.5 * r.pow(2).sum(dim=(1, 2, 3)).mean().item() - Z_DIM * SIZE * SIZE / 2) < 1e-3


@pytest.mark.parametrize("architecture", ["macow", "coupling"])
def test_nll_falls_when_overfitting_a_tiny_set(architecture):
    torch.manual_seed(0)
    model = tiny_inn(architecture, hidden_channels=32, **({"num_steps": [1, 1]} if architecture == "macow" else {}))
    generator = torch.Generator().manual_seed(5)
    h = torch.randn(16, COND, SIZE, SIZE, generator=generator)
    mixing = torch.randn(Z_DIM, COND, generator=generator)
    # z is (almost) a function of the condition: a conditional flow can push the NLL far below the marginal one.
    z = torch.einsum("zc,bchw->bzhw", mixing, h) + 0.05 * torch.randn(16, Z_DIM, SIZE, SIZE, generator=generator)
    model.initialize_actnorm(z, h)
    optimizer, scheduler = build_flow_optimizer(model.parameters(), lr=2e-3, warmup_steps=10, total_steps=None)
    model.train()
    with torch.no_grad():
        start = gaussian_nll(*model(z, h)).item()
    for _ in range(STEPS):
        loss = gaussian_nll(*model(z, h))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        end = gaussian_nll(*model.eval()(z, h)).item()
    dims = Z_DIM * SIZE * SIZE
    print(f"{architecture}: NLL {start:.1f} -> {end:.1f} over {STEPS} steps")
    assert end < start - 0.25 * dims, (start, end)


def test_reference_size_parameter_count():
    with torch.device("meta"):
        reference = ConditionalINN(z_dim=32)
    assert round(sum(p.numel() for p in reference.parameters()) / 1e6, 1) == 1054.4


def test_invalid_shapes_and_arguments():
    model = tiny_inn("coupling")
    z, h = data(dtype=torch.float32)
    with pytest.raises(ValueError, match="latent"):
        model(z[:, :4], h)
    with pytest.raises(ValueError, match="condition"):
        model(z, h[:, :2])
    with pytest.raises(ValueError, match="architecture"):
        ConditionalINN(architecture="glow")
    with pytest.raises(ValueError, match="levels"):
        tiny_inn("macow", num_steps=[1, 1, 1, 1])


def test_warmup_then_linear_decay_schedule():
    schedule = WarmupLinearDecay(warmup_steps=500, total_steps=200_000)
    assert schedule(0) == pytest.approx(1 / 500)
    assert schedule(499) == pytest.approx(1.0)
    assert schedule(500) == pytest.approx(1.0)
    assert schedule(100_250) == pytest.approx(0.5)
    assert schedule(200_000) == 0.0 and schedule(250_000) == 0.0
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer, scheduler = build_flow_optimizer([parameter], warmup_steps=4, total_steps=8)
    group = optimizer.param_groups[0]
    assert group["amsgrad"] and group["weight_decay"] == 1e-5 and group["betas"] == (0.9, 0.999)
    lrs = []
    for _ in range(9):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0])
    restored = build_flow_optimizer([parameter], warmup_steps=4, total_steps=8)[1]
    restored.load_state_dict(scheduler.state_dict())
    assert restored.lr_lambdas[0].total_steps == 8


@pytest.mark.parametrize("architecture", ["macow", "coupling"])
def test_static_reference_models_the_latent_relative_to_the_last_condition_channels(architecture):
    torch.manual_seed(0)
    plain = tiny_inn(architecture, condition_channels=COND + Z_DIM).double()
    with_reference = tiny_inn(architecture, condition_channels=COND + Z_DIM, static_reference=True).double()
    z, h = data(batch=8, seed=4)
    reference = torch.randn_like(z)
    condition = torch.cat([h, reference], dim=1)
    plain.initialize_actnorm(z - reference, condition)
    with torch.no_grad():
        for parameter in plain.parameters():
            parameter.add_(0.03 * torch.randn_like(parameter))
    with_reference.load_state_dict(plain.state_dict())
    plain.eval(), with_reference.eval()
    r, log_det = with_reference(z, condition)
    r_plain, log_det_plain = plain(z - reference, condition)
    # A shift by the reference: same residual and log-determinant as the plain flow on z - z_static.
    torch.testing.assert_close(r, r_plain, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det, log_det_plain, atol=1e-12, rtol=0)
    torch.testing.assert_close(with_reference.inverse(r, condition), z, atol=1e-5, rtol=0)
    # z equal to the reference (a motionless clip) maps to what the plain flow gives for a zero latent.
    torch.testing.assert_close(with_reference(reference, condition)[0], plain(torch.zeros_like(z), condition)[0],
                               atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="static_reference"):
        tiny_inn(architecture, condition_channels=Z_DIM, static_reference=True)


def test_invalid_sizes_are_refused_by_name():
    # Before: ZeroDivisionError (factor 0), a convolution error (hidden_channels 0), or, for num_steps [], an
    # identity "flow" that built and trained nothing.
    valid = dict(z_dim=8, condition_channels=8, spatial_size=4, hidden_channels=8, num_steps=[1, 1], factor=4)
    ConditionalINN(**valid)
    for name, value, minimum in (("z_dim", 1, 2), ("condition_channels", 0, 1), ("spatial_size", 0, 1),
                                 ("hidden_channels", 0, 1), ("factor", 0, 1), ("num_blocks", 0, 1)):
        with pytest.raises(ValueError, match=f"{name} must be a whole number >= {minimum}, got {value}"):
            ConditionalINN(**{**valid, name: value})
    for num_steps in ([], [2, 0], [1.5], 3):
        with pytest.raises(ValueError, match="num_steps must list the MaCow steps of each level"):
            ConditionalINN(**{**valid, "num_steps": num_steps})
