"""Training clips from a folder: video files and folders of frames, each with a caption.

    data/
      metadata.jsonl          {"file_name": "walk.mp4", "text": "a person walking"}   (one line per clip)
      walk.mp4                video files: .mp4 .webm .mov .mkv .avi (PyAV) and .gif (Pillow)
      wave/000.png ...        a folder of frame images, sorted by name, is one clip
      wave.txt                side-car caption (used where metadata.jsonl has no entry)

``metadata.jsonl`` is the Hugging Face ``datasets`` "videofolder" convention, so a flat folder prepared for other
trainers works here unchanged (clips are read from the top level only, not from subfolders of clips). Each item is
``num_frames`` frames ``sample_stride`` apart from a seeded random start, resized so the short side covers
``height`` x ``width`` and cropped (centre or seeded random) to it, as a ``3 f h w`` float tensor in [-1, 1]. Every
random choice takes an explicit ``torch.Generator`` so the trainer can make an item a pure function of (seed, sample
number): resumed runs and multi-process runs see the same crops and frames as one uninterrupted process.

Problems with the data (empty folder, a clip that cannot be decoded, one too short for the frame count, a
missing caption) are found when the dataset is built, before any model is loaded, and raised as
:class:`DatasetError` naming the clip.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VidcoreError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA = "metadata.jsonl"
CROPS = ("center", "random")


class DatasetError(VidcoreError, ValueError):
    """Training data that cannot be used as it is: the message names the folder or clip and what is wrong."""


@dataclass(frozen=True)
class Clip:
    """One training clip: a video file or a folder of frames, its frame count and caption."""

    path: Path
    num_frames: int
    caption: str


# -------------------------------------------------------------------------------------- decoding


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _is_gif(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GIF8"


def count_frames(path: Path) -> int:
    """Frames in a clip (a folder: its images; a video: from the container, decoding only when it does not say)."""
    if path.is_dir():
        return len(_frame_files(path))
    if _is_gif(path):
        from PIL import Image

        with Image.open(path) as im:
            return getattr(im, "n_frames", 1)
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))  # webm and some mkv do not store a count


def read_frames(path: Path, indices: list[int]) -> np.ndarray:
    """The frames at ``indices`` (ascending) of a clip as ``f h w 3`` uint8 RGB; decodes no further than the last."""
    wanted = set(indices)
    last = max(indices)
    got: dict[int, np.ndarray] = {}
    if path.is_dir():
        from PIL import Image

        files = _frame_files(path)
        for i in wanted:
            with Image.open(files[i]) as im:
                got[i] = np.asarray(im.convert("RGB"))
    elif _is_gif(path):
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            for i, frame in enumerate(ImageSequence.Iterator(im)):
                if i in wanted:
                    got[i] = np.asarray(frame.convert("RGB"))
                if i >= last:
                    break
    else:
        import av

        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    if len(got) != len(wanted):
        raise DatasetError(f"clip {path}: could decode only {len(got)} of the {len(wanted)} frames asked for "
                           f"(up to frame {last})")
    shapes = {got[i].shape for i in indices}
    if len(shapes) > 1:
        raise DatasetError(f"clip {path}: frames of different sizes {sorted(shapes)}")
    return np.stack([got[i] for i in indices])


def resize_and_crop(frames: torch.Tensor, height: int, width: int, crop: str = "center",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``f 3 H W`` float frames -> ``f 3 height width``: scaled (antialiased bilinear) so the frame covers the
    target size with its aspect ratio kept, then cropped in the centre or at a seeded random offset."""
    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    if crop == "random":
        top = int(torch.randint(0, nh - height + 1, (1,), generator=generator))
        left = int(torch.randint(0, nw - width + 1, (1,), generator=generator))
    else:
        top, left = (nh - height) // 2, (nw - width) // 2
    return frames[..., top:top + height, left:left + width]


# -------------------------------------------------------------------------------------- the folder


