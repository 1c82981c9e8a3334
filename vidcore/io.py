"""Reading and writing images and videos.

- ``export_to_video``: frames -> H.264 mp4 (yuv420p) with PyAV.
- ``export_to_gif``: frames -> looping GIF with Pillow.
- ``load_image``: path, URL or PIL image -> RGB PIL image.
- ``load_video``: path or URL of a video (mp4, webm, mov, ... via PyAV; GIF via Pillow) -> RGB PIL frames.

Frames can be a list of PIL images, a list of ``H x W x 3`` numpy arrays (float in [0, 1] or uint8),
a numpy array ``(F, H, W, 3)``, or a torch tensor ``(F, 3, H, W)`` / ``(F, H, W, 3)`` (float in [0, 1]
or uint8). Writes are atomic: the file is written next to its destination under a temporary name and
renamed into place, so a failed export never leaves a half-written file behind.
"""

from __future__ import annotations

import io
import os
import tempfile
import urllib.parse
import urllib.request
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import PIL.ImageOps
import PIL.ImageSequence
import torch

__all__ = ["export_to_video", "export_to_gif", "load_image", "load_video"]

URL_TIMEOUT_S = 30


# ----------------------------------------------------------------------------- frames -> uint8


def _frames_to_uint8(frames) -> np.ndarray:
    """Any accepted frame container -> uint8 array (F, H, W, 3)."""
    if isinstance(frames, (list, tuple)):
        if len(frames) == 0:
            raise ValueError("frames is empty: nothing to export")
        if all(isinstance(f, PIL.Image.Image) for f in frames):
            frames = [np.asarray(f.convert("RGB")) for f in frames]
        if all(isinstance(f, torch.Tensor) for f in frames):
            frames = torch.stack(list(frames))
        elif all(isinstance(f, np.ndarray) for f in frames):
            shapes = {f.shape for f in frames}
            if len(shapes) != 1:
                raise ValueError(f"all frames must have the same shape, got {sorted(shapes)}")
            frames = np.stack(frames)
        else:
            kinds = sorted({type(f).__name__ for f in frames})
            raise ValueError(f"frames must all be PIL images, numpy arrays or torch tensors, got {kinds}")

    if isinstance(frames, torch.Tensor):
        if frames.ndim == 4 and frames.shape[-1] != 3 and frames.shape[1] == 3:
            frames = frames.permute(0, 2, 3, 1)  # f c h w -> f h w c
        frames = frames.detach().cpu()
        frames = frames.numpy() if frames.dtype == torch.uint8 else frames.float().numpy()

    if not isinstance(frames, np.ndarray):
        raise ValueError(f"unsupported frames type {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        hint = " (for a batch of videos pass one video, e.g. frames[0])" if frames.ndim == 5 else ""
        raise ValueError(
            f"frames must have shape (F, H, W, 3) or (F, 3, H, W), got {tuple(frames.shape)}{hint}"
        )
    if frames.shape[0] == 0:
        raise ValueError("frames is empty: nothing to export")
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frames.dtype}")
    if not np.isfinite(frames).all():
        raise ValueError("frames contain NaN or inf values (fp16 overflow?)")
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


# ----------------------------------------------------------------------------- atomic writes


