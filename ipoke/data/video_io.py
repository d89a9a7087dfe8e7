"""Reading and writing videos: video files through PyAV, folders of frames through OpenCV, GIFs through PIL.

Frames in this module are numpy arrays in RGB order. Readers return uint8 ``(N, H, W, 3)`` (or yield one
``(H, W, 3)`` frame at a time, so a long video never has to sit in memory). Writers accept uint8 or float in
[-1, 1], channel-first ``(T, 3, H, W)`` or channel-last ``(T, H, W, 3)``, numpy or torch, so model outputs can be
written as they are::

    for frame in iter_frames("clip.mp4", frame_step=2):    # uint8 (H, W, 3)
        ...
    frames = read_frames("frames_dir/")                    # uint8 (N, H, W, 3), files in natural order
    write_video("sample.mp4", video[0])                     # video: (B, T, 3, H, W) in [-1, 1]
    write_video("sample.gif", video[0], fps=8)

torchvision 0.29 no longer reads or writes video, hence PyAV (it bundles FFmpeg, so no system package is needed).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".mts", ".m2ts", ".ts",
                    ".3gp", ".flv", ".wmv", ".ogv", ".mxf", ".vob")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RESIZE_MODES = ("crop", "squash")


class VideoReadError(ValueError):
    """A video file or frame folder cannot be read; the message names the file and the problem."""


def natural_sort_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers by value: ``frame_2`` before ``frame_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def is_video_file(path: str | os.PathLike) -> bool:
    """True for an existing file whose extension is a known video container."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def is_image_file(path: str | os.PathLike) -> bool:
    """True for an existing, non-hidden file whose extension is a known image format."""
    path = Path(path)
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder``, in natural order (``frame_2.png`` before ``frame_10.png``)."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: natural_sort_key(p.name))


def is_frame_folder(path: str | os.PathLike) -> bool:
    """True for a folder that directly contains at least one image file."""
    path = Path(path)
    return path.is_dir() and any(is_image_file(p) for p in path.iterdir())


def _ffmpeg_path(path: str | os.PathLike) -> str:
    """``path`` for FFmpeg: absolute, so that a name with a colon (``cam1:take2.mp4``, ``12:00:01.mp4``) is not read
    as a protocol (``Protocol not found``, reported as a damaged video)."""
    return os.path.abspath(path)