def _read_metadata(root: Path) -> dict[str, str]:
    path = root / METADATA
    if not path.exists():
        return {}
    captions = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = Path(row["file_name"]), row["text"]
        except (ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{path} line {n}: expected {{\"file_name\": ..., \"text\": ...}} ({err})") from None
        if not isinstance(text, str):
            raise DatasetError(f"{path} line {n}: \"text\" must be a string, got {type(text).__name__}")
        captions[name.as_posix().rstrip("/")] = text
    return captions


def _find_clips(root: Path) -> list[Path]:
    clips = []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES or path.is_dir() and _frame_files(path):
            clips.append(path)
    return clips


class VideoFolder:
    """The clips of ``root`` (see the module docstring), checked up front. ``item(i, generator)`` gives clip i's
    ``3 f h w`` pixels in [-1, 1] and caption; the generator picks the frames' start and the random crop."""

    def __init__(self, root: str | os.PathLike, num_frames: int, height: int, width: int, sample_stride: int = 1,
                 crop: str = "center"):
        self.root = Path(root)
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width),
                            ("sample_stride", sample_stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DatasetError(f"{name} must be a positive integer, got {value!r}")
        if crop not in CROPS:
            raise DatasetError(f"crop must be one of {CROPS}, got {crop!r}")
        self.num_frames, self.height, self.width, self.sample_stride, self.crop = (
            num_frames, height, width, sample_stride, crop)
        if not self.root.is_dir():
            raise DatasetError(f"training data folder {self.root} does not exist or is not a folder")
        paths = _find_clips(self.root)
        if not paths:
            raise DatasetError(f"no clips in {self.root}: expected video files ({', '.join(VIDEO_SUFFIXES)}) or "
                               f"folders of frame images ({', '.join(IMAGE_SUFFIXES)})")
        captions = _read_metadata(self.root)
        span = self.span
        self.clips: list[Clip] = []
        for path in paths:
            name = path.relative_to(self.root).as_posix()
            try:
                n = count_frames(path)
            except Exception as err:  # any decoder failure (PyAV, Pillow): name the clip
                raise DatasetError(f"cannot read clip {path}: {str(err).strip() or type(err).__name__}") from err
            if n < span:
                raise DatasetError(f"clip {path} has {n} frames; num_frames={num_frames} at sample_stride="
                                   f"{sample_stride} needs at least {span}")
            self.clips.append(Clip(path, n, self._caption(path, name, captions)))

    def _caption(self, path: Path, name: str, captions: dict[str, str]) -> str:
        if name in captions:
            return captions[name]
        side_car = path.with_name((path.name if path.is_dir() else path.stem) + ".txt")
        if side_car.is_file():
            return side_car.read_text(encoding="utf-8").strip()
        raise DatasetError(f"clip {path} has no caption: add {{\"file_name\": \"{name}\", \"text\": ...}} to "
                           f"{self.root / METADATA} or write {side_car}")

    @property
    def span(self) -> int:
        """Frames of the source one sample covers: (num_frames - 1) * sample_stride + 1."""
        return (self.num_frames - 1) * self.sample_stride + 1

    def __len__(self) -> int:
        return len(self.clips)

    def frame_indices(self, index: int, generator: torch.Generator | None = None) -> list[int]:
        clip = self.clips[index]
        start = int(torch.randint(0, clip.num_frames - self.span + 1, (1,), generator=generator))
        return [start + k * self.sample_stride for k in range(self.num_frames)]

    def item(self, index: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, str]:
        """(``3 f h w`` float32 pixels in [-1, 1], caption) of clip ``index``."""
        clip = self.clips[index]
        indices = self.frame_indices(index, generator)
        try:
            frames = read_frames(clip.path, indices)
        except DatasetError:
            raise
        except Exception as err:  # the file changed or broke since the dataset was built
            raise DatasetError(f"cannot read clip {clip.path}: {str(err).strip() or type(err).__name__}") from err
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # f 3 H W in [0, 255]
        x = resize_and_crop(x, self.height, self.width, self.crop, generator)
        x = (x / 127.5 - 1.0).clamp(-1.0, 1.0)
        return x.permute(1, 0, 2, 3).contiguous(), clip.caption  # 3 f h w


class EpochOrder:
    """The order clips are visited in: a fresh seeded permutation each epoch, read in global batches that may run
    across an epoch's end. Its state (epoch, the permutation, the position in it) goes into checkpoints, so a
    resumed run continues with exactly the clips the uninterrupted run would have used next."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.epoch, self.position = 0, 0
        self.permutation = self._permute(0)

    def _permute(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def take(self, n: int) -> list[int]:
        """The next ``n`` clip indices."""
        out = []
        while len(out) < n:
            if self.position == self.size:
                self.epoch += 1
                self.position = 0
                self.permutation = self._permute(self.epoch)
            k = min(n - len(out), self.size - self.position)
            out += self.permutation[self.position:self.position + k]
            self.position += k
        return out

    def state_dict(self) -> dict:
        return {"size": self.size, "seed": self.seed, "epoch": self.epoch, "position": self.position,
                "permutation": list(self.permutation)}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise DatasetError(f"the checkpoint was trained on {state['size']} clips, the data folder now has "
                               f"{self.size}: resume with the same data")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self.permutation = list(state["permutation"])


__all__ = ["CROPS", "IMAGE_SUFFIXES", "METADATA", "VIDEO_SUFFIXES", "Clip", "DatasetError", "EpochOrder", "VideoFolder",
           "count_frames", "read_frames", "resize_and_crop"]
