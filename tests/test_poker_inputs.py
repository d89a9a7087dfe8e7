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
    # An (H, W, C) tensor is quoted as given (the message showed the shape after the (C, H, W) permute, (30, 3, 20)).
    (torch.zeros(20, 30, 3), r"image tensors must be \(H, W\) or \(C, H, W\) with C = 1, 3 or 4, got shape "
                             r"\(20, 30, 3\)"),
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


def test_a_pil_image_is_turned_upright_by_its_exif_orientation_as_its_file_is(rgb, tmp_path):
    # A path is decoded by OpenCV, which applies the EXIF orientation; PIL.Image.open of the same file was read as
    # stored (sideways: (30, 20) against the file's (20, 30)).
    from PIL import Image

    for orientation in (3, 6, 8):  # 180 degrees, 90 clockwise, 90 counter-clockwise
        path = tmp_path / f"oriented_{orientation}.jpg"
        picture = Image.fromarray(rgb)
        exif = picture.getexif()
        exif[0x0112] = orientation
        picture.save(path, exif=exif, quality=100)
        from_path = load_image(str(path))
        with Image.open(path) as opened:
            from_pil = load_image(opened)
        assert from_pil.shape == from_path.shape == ((30, 20, 3) if orientation in (6, 8) else (20, 30, 3))
        # The same picture: only the two JPEG decoders' rounding apart.
        assert np.abs(from_pil.astype(int) - from_path.astype(int)).max() <= 3, orientation


def test_sample_and_transfer_refuse_frames_outside_minus_one_to_one(make_tiny_poker):
    # A [0, 255] (or NaN) frame was decoded silently into saturated or NaN videos; load_image refuses such images.
    poker = make_tiny_poker(n_frames=2)
    x0, poke, clip = torch.zeros(1, 3, 64, 64), torch.zeros(1, 2, 64, 64), torch.zeros(1, 3, 3, 64, 64)
    message = r"must hold values in \[-1, 1\], got \[0, 255\]; map \[0, 255\] with x / 127.5 - 1 and \[0, 1\] with"
    bright = x0.clone()
    bright[0, 0, 0, 0] = 255.0
    with pytest.raises(ValueError, match="first_frame " + message):
        poker.sample(bright, poke)
    with pytest.raises(ValueError, match="first_frame must hold values in \\[-1, 1\\], got \\[-3, 0\\]"):
        poker.sample(x0 - 3 * (torch.arange(64) == 5).float(), poke)
    bright_clip = clip.clone()
    bright_clip[0, 1, 2, 3, 4] = 255.0
    with pytest.raises(ValueError, match="source_video " + message):
        poker.transfer(bright_clip, poke, x0)
    with pytest.raises(ValueError, match="target_first_frame " + message):
        poker.transfer(clip, poke, bright)
    for bad in (float("nan"), float("inf")):
        broken = x0.clone()
        broken[0, 2, 10, 10] = bad
        with pytest.raises(ValueError, match="first_frame must hold finite values"):
            poker.sample(broken, poke)
        broken_poke = poke.clone()
        broken_poke[0, 0, 10, 10] = bad
        with pytest.raises(ValueError, match="poke must hold finite values"):
            poker.sample(x0, broken_poke)
    # The edges and a rounding error past them pass, in any float precision; pokes may be long.
    edges = torch.ones(1, 3, 64, 64, dtype=torch.bfloat16)
    edges[0, 0] = -1.0005
    assert poker.sample(edges, poke * 0 + 40.0, n_frames=1).shape == (1, 1, 2, 3, 64, 64)
    assert poker.transfer(clip.double(), poke, x0 + 1.0004).shape == (1, 3, 3, 64, 64)


def test_control_sensitivity_checks_its_inputs_as_sample_does(make_tiny_poker):
    image = np.zeros((64, 64, 3), np.uint8)
    # A half-precision Poker failed inside a coupling ("Input type (float) and bias type (c10::BFloat16)").
    for dtype in (torch.float16, torch.bfloat16):
        half = make_tiny_poker(n_frames=2).to(dtype)
        with pytest.raises(ValueError, match=f"networks are {dtype}; sampling needs float32.*torch.autocast"):
            half.control_sensitivity(image, 30, 30, n_directions=2)
    poker = make_tiny_poker(n_frames=2)
    for bad in ("30", None, True, [30], float("nan")):
        with pytest.raises(ValueError, match=r"x must be a number \(a pixel of the image\)"):
            poker.control_sensitivity(image, bad, 30, n_directions=2)
    with pytest.raises(ValueError, match="y must be a number"):
        poker.control_sensitivity(image, 30, "a", n_directions=2)
    videos, pokes = poker.control_sensitivity(image, np.int64(30), np.float32(30.0), n_directions=2)
    assert videos.shape == (4, 3, 3, 64, 64) and pokes.shape == (4, 4)
    # A row of a poke tensor or array (0-d values) is a number too, as animate takes it.
    same, _ = poker.control_sensitivity(image, torch.tensor([30.0, 30.0])[0], np.array(30.0), n_directions=2, seed=0)
    assert torch.equal(same, poker.control_sensitivity(image, 30, 30, n_directions=2, seed=0)[0])


@pytest.mark.parametrize("device", ["cpu:0", torch.device("cpu", 0), "cpu", torch.device("cpu")])
def test_every_name_of_the_cpu_loads_a_model(tiny_model, device):
    # torch.load cannot restore storages tagged "cpu:0": the model was reported as damaged ("export it again").
    from ipoke.sampling import Poker

    poker = Poker.from_checkpoint(tiny_model, map_location=device)
    assert poker.device == torch.device("cpu")
    with pytest.raises(ValueError, match="the CPU has no index"):
        Poker.from_checkpoint(tiny_model, map_location="cpu:1")
