"""Control images for ControlNet pipelines, computed with torch only.

:func:`canny` turns images or video frames into Canny edge maps: white 1-pixel lines on black, three equal
channels, the input format ``lllyasviel/sd-controlnet-canny`` was trained on.

Pose images (for ``lllyasviel/sd-controlnet-openpose``) are not computed here: render them with an OpenPose
detector (e.g. the ``controlnet_aux`` package's ``OpenposeDetector``) and pass the rendered frames.
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's "L" conversion


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D normalised Gaussian of radius ``ceil(3 sigma)``."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    # x: n 1 h w ; separable Gaussian with reflected borders
    k = gaussian_kernel(sigma).to(x)
    r = k.numel() // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/dx, d/dy) of ``n 1 h w`` with 3x3 Sobel kernels (borders replicated); y grows downwards."""
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, torch.outer(smooth, diff).view(1, 1, 3, 3))
    gy = F.conv2d(padded, torch.outer(diff, smooth).view(1, 1, 3, 3))
    return gx, gy


def non_maximum_suppression(magnitude: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Keep pixels that are local maxima of ``magnitude`` along their gradient (direction rounded to one of
    8 neighbours); others become 0. Ties are broken towards the gradient (the brighter side of an edge),
    so a plateau two pixels wide keeps one pixel."""
    angle = torch.atan2(gy, gx)
    step = torch.round(angle / (math.pi / 4)).long() % 8  # 0 = +x, 2 = +y, ...
    dx = torch.tensor([1, 1, 0, -1, -1, -1, 0, 1], device=magnitude.device)[step]
    dy = torch.tensor([0, 1, 1, 1, 0, -1, -1, -1], device=magnitude.device)[step]
    n, _, h, w = magnitude.shape
    padded = F.pad(magnitude, (1, 1, 1, 1))  # zeros outside
    ys = torch.arange(h, device=magnitude.device).view(1, 1, h, 1) + 1
    xs = torch.arange(w, device=magnitude.device).view(1, 1, 1, w) + 1
    flat = padded.flatten(2)
    width = w + 2

    def neighbour(sign: int) -> torch.Tensor:
        index = (ys + sign * dy) * width + (xs + sign * dx)
        return flat.gather(2, index.reshape(n, 1, -1)).view_as(magnitude)

    ahead, behind = neighbour(1), neighbour(-1)  # towards the brighter / the darker side
    keep = (magnitude > ahead) & (magnitude >= behind)
    return torch.where(keep, magnitude, torch.zeros_like(magnitude))


def hysteresis(magnitude: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Boolean edges: pixels >= ``high``, plus pixels >= ``low`` connected to them (8-neighbourhood)."""
    weak = magnitude >= low
    edges = magnitude >= high
    while True:
        grown = weak & (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def canny_edges(gray: torch.Tensor, low: float = 100.0, high: float = 200.0, sigma: float = 1.0) -> torch.Tensor:
    """Boolean edge map of ``n 1 h w`` grey images in 0..255: Gaussian blur (``sigma``; 0 = none), Sobel
    gradient magnitude (L2), non-maximum suppression, double threshold ``low``/``high`` with hysteresis."""
    if not 0 <= low <= high:
        raise ValueError(f"canny thresholds need 0 <= low <= high, got low={low}, high={high}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    x = gray.float()
    if sigma > 0:
        x = _blur(x, sigma)
    gx, gy = sobel(x)
    # rounded to 1/256 so that float noise of the blur does not decide ties between mirror-image pixels
    magnitude = torch.round(torch.sqrt(gx * gx + gy * gy) * 256) / 256
    return hysteresis(non_maximum_suppression(magnitude, gx, gy), low, high)


def _to_gray(x: torch.Tensor) -> torch.Tensor:
    # n c h w in 0..255 -> n 1 h w
    if x.shape[1] == 1:
        return x
    if x.shape[1] in (3, 4):
        luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x[:, :3] * luma).sum(dim=1, keepdim=True)
    raise ValueError(f"images must have 1, 3 or 4 channels, got {x.shape[1]}")


def canny(images, low: float = 100.0, high: float = 200.0, sigma: float = 1.0):
    """Canny edges of an image or of video frames, as 3-channel control images (edges white on black).

    ``images``: a PIL image or a list of them -> the same as RGB PIL images; a uint8 ``h w c`` / ``f h w c``
    array -> uint8 arrays of that shape with 3 channels (0 or 255); a float ``c h w`` / ``f c h w`` tensor in
    [0, 1] -> float tensors of that shape with 3 channels (0 or 1). ``low``/``high`` are thresholds on the
    gradient magnitude of 0..255 intensities (the scale of ``cv2.Canny(image, 100, 200)``, which ControlNet's
    canny annotator uses; here the magnitude is the L2 norm of the Sobel gradient after a Gaussian blur of
    ``sigma`` pixels)."""
    if isinstance(images, PIL.Image.Image):
        return canny([images], low, high, sigma)[0]
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, PIL.Image.Image) for i in images):
        arr = np.stack([np.asarray(i.convert("RGB")) for i in images])
        return [PIL.Image.fromarray(a) for a in canny(arr, low, high, sigma)]
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(f"image arrays must be (h, w, c) or (f, h, w, c), got shape {images.shape}")
        single = images.ndim == 3
        arr = images[None] if single else images
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
        if images.dtype != np.uint8:
            x = x * 255.0  # float arrays are taken as [0, 1]
        edges = canny_edges(_to_gray(x), low, high, sigma)
        out = (edges.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        return out[0] if single else out
    if isinstance(images, torch.Tensor):
        if images.ndim not in (3, 4):
            raise ValueError(f"image tensors must be (c, h, w) or (f, c, h, w), got shape {tuple(images.shape)}")
        single = images.ndim == 3
        x = (images[None] if single else images).float() * 255.0
        out = canny_edges(_to_gray(x), low, high, sigma).expand(-1, 3, -1, -1).float()
        return out[0] if single else out
    raise TypeError(f"canny takes a PIL image, a list of PIL images, a numpy array or a torch tensor, got "
                    f"{type(images).__name__}")