def decode_image_file(path: str | os.PathLike) -> np.ndarray | None:
    """An image file as uint8 RGB ``(H, W, 3)`` (grey, 16-bit and RGBA files converted, EXIF orientation applied), or
    None when OpenCV cannot decode it. ``OSError`` when it cannot be read.

    The bytes are read by Python and decoded by ``cv2.imdecode``: ``cv2.imread`` crashed the whole process
    (segmentation fault, a Jupyter kernel included) on a name that is not valid UTF-8, such as ``im\\xe9.png`` from an
    old Windows zip.
    """
    data = np.fromfile(os.fsencode(path) if isinstance(path, str) else path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image_file(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write uint8 RGB ``(H, W, 3)`` in the format of ``path``'s suffix (``cv2.imencode``; see
    :func:`decode_image_file` for why not ``cv2.imwrite``)."""
    ok, encoded = cv2.imencode(Path(path).suffix, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV cannot write the image format of {path}")
    Path(path).write_bytes(encoded.tobytes())


def _read_image(path: Path) -> np.ndarray:
    image = decode_image_file(path)
    if image is None:
        raise VideoReadError(f"cannot read image {path}: not an image OpenCV can decode, or the file is damaged")
    return image


def _iter_video_file(path: Path) -> Iterator[np.ndarray]:
    if path.suffix.lower() == ".gif":  # per-frame delays: read at a constant rate (see _gif_frames)
        yield from _gif_frames(path)[0]
        return
    import av  # imported here so that code which only handles frame folders does not need PyAV

    try:
        container = av.open(_ffmpeg_path(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoReadError(f"cannot open video {path}: {error} (the file is damaged or not a video)") from error
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{path} has no video stream")
        stream = container.streams.video[0]
        # Frame-level threading decodes several frames in parallel; it returns the same frames in the same order.
        stream.thread_type = "AUTO"
        aspect = _sample_aspect(stream)
        index, first_pts, last_pts, last_duration = 0, None, None, None
        try:
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                if aspect != 1:  # non-square pixels (DVD, HDV): stretch to the shape a player shows
                    rgb = stretch_to_display(rgb, aspect)
                yield rgb
                index += 1
                if frame.pts is not None:
                    first_pts = frame.pts if first_pts is None else min(first_pts, frame.pts)
                    if last_pts is None or frame.pts >= last_pts:
                        last_pts, last_duration = frame.pts, getattr(frame, "duration", None)
        except av.FFmpegError as error:
            raise VideoReadError(f"video {path} is damaged: decoding failed after {index} frames ({error})") from error
        # Reached only when every frame was read. FFmpeg hides a cut-off end (an interrupted copy or download): the
        # frames stop early, and the last one of an AVI can be half garbage. The container says where the video ends;
        # timestamps, not frame counts, are compared (variable frame rates, an mp4 edit list keeping part of its
        # samples, an AVI's empty chunks for dropped frames all have fewer frames than rate x duration).
        # The span of the timestamps plus the last frame's own duration (a screen recording can hold its last frame
        # for seconds, which the container's duration includes); an mp4/mov's sample table counts its frames exactly.
        announced = _announced_seconds(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        counted_whole = "avi" not in container.format.name and bool(stream.frames) and index >= stream.frames
        if announced is not None and last_pts is not None and rate and stream.time_base and not counted_whole:
            interval = 1.0 / float(rate)
            last_shown = float(last_duration * stream.time_base) if last_duration else interval
            decoded = float((last_pts - first_pts) * stream.time_base) + max(last_shown, interval)
            if decoded < 0.9 * announced - 2 * interval:
                raise VideoReadError(f"video {path} is damaged: its container announces {announced:.2f} s but the "
                                     f"frames stop after {decoded:.2f} s ({index} frames; the file is probably cut "
                                     "short: copy or re-encode it again)")
    if index == 0:
        raise VideoReadError(f"video {path} has no decodable frames")


def _sample_aspect(stream: Any) -> Fraction:
    """A video stream's pixel aspect ratio (width / height of one pixel as shown; 1 when unknown)."""
    for aspect in (getattr(stream, "sample_aspect_ratio", None),
                   getattr(stream.codec_context, "sample_aspect_ratio", None)):
        if aspect and aspect > 0:
            return Fraction(aspect)
    return Fraction(1)


def stretch_to_display(frame: np.ndarray, aspect: Fraction | float) -> np.ndarray:
    """Resize an ``(H, W, C)`` frame of pixels ``aspect`` times as wide as tall to its display width
    ``round(W * aspect)`` (the height is kept), as video players show it."""
    height, width = frame.shape[:2]
    display_width = max(1, round(width * aspect))
    if display_width == width:
        return frame
    interpolation = cv2.INTER_AREA if display_width < width else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(frame), (display_width, height), interpolation=interpolation)