def _resolve_output(output_path, suffix: str) -> Path:
    if output_path is None:
        with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
            return Path(f.name)
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, write: Callable[[str], None]) -> str:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` (same extension), then rename it into place."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(path)


# ----------------------------------------------------------------------------- export


def _crf_from_quality(quality: float) -> int:
    """quality 0..10 -> x264 crf 35..5 (linear: crf = round(35 - 3 * quality); 5 -> crf 20)."""
    if not 0 <= quality <= 10:
        raise ValueError(f"quality must be in [0, 10], got {quality}")
    return round(35 - 3 * quality)


def export_to_video(
    frames,
    output_path: str | os.PathLike | None = None,
    fps: float = 8,
    quality: float | None = 5.0,
    bitrate: int | None = None,
    codec: str = "libx264",
) -> str:
    """Write ``frames`` as an mp4 (``codec``, default H.264, pixel format yuv420p) and return its path.

    Args:
        frames: list of PIL images / ``H x W x 3`` arrays, an array ``(F, H, W, 3)`` or a tensor
            ``(F, 3, H, W)`` / ``(F, H, W, 3)``; floats are read as [0, 1] (clipped, rounded to uint8).
        output_path: destination; a temporary ``.mp4`` file when ``None``. A path ending in ``.gif`` is
            written by :func:`export_to_gif`. Missing parent folders are created.
        fps: frames per second (may be fractional, e.g. 7.5).
        quality: 0 (smallest) .. 10 (best), mapped to x264 ``crf = round(35 - 3 * quality)``
            (0 -> 35, 5 -> 20, 10 -> 5). ``None`` leaves the encoder's default. Ignored if ``bitrate`` is set.
        bitrate: constant bitrate in bits/s instead of ``quality``.
        codec: any PyAV/FFmpeg video encoder that accepts yuv420p.

    yuv420p needs even sizes: an odd height or width is padded by one row/column that repeats the
    last one (no pixels are lost; crop it off after decoding if the exact size matters).
    """
    if output_path is not None and str(output_path).lower().endswith(".gif"):
        return export_to_gif(frames, output_path, fps=fps)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    options = {}
    if bitrate is None and quality is not None and codec in ("libx264", "libx265"):
        options["crf"] = str(_crf_from_quality(quality))
    video = _frames_to_uint8(frames)
    _, h, w, _ = video.shape
    video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path = _resolve_output(output_path, ".mp4")
    import av  # deferred: only needed for video files

    def write(tmp: str) -> None:
        # the container format follows the extension (.mp4, .mov, .mkv, ...); mp4 when there is none
        with av.open(tmp, mode="w", format=None if path.suffix else "mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = video.shape[2], video.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = options
            if bitrate is not None:
                stream.bit_rate = int(bitrate)
            for array in video:
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())  # flush

    return _atomic_write(path, write)


def export_to_gif(frames, output_path: str | os.PathLike | None = None, fps: float = 8) -> str:
    """Write ``frames`` (same forms as :func:`export_to_video`) as a GIF that loops forever.

    GIF stores frame times in 1/100 s, so each frame is shown ``10 * round(100 / fps)`` ms (fps 8 ->
    120 ms). Colours are quantised to a 256-colour palette, and Pillow stores consecutive identical
    frames as one frame with their summed duration.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    images = [PIL.Image.fromarray(a) for a in _frames_to_uint8(frames)]

    duration_ms = 10 * max(1, round(100 / fps))

    def write(tmp: str) -> None:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)

    return _atomic_write(_resolve_output(output_path, ".gif"), write)


# ----------------------------------------------------------------------------- load


def _is_url(x) -> bool:
    return isinstance(x, str) and x.startswith(("http://", "https://"))


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            return response.read()
    except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
        raise ValueError(f"could not download {url}: {e}") from e


def _existing_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r} (expected a local path or an http(s) URL)")
    return path


def load_image(
    image: str | os.PathLike | PIL.Image.Image,
    convert_method: Callable[[PIL.Image.Image], PIL.Image.Image] | None = None,
) -> PIL.Image.Image:
    """Load a path, http(s) URL or PIL image; apply its EXIF orientation; convert to RGB
    (or apply ``convert_method`` instead). A PIL input is not modified."""
    if isinstance(image, PIL.Image.Image):
        image = PIL.ImageOps.exif_transpose(image)  # returns a copy
    elif isinstance(image, (str, os.PathLike)):
        source = io.BytesIO(_download(image)) if _is_url(image) else _existing_file(image)
        try:
            with PIL.Image.open(source) as opened:
                image = PIL.ImageOps.exif_transpose(opened)
        except PIL.UnidentifiedImageError as e:
            raise ValueError(f"could not read an image from {str(image)!r}: {e}") from e
    else:
        raise ValueError(f"image must be a path, an http(s) URL or a PIL image, got {type(image).__name__}")
    return convert_method(image) if convert_method is not None else image.convert("RGB")


def _read_gif(path: Path) -> tuple[list[PIL.Image.Image], float | None]:
    with PIL.Image.open(path) as gif:
        duration_ms = gif.info.get("duration")
        frames = [frame.convert("RGB") for frame in PIL.ImageSequence.Iterator(gif)]
    return frames, (1000.0 / duration_ms if duration_ms else None)


def _read_av(path: Path) -> tuple[list[PIL.Image.Image], float | None]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{str(path)!r} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = [frame.to_image() for frame in container.decode(stream)]
    except av.FFmpegError as e:
        raise ValueError(f"could not read a video from {str(path)!r}: {e}") from e
    return frames, (float(rate) if rate else None)


def load_video(
    video: str | os.PathLike,
    convert_method: Callable[[list[PIL.Image.Image]], list[PIL.Image.Image]] | None = None,
    return_fps: bool = False,
) -> list[PIL.Image.Image] | tuple[list[PIL.Image.Image], float | None]:
    """Load a video file or http(s) URL as a list of RGB PIL frames.

    GIFs (recognised by their first bytes) are read with Pillow, everything else with PyAV (first
    video stream). ``convert_method`` is applied to the whole list instead of the RGB conversion.
    With ``return_fps`` also returns the frame rate (``None`` if the file does not record one).
    """
    if not isinstance(video, (str, os.PathLike)):
        raise ValueError(f"video must be a path or an http(s) URL, got {type(video).__name__}")
    tmp = None
    try:
        if _is_url(video):
            data = _download(video)
            suffix = Path(urllib.parse.urlparse(video).path).suffix or ".mp4"
            with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
                f.write(data)
            path = tmp = Path(f.name)
        else:
            path = _existing_file(video)
        with open(path, "rb") as f:
            is_gif = f.read(4) == b"GIF8"
        frames, fps = _read_gif(path) if is_gif else _read_av(path)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    if not frames:
        raise ValueError(f"{str(video)!r} contains no frames")
    frames = convert_method(frames) if convert_method is not None else [f.convert("RGB") for f in frames]
    return (frames, fps) if return_fps else frames
