"""What Poker accepts as an image, and the clear errors for inputs it cannot honour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ipoke.sampling import load_image


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_every_image_form_gives_the_same_rgb(rgb):
    grey = rgb[:, :, 0]
    float_array = rgb.astype(np.float32) / 127.5 - 1
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    forms = {
        "uint8 (H, W, 3)": (rgb, rgb),
        "int64 (H, W, 3)": (rgb.astype(np.int64), rgb),
        "float (H, W, 3) in [-1, 1]": (float_array, rgb),
        "RGBA (H, W, 4): alpha dropped": (rgba, rgb),
        "grey (H, W)": (grey, np.repeat(grey[:, :, None], 3, axis=2)),
        "grey (H, W, 1)": (grey[:, :, None], np.repeat(grey[:, :, None], 3, axis=2)),
        "uint8 tensor (3, H, W)": (torch.from_numpy(rgb).permute(2, 0, 1), rgb),
        "float tensor (3, H, W)": (torch.from_numpy(float_array).permute(2, 0, 1), rgb),
        "grey tensor (1, H, W)": (torch.from_numpy(grey)[None], np.repeat(grey[:, :, None], 3, axis=2)),
        "grey tensor (H, W)": (torch.from_numpy(grey), np.repeat(grey[:, :, None], 3, axis=2)),
    }
    for name, (image, expected) in forms.items():
        loaded = load_image(image)
        assert loaded.dtype == np.uint8 and loaded.shape == (20, 30, 3), name
        assert np.array_equal(loaded, expected), name


def test_pil_images_of_any_mode_give_their_rgb_pixels(rgb):
    # np.asarray read a palette image's indices as grey, CMYK as RGBA and YCbCr as RGB: another picture, no warning;
    # grey + alpha crashed with an AttributeError.
    from PIL import Image

    picture = Image.fromarray(rgb)
    assert np.array_equal(load_image(picture), rgb)
    assert np.array_equal(load_image(picture.convert("RGBA")), rgb)
    grey = np.asarray(picture.convert("L"))
    for mode in ("L", "LA"):
        assert np.array_equal(load_image(picture.convert(mode)), np.repeat(grey[:, :, None], 3, axis=2)), mode
    palette = picture.quantize(colors=16)
    assert np.array_equal(load_image(palette), np.asarray(palette.convert("RGB"))) and load_image(palette).max() > 16
    ramp = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)  # 16-bit grey, both byte orders
    expected = np.repeat(np.round(ramp / 257.0).astype(np.uint8)[:, :, None], 3, axis=2)
    for mode, dtype in (("I;16", "<u2"), ("I;16B", ">u2")):
        sixteen = Image.frombytes(mode, (30, 20), ramp.astype(dtype).tobytes())
        np.testing.assert_array_equal(load_image(sixteen), expected, err_msg=mode)
    for mode in ("CMYK", "YCbCr"):  # lossy round trips: close to the pixels, unlike the raw channel values
        converted = load_image(picture.convert(mode)).astype(int)
        assert np.abs(converted - rgb).mean() < 3, mode


@pytest.mark.parametrize(("image", "message"), [
    (np.zeros((20, 30, 2), np.uint8), r"\(H, W\) or \(H, W, C\) with C = 1, 3 or 4, got shape \(20, 30, 2\)"),
    (np.zeros((2, 20, 30, 3), np.uint8), r"got shape \(2, 20, 30, 3\)"),
    (np.full((4, 4, 3), 255.0), r"float image arrays must hold values in \[-1, 1\], got \[255, 255\]"),
    (np.full((4, 4, 3), np.nan), "got NaN or infinite values"),
    (np.full((4, 4, 3), 300), r"integer image arrays must hold values in \[0, 255\], got \[300, 300\]"),
    (np.zeros((4, 4, 3), bool), "must hold numbers"),
    (torch.zeros(5, 8, 8), r"image tensors must be \(H, W\) or \(C, H, W\)"),
    # Not an array (cv2.imread of a missing file gives None): the message used to crash on image.shape.
    (None, r"image arrays must be \(H, W\) or \(H, W, C\) with C = 1, 3 or 4, got shape \(\)"),
    ([1, 2, 3], r"got shape \(3,\)"),
])
def test_images_it_cannot_read_are_refused_clearly(image, message):
    with pytest.raises(ValueError, match=message):
        load_image(image)


def test_sample_transfer_and_sensitivity_refuse_what_they_cannot_honour(make_tiny_poker):
    poker = make_tiny_poker(n_frames=2)
    x0, poke = torch.zeros(2, 3, 64, 64), torch.zeros(2, 2, 64, 64)
    refused = {
        "uint8 x0": (lambda: poker.sample(x0.to(torch.uint8), poke), r"first_frame must be a float tensor"),
        "x0 at another size": (lambda: poker.sample(torch.zeros(2, 3, 32, 32), poke),
                               r"first_frame must be a float tensor \(B, 3, S, S\) with S = 64, got \(2, 3, 32, 32\)"),
        "batch mismatch": (lambda: poker.sample(x0, poke[:1]), r"one batch size, got \{'first_frame': 2, 'poke': 1\}"),
        "negative temperature": (lambda: poker.sample(x0, poke, temperature=-1.0), "temperature"),
        "no frames": (lambda: poker.sample(x0, poke, n_frames=0), "n_frames must be a whole number >= 1"),
        "transfer of a frame": (lambda: poker.transfer(x0, poke, x0), r"source_video must be a float tensor"),
        "no magnitudes": (lambda: poker.control_sensitivity(np.zeros((64, 64, 3), np.uint8), 30, 30, magnitudes=[]),
                          "magnitudes must be one or more positive"),
        "no directions": (lambda: poker.control_sensitivity(np.zeros((64, 64, 3), np.uint8), 30, 30, n_directions=0),
                          "n_directions must be a whole number >= 1"),
        "seed out of range": (lambda: poker.animate(np.zeros((64, 64, 3), np.uint8), [[30, 30, 2, 0]], seed=2**64),
                              r"seed must be a whole number in \[-2\*\*63, 2\*\*64\)"),
        "a poke far too long": (lambda: poker.prepare(np.zeros((64, 64, 3), np.uint8), [[30, 30, 1e9, 1]]),
                                r"longer than 4 times the 64 px square"),
        "a seed as generator": (lambda: poker.sample(x0, poke, generator=5),
                                r"generator must be a torch.Generator.*got int.*Poker.animate\(seed=\)"),
        "a one-frame clip to transfer": (lambda: poker.transfer(torch.zeros(2, 1, 3, 64, 64), poke, x0),
                                         "source_video must have 3 frames"),
        "a longer clip to transfer": (lambda: poker.transfer(torch.zeros(2, 5, 3, 64, 64), poke, x0),
                                      r"source_video must have 3 frames \(x0 and the 2 this model generates\), got 5"),
    }
    for call, message in refused.values():
        with pytest.raises(ValueError, match=message):
            call()
    # The checks let the valid calls through: zero temperature is the mode, the same for every sample.
    videos = poker.sample(x0, poke, n_samples=2, temperature=0.0, n_frames=1)
    assert videos.shape == (2, 2, 2, 3, 64, 64) and torch.equal(videos[:, 0], videos[:, 1])
    assert poker.transfer(torch.zeros(2, 3, 3, 64, 64), poke, x0).shape == (2, 3, 3, 64, 64)
    # Float inputs of another precision are cast to the networks' (float64 failed inside the first convolution).
    generator = torch.Generator().manual_seed(3)
    single = poker.sample(x0, poke, generator=generator, n_frames=1)
    double = poker.sample(x0.double(), poke.double(), generator=torch.Generator().manual_seed(3), n_frames=1)
    assert double.dtype == torch.float32 and torch.equal(single, double)
    assert torch.equal(poker.transfer(torch.zeros(2, 3, 3, 64, 64).double(), poke, x0),
                       poker.transfer(torch.zeros(2, 3, 3, 64, 64), poke, x0))
    # A float64 Poker takes float32 inputs everywhere (control_sensitivity failed with a dtype mismatch).
    double_poker = make_tiny_poker(n_frames=2).double()
    videos, pokes = double_poker.control_sensitivity(np.zeros((64, 64, 3), np.uint8), 30, 30, n_directions=2, seed=1)
    assert videos.dtype == torch.float64 and videos.shape == (4, 3, 3, 64, 64) and pokes.shape == (4, 4)
    assert torch.isfinite(videos).all()
    # seed=None in control_sensitivity is a fresh residual (it was refused with a message offering None).
    image = np.zeros((64, 64, 3), np.uint8)
    videos, pokes = poker.control_sensitivity(image, 30, 30, n_directions=2, magnitudes=[4.0], seed=None)
    assert videos.shape == (2, 3, 3, 64, 64) and pokes.shape == (2, 4)