def video_sample_aspect(path: str | os.PathLike) -> Fraction:
    """The pixel aspect ratio of a video file (1 for square pixels, frame folders and GIFs)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".gif":
        return Fraction(1)
    import av

    try:
        with av.open(_ffmpeg_path(path)) as container:
            return _sample_aspect(container.streams.video[0]) if container.streams.video else Fraction(1)
    except av.FFmpegError as error:
        raise VideoReadError(f"cannot open video {path}: {error}") from error


def _announced_seconds(container: Any, stream: Any) -> float | None:
    """How long a video's container says it is, in seconds: an AVI's frame count from its header over the frame rate
    (its index, and so its duration, is cut off with the file), else the stream's duration, else the file's when no
    other stream (audio) can make it longer; None when it says nothing."""
    rate = stream.average_rate or stream.guessed_rate
    if "avi" in container.format.name and stream.frames and rate:
        return stream.frames / float(rate)
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _same_size_frames(source: Path, frames: Iterator[tuple[str, np.ndarray]]) -> Iterator[np.ndarray]:
    """The frames of ``(label, frame)`` pairs; all must have the size of the first (one video has one frame size)."""
    first: tuple[str, tuple[int, ...]] | None = None
    for label, frame in frames:
        if first is None:
            first = (label, frame.shape)
        elif frame.shape != first[1]:
            (height, width), (other_height, other_width) = first[1][:2], frame.shape[:2]
            kind, remedy = (("frame folder", "resize them, or move frames of another video into their own folder")
                            if source.is_dir() else
                            ("video", "split it where the resolution changes, or re-encode it at one size"))
            raise VideoReadError(
                f"{kind} {source} mixes frame sizes: {first[0]} is {width}x{height} but {label} is "
                f"{other_width}x{other_height} (width x height); all frames of one video must have the same size "
                f"({remedy})")
        yield frame


def iter_frames(source: str | os.PathLike, *, frame_step: int = 1, max_frames: int | None = None
                ) -> Iterator[np.ndarray]:
    """Yield the frames of a video file or frame folder one at a time, as uint8 ``(H, W, 3)`` RGB.

    Args:
        source: A video file (any container FFmpeg reads; mp4, mkv, avi, webm, ...) or a folder of images
            (png, jpg, ...) read in natural order of their names.
        frame_step: Keep every ``frame_step``-th frame (frames 0, k, 2k, ...); the others are still decoded for a
            video file (codecs need them) but not returned.
        max_frames: Stop after this many returned frames.

    Raises:
        VideoReadError: If the source does not exist, is empty, is not a video, cannot be decoded, or its frames
            differ in size (a frame folder of mixed images, or a video whose resolution changes mid-stream).
    """
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    source = Path(source)
    if not source.exists():
        raise VideoReadError(f"{source} does not exist")
    if source.is_dir():
        files = frame_files(source)
        if not files:
            raise VideoReadError(f"frame folder {source} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        labelled = ((path.name, _read_image(path)) for path in files[::frame_step])
    else:
        labelled = ((f"frame {index}", frame) for index, frame in enumerate(_iter_video_file(source))
                    if index % frame_step == 0)
    frames = _same_size_frames(source, labelled)
    if max_frames is not None and max_frames <= 0:
        return
    for count, frame in enumerate(frames, start=1):
        yield frame
        if max_frames is not None and count >= max_frames:
            return  # before reading (and checking) a frame that is not wanted


def read_frames(source: str | os.PathLike, *, frame_step: int = 1, max_frames: int | None = None) -> np.ndarray:
    """Read all frames of a video file or frame folder.

    Args:
        source: A video file or a folder of images (see :func:`iter_frames`).
        frame_step: Keep every ``frame_step``-th frame.
        max_frames: Read at most this many frames.

    Returns:
        uint8 ``(N, H, W, 3)`` RGB frames.

    Raises:
        VideoReadError: If the source cannot be read or its frames differ in size.
    """
    return np.stack(list(iter_frames(source, frame_step=frame_step, max_frames=max_frames)))


def video_fps(path: str | os.PathLike) -> float | None:
    """Frame rate of a video file from its container (None if unknown or for a frame folder); for a GIF, the rate of
    the constant-rate frames that :func:`iter_frames` returns."""
    path = Path(path)
    if path.is_dir():
        return None
    if path.suffix.lower() == ".gif":
        return _gif_frames(path)[1]  # the rate at which iter_frames returns its frames
    import av

    try:
        with av.open(_ffmpeg_path(path)) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except av.FFmpegError as error:
        raise VideoReadError(f"cannot open video {path}: {error}") from error
    return float(rate) if rate else None


def center_crop_square(frame: np.ndarray) -> np.ndarray:
    """The largest centred square of an ``(H, W, ...)`` image (an odd extra pixel is cut at the end)."""
    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return frame[top:top + side, left:left + side]


def resize_frame(frame: np.ndarray, size: int, *, mode: str = "crop") -> np.ndarray:
    """Make an ``(H, W, 3)`` frame square, ``(size, size, 3)``.

    Args:
        frame: uint8 image ``(H, W, C)``.
        size: Output side length S.
        mode: ``"crop"`` (default) cuts the largest centred square, then resizes, so shapes keep their aspect ratio.
            ``"squash"`` resizes the whole frame to S x S and distorts non-square footage; the original iPOKE did
            this (a quirk we keep only as an option, e.g. to compare with its numbers).

    Returns:
        ``(size, size, C)`` image of the same dtype. Shrinking uses area averaging (no aliasing), enlarging bilinear;
        a frame that is already S x S is returned unchanged (copied), so lossless inputs stay exact.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if mode == "crop":
        frame = center_crop_square(frame)
    height, width = frame.shape[:2]
    if (height, width) == (size, size):
        return frame.copy()
    interpolation = cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(frame), (size, size), interpolation=interpolation)


