"""Converting videos between user formats and the ``b c f h w`` tensors in [-1, 1] the VAE uses."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _frames_to_tensor(video) -> torch.Tensor:
    """One video (list of PIL, np f h w c, tensor f c h w) -> float tensor f c h w, values as given."""
    if isinstance(video, torch.Tensor):
        if video.ndim != 4:
            raise ValueError(f"video tensor must be (frames, channels, height, width), got shape {tuple(video.shape)}")
        return video.float() if not video.is_floating_point() else video
    if isinstance(video, np.ndarray):
        if video.ndim != 4:
            raise ValueError(f"video array must be (frames, height, width, channels), got shape {video.shape}")
        arr = video.astype(np.float32) / 255.0 if video.dtype == np.uint8 else video.astype(np.float32)
        return torch.from_numpy(arr).permute(0, 3, 1, 2)
    if isinstance(video, (list, tuple)) and video and all(isinstance(f, PIL.Image.Image) for f in video):
        return None  # handled by the PIL path (needs resizing before conversion)
    if isinstance(video, (list, tuple)) and video and all(isinstance(f, np.ndarray) and f.ndim == 3 for f in video):
        return _frames_to_tensor(np.stack(video))
    raise ValueError("video must be a list of PIL images, a (frames, height, width, 3) array, a (frames, 3, height, "
                     "width) tensor, or a batch of those")


def _preprocess_one(video, scale: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    if isinstance(video, (list, tuple)) and video and isinstance(video[0], PIL.Image.Image):
        w, h = video[0].size
        h, w = size or (h - h % scale, w - w % scale)
        frames = [f.convert("RGB").resize((w, h), PIL.Image.LANCZOS) if f.size != (w, h) else f.convert("RGB") for f in video]
        x = torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) / 255.0 for f in frames])).permute(0, 3, 1, 2)
    else:
        x = _frames_to_tensor(video)
        if x.shape[1] == 4:  # already latents
            return x
        h, w = size or (x.shape[-2] - x.shape[-2] % scale, x.shape[-1] - x.shape[-1] % scale)
        x = F.interpolate(x, size=(h, w))
    # Values already in [-1, 1] (negative minimum) are kept, as diffusers does.
    return x * 2.0 - 1.0 if x.min() >= 0 else x


def preprocess_video(video, scale: int = 8, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Video(s) -> ``b c f h w`` in [-1, 1]: resized to ``size`` (height, width; Lanczos for PIL frames,
    nearest for arrays and tensors, as diffusers), or cut down to a multiple of ``scale``."""
    if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 5:
        videos = list(video)
    elif isinstance(video, (list, tuple)) and video and isinstance(video[0], (list, tuple)):
        videos = list(video)
    elif isinstance(video, (list, tuple)) and video and isinstance(video[0], (np.ndarray, torch.Tensor)) and video[0].ndim == 4:
        videos = list(video)
    else:
        videos = [video]
    if not videos or any(v is None or len(v) == 0 for v in videos):
        raise ValueError("video is empty")
    return torch.stack([_preprocess_one(v, scale, size) for v in videos]).permute(0, 2, 1, 3, 4)


def postprocess_video(video: torch.Tensor, output_type: str = "np"):
    """``b c f h w`` in [-1, 1] -> np ``b f h w 3`` in [0, 1], pt ``b f 3 h w``, or pil ``[[Image]]``."""
    frames = (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)  # b f c h w
    if output_type == "pt":
        return frames
    arr = frames.permute(0, 1, 3, 4, 2).cpu().numpy()
    if output_type == "np":
        return arr
    if output_type == "pil":
        return [[PIL.Image.fromarray((f * 255).round().astype("uint8")) for f in vid] for vid in arr]
    raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