def resize_points(points: np.ndarray, raw_size: tuple[int, int] | list[int], size: int, *,
                  mode: str = "crop") -> np.ndarray:
    """Map pixel coordinates in a raw frame to the frame :func:`resize_frame` makes of it.

    Coordinates are ``(x, y)`` = (column, row) with pixel centres at integers (pixel ``i`` covers
    ``[i - 0.5, i + 0.5]``), the convention of ``cv2.resize``:
    ``x' = (x - left + 0.5) * size / width_kept - 0.5`` and likewise for ``y``, where ``"crop"`` keeps the centred
    square of side ``min(H, W)`` starting at ``left = (W - side) // 2``, ``top = (H - side) // 2`` (as
    :func:`center_crop_square`) and ``"squash"`` keeps the whole frame (per-axis scales ``size / W``, ``size / H``).

    Args:
        points: ``(..., 2)`` array of ``(x, y)`` in raw pixels; NaN for unknown points.
        raw_size: ``(H, W)`` of the raw frame.
        size: Output side S.
        mode: ``"crop"`` or ``"squash"``.

    Returns:
        float32 array of the same shape, ``(x, y)`` in pixels at size S; points outside the kept region (outside
        ``[-0.5, S - 0.5]`` after the mapping) and unknown points are NaN.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    height, width = (int(value) for value in raw_size)
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (..., 2), got {points.shape}")
    if mode == "crop":
        side = min(height, width)
        offset = np.array([(width - side) // 2, (height - side) // 2], np.float64)
        kept = np.array([side, side], np.float64)
    else:
        offset = np.zeros(2)
        kept = np.array([width, height], np.float64)
    mapped = (points - offset + 0.5) * (size / kept) - 0.5
    with np.errstate(invalid="ignore"):
        outside = ((mapped < -0.5) | (mapped > size - 0.5)).any(axis=-1)
    mapped[outside] = np.nan
    mapped[np.isnan(mapped).any(axis=-1)] = np.nan
    return mapped.astype(np.float32)


def to_uint8_frames(frames: Any) -> np.ndarray:
    """Convert a clip to uint8 ``(T, H, W, 3)`` RGB for writing.

    Args:
        frames: numpy array or torch tensor, ``(T, 3, H, W)`` or ``(T, H, W, 3)`` (also 1 channel, repeated to 3).
            Integer values in [0, 255] are kept; floating point values are taken to be in [-1, 1] (the model
            convention) and clipped.

    Returns:
        uint8 ``(T, H, W, 3)``.
    """
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected a clip (T, 3, H, W) or (T, H, W, 3), got shape {frames.shape}")
    channel_first = frames.shape[1] in (1, 3)
    channel_last = frames.shape[-1] in (1, 3)
    if not (channel_first or channel_last):
        raise ValueError(f"expected 1 or 3 colour channels in dim 1 or -1, got shape {frames.shape}")
    # (T, 3, H, 3) is ambiguous; channel-last wins, as images of width 3 are rarer than numpy clips.
    if not channel_last:
        frames = frames.transpose(0, 2, 3, 1)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if frames.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 colour channels, got shape {frames.shape}")
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if np.issubdtype(frames.dtype, np.integer):
        if frames.min() < 0 or frames.max() > 255:
            raise ValueError(f"integer frames must be in [0, 255], got {frames.dtype} in "
                             f"[{frames.min()}, {frames.max()}]")
        return np.ascontiguousarray(frames.astype(np.uint8))
    if np.issubdtype(frames.dtype, np.floating):
        return np.ascontiguousarray(np.round((np.clip(frames, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8))
    raise ValueError(f"frames must be integers in [0, 255] or floats in [-1, 1], got dtype {frames.dtype}")


def write_video(path: str | os.PathLike, frames: Any, *, fps: float = 10.0, codec: str | None = None,
                crf: int = 18) -> Path:
    """Write a clip to a video file or GIF, chosen by the extension of ``path``.

    Args:
        path: ``.mp4`` (H.264, yuv420p: plays everywhere, lossy), ``.gif`` (see :func:`write_gif`), or ``.mkv`` /
            ``.avi`` / ``.mov`` / ``.webm`` with the given ``codec``. For 4:2:0 codecs (mp4, webm) a frame with an odd
            side is padded by repeating its last row/column.
        frames: ``(T, 3, H, W)`` or ``(T, H, W, 3)``, uint8 or float in [-1, 1] (see :func:`to_uint8_frames`).
        fps: Frames per second.
        codec: FFmpeg encoder name. Defaults: ``libx264`` for mp4/mov, ``ffv1`` (lossless) for mkv/avi,
            ``libvpx-vp9`` for webm. ``ffv1`` and ``libx264rgb`` with ``crf=0`` round-trip RGB exactly.
        crf: Quality for x264/VP9 (0 = lossless, 18 = visually lossless, higher = smaller).

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix.lower() == ".gif":
        return write_gif(path, frames, fps=fps)
    frames = to_uint8_frames(frames)
    defaults = {".mp4": "libx264", ".m4v": "libx264", ".mov": "libx264", ".mkv": "ffv1", ".avi": "ffv1",
                ".webm": "libvpx-vp9"}
    codec = codec or defaults.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"no default codec for {path.suffix!r}; pass codec= or use one of {sorted(defaults)}")
    try:
        import av
    except ImportError:
        if path.suffix.lower() == ".mp4" and codec == "libx264":
            return _write_mp4_with_opencv(path, frames, fps=fps)
        message = f"writing {path.suffix} files needs PyAV (`pip install av`), which is not importable"
        raise ImportError(message) from None

    # FFV1 and libx264rgb store RGB planes as they are; everything else goes through 4:2:0 chroma subsampling,
    # which needs even frame sides.
    pixel_formats = {"ffv1": "bgr0", "libx264rgb": "rgb24", "png": "rgb24"}
    pixel_format = pixel_formats.get(codec, "yuv420p")
    if pixel_format == "yuv420p" and (frames.shape[1] % 2 or frames.shape[2] % 2):
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(_ffmpeg_path(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pixel_format
        if codec.startswith("libx264") or codec == "libvpx-vp9":
            stream.options = {"crf": str(crf)}
            if codec == "libvpx-vp9" and crf == 0:
                stream.options = {"lossless": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_mp4_with_opencv(path: Path, frames: np.ndarray, *, fps: float) -> Path:
    """Fallback when PyAV is missing (a declared dependency, but some GPU images lack it): OpenCV's MPEG-4 Part 2
    encoder (``mp4v``; plays in most players, though not in every browser), with a warning."""
    warnings.warn("PyAV is not importable: writing the mp4 with OpenCV's mp4v encoder instead of H.264 "
                  "(`pip install av` for H.264)", stacklevel=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV could not open {path} for writing; install PyAV (`pip install av`)")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def gif_delay_ms(fps: float) -> int:
    """The frame delay of a GIF at ``fps``, in ms: the nearest whole centisecond, which is what GIF stores (Pillow
    truncates milliseconds to centiseconds, so 15 fps as 67 ms played at 16.7 fps, as 60 ms, beside a 15 fps mp4)."""
    return max(1, round(100 / fps)) * 10


def gif_bytes(frames: Any, *, fps: float = 10.0, loop: int = 0, fast: bool = False) -> bytes:
    """An animated GIF of a clip, in memory (arguments as :func:`write_gif`).

    ``fast=True`` builds each frame's palette with Pillow's fast octree instead of its default median cut: about 9x
    faster (9 ms instead of 80 ms for an 11-frame 64 px clip) with a mean colour error of about 1.4 grey levels
    instead of 0.25 (synthetic clips). For previews shown at once (``ipoke app``); files keep the median cut.
    """
    import io

    from PIL import Image

    images = [Image.fromarray(frame) for frame in to_uint8_frames(frames)]
    if fast:
        images = [image.quantize(256, method=Image.Quantize.FASTOCTREE) for image in images]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=gif_delay_ms(fps),
                   loop=loop, optimize=False, disposal=1)
    return buffer.getvalue()


def write_gif(path: str | os.PathLike, frames: Any, *, fps: float = 10.0, loop: int = 0) -> Path:
    """Write a clip as an animated GIF (256-colour palette per frame, so colours are approximate).

    Pillow merges identical consecutive frames into one frame shown for their summed duration: playback timing is
    right, and :func:`read_gif` (and ``ipoke data prepare``) repeat such a frame again when reading.

    Args:
        path: Output file.
        frames: ``(T, 3, H, W)`` or ``(T, H, W, 3)``, uint8 or float in [-1, 1].
        fps: Frames per second (GIF stores the delay in 1/100 s, so it is rounded).
        loop: Number of repeats; 0 loops forever.

    Returns:
        The path written.
    """
    path = Path(path)
    data = gif_bytes(frames, fps=fps, loop=loop)  # before touching the disk: bad frames leave no empty file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _gif_frames(path: str | os.PathLike) -> tuple[list[np.ndarray], float | None]:
    """The frames of an animated GIF at a constant rate, and that rate (frames per second; None if the file stores no
    delays).

    A GIF stores how long each frame is shown, and writers (Pillow among them) merge a run of identical frames into one
    frame shown longer. Each frame is repeated for its delay in units of the shortest delay (rounded), so that, as in
    any other video, one frame index is one time step.
    """
    from PIL import Image, ImageSequence, UnidentifiedImageError

    frames: list[np.ndarray] = []
    delays: list[float] = []
    try:
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                frames.append(np.asarray(frame.convert("RGB")))
                delays.append(float(frame.info.get("duration") or 0))
    except (UnidentifiedImageError, OSError, EOFError) as error:
        raise VideoReadError(f"cannot read GIF {path}: {error} (the file is damaged or not a GIF)") from error
    if not frames:
        raise VideoReadError(f"GIF {path} has no frames")
    repeats, unit = _gif_repeats(delays)
    if unit is None:
        return frames, None
    return [frame for frame, count in zip(frames, repeats) for _ in range(count)], 1000.0 / unit


def _gif_repeats(delays: Sequence[float]) -> tuple[list[int], float | None]:
    """How many time steps each stored frame of a GIF is shown for (its delay in units of the shortest delay,
    rounded, at least 1), and that unit in ms (None, and one step per frame, when the file stores no delays)."""
    shown = [delay for delay in delays if delay > 0]
    if not shown:
        return [1] * len(delays), None
    unit = min(shown)
    return [max(1, round(delay / unit)) for delay in delays], unit


def gif_frame_repeats(path: str | os.PathLike) -> list[int]:
    """For each frame stored in an animated GIF, how many times :func:`iter_frames` (and :func:`read_gif`) return
    it: a frame shown k times as long as the shortest is repeated k times. ``sum`` of the result is the number of
    frames read; its length is the number of stored frames, which other readers (OpenCV, Pillow, imageio) return.

    Raises:
        VideoReadError: If the file cannot be read as a GIF.
    """
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            delays = [float(frame.info.get("duration") or 0) for frame in ImageSequence.Iterator(image)]
    except (UnidentifiedImageError, OSError, EOFError) as error:
        raise VideoReadError(f"cannot read GIF {path}: {error} (the file is damaged or not a GIF)") from error
    return _gif_repeats(delays)[0]


def read_gif(path: str | os.PathLike) -> np.ndarray:
    """Read an animated GIF as uint8 ``(T, H, W, 3)`` RGB at a constant frame rate: a frame shown for k times the
    shortest delay (a run of identical frames that the writer merged) is repeated k times."""
    return np.stack(_gif_frames(path)[0])
