"""Run diffusers' "Text or image-to-video" guide (``../shared/reference/text-img2vid-guide.md``) as a user moving to
vidcore would: the guide's Python blocks in document order, one namespace per section or tab, with a fixed table of
edits and nothing else. The same blocks run with diffusers' imports where diffusers still runs them, for comparison.

What is read from the guide is read at run time (nothing of it is copied here). The hub repositories, the space's
videos and the image URLs it names are tiny random stand-ins under the same names, in an offline Hugging Face cache
(:func:`build_offline_hub`) and a URL -> file mapping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "text-img2vid-guide.md"

# latent side of the tiny SD1.5 stand-ins (tiny.tiny_unet2d_config's sample_size); the guide's 64 is SD1.5's
TINY_SD_LATENT = 16
# the tiny I2VGen-XL stand-in's pixel size (its UNet's sample_size x the VAE's factor 2)
TINY_I2VGEN_SIZE = 32
# SVD's and I2VGen-XL's pipelines default to 1024x576 / 1280x704 whatever the model; the tiny stand-ins get a tiny size
TINY_SVD_SIZE = (16, 24)


@dataclass
class Block:
    line: int  # 1-based line of the opening fence in the guide
    code: str
    section: str


@dataclass
class Namespace:
    """Blocks that run one after the other in one Python namespace: one ``###`` section, or one tab of it."""

    name: str
    blocks: list[Block] = field(default_factory=list)


def read_guide(text: str) -> tuple[list[Namespace], list[Block]]:
    """The guide's ``py`` blocks grouped by section / tab in document order, and its ``diff`` blocks."""
    spaces: list[Namespace] = []
    diffs: list[Block] = []
    section, tab, current = "", None, None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section, tab, current = line.lstrip("#").strip(), None, None
        elif m := re.match(r'\s*<hfoption id="([^"]+)">', line):
            tab, current = m.group(1), None
        elif m := re.match(r"```(py|python|diff)\s*$", line):
            start, body = i + 1, []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            block = Block(start, "\n".join(body) + "\n", section)
            if m.group(1) == "diff":
                diffs.append(block)
            else:
                if current is None:
                    current = Namespace(f"{section} / {tab}" if tab else section)
                    spaces.append(current)
                current.blocks.append(block)
        i += 1
    return spaces, diffs


def apply_diff(diff: Block, spaces: list[Namespace]) -> Namespace:
    """A new namespace: the first namespace whose block holds every ``-`` line of ``diff``, with those lines taken
    out and the ``+`` lines put where the last of them was (the guide's Optimize section changes an earlier snippet
    this way)."""
    removed = [line[1:].strip() for line in diff.code.splitlines() if line.startswith("-")]
    added = [line[1:].strip() for line in diff.code.splitlines() if line.startswith("+")]
    for space in spaces:
        for k, block in enumerate(space.blocks):
            lines = block.code.splitlines()
            stripped = [line.strip() for line in lines]
            if all(r in stripped for r in removed):
                # the + lines go where the last - line was (the removed lines are not adjacent in the snippet)
                last = max(stripped.index(r) for r in removed)
                kept = [None if k == last else line for k, line in enumerate(lines)
                        if stripped[k] not in removed or k == last]
                at = kept.index(None)
                kept[at:at + 1] = added
                changed = Block(block.line, "\n".join(kept) + "\n", block.section)
                return Namespace(f"{space.name} + the diff at line {diff.line}",
                                 space.blocks[:k] + [changed] + space.blocks[k + 1:])
    raise LookupError(f"no block of the guide holds the lines this diff removes: {removed}")


# -- the fixed table of edits -----------------------------------------------------------------------------------------
# (what, regex, replacement). Applied to every block of both runs unless the table says which.

IMPORTS = [  # the one change a user makes
    ("diffusers' pipeline module path", r"from diffusers\.pipelines\.[\w.]+ import", "from vidcore import"),
    ("diffusers.utils", r"from diffusers\.utils import", "from vidcore import"),
    ("diffusers", r"from diffusers import", "from vidcore import"),
]

CPU = [  # a machine without CUDA, and float32 (the tiny stand-ins are compared in float32)
    ("no CUDA: .to('cuda') dropped", r'^(\s*[\w.]+ = .*?)\.to\("cuda"\)$', r"\1"),
    ("no CUDA: .to('cuda') dropped", r'^\)\.to\("cuda"\)$', ")"),
    ("no CUDA: .to('cuda') dropped", r'^\s*\w+\.to\("cuda"\)\s*$', ""),
    ("no CUDA: offload dropped", r"^\s*\w+\.enable_model_cpu_offload\(\)\s*$", ""),
    ("no CUDA: device='cuda' -> 'cpu'", r'device="cuda"', 'device="cpu"'),
    ("fp16 -> fp32 on CPU", r"torch\.float16", "torch.float32"),
]

SIZES = [  # sizes from the tiny configs
    ("SD1.5 latents 64x64 -> the tiny SD's", r"\(1, 4, 64, 64\)", f"(1, 4, {TINY_SD_LATENT}, {TINY_SD_LATENT})"),
    ("SVD's default 576x1024 -> a tiny size", r"^(\s*frames = pipeline\(image, )",
     rf"\1height={TINY_SVD_SIZE[0]}, width={TINY_SVD_SIZE[1]}, "),
    ("I2VGen-XL's default 704x1280 -> the tiny model's", r"^(\s*)image=image,$",
     rf"\1image=image, height={TINY_I2VGEN_SIZE}, width={TINY_I2VGEN_SIZE},"),
]

# diffusers 0.42 no longer runs some lines of its own guide; where a same-result spelling exists, the diffusers run
# uses it so the block can still be compared (vidcore runs the guide's line as written)
DIFFUSERS_ONLY = [
    ("Text2Video-Zero moved under pipelines.deprecated",
     r"from diffusers\.pipelines\.text_to_video_synthesis\.pipeline_text_to_video_zero import",
     "from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import"),
    ("pipelines lost enable_vae_slicing", r"^(\s*)(\w+)\.enable_vae_slicing\(\)$", r"\1\2.vae.enable_slicing()"),
]


def edit(code: str, library: str) -> str:
    """The guide's block as it runs on CPU with ``library`` ("vidcore" or "diffusers")."""
    table = CPU + SIZES + (IMPORTS if library == "vidcore" else DIFFUSERS_ONLY)
    for _, pattern, replacement in table:
        code = re.sub(pattern, replacement, code, flags=re.MULTILINE)
    return code


# names a block leaves its result in (frames, images), compared between the two runs
OUTPUTS = ("frames", "video_frames", "result", "output")


# -- tiny stand-ins under the guide's names ---------------------------------------------------------------------------

COMMIT = "0" * 40  # the snapshot every stand-in repository's refs/main points at


def snapshot(cache: Path, repo_id: str, kind: str = "models") -> Path:
    """An (empty) snapshot folder of ``repo_id`` in a Hugging Face cache, found by the hub client when offline."""
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_clip(path: Path, frames: int, size: int, seed: int) -> None:
    """A short random-coloured mp4 (PyAV), the stand-in of the space's example videos."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def random_png(path: Path, width: int, height: int, seed: int) -> Path:
    import numpy as np
    import PIL.Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def guide_urls(text: str) -> list[str]:
    """The image URLs the guide's code loads (``load_image("https://...")`` or a variable holding one)."""
    return sorted(set(re.findall(r'"(https://[^"]+\.(?:png|jpg|jpeg))"', text)))


def build_offline_hub(root: Path, text: str) -> tuple[Path, dict[str, Path]]:
    """Every repository the guide loads, as a tiny random model in diffusers' layout in a Hugging Face cache under
    ``root / "hub"``, and every image URL it reads mapped to a small random PNG. Returns (cache, url -> file)."""
    import tiny
    import tiny_animatediff
    import tiny_controlnet
    import tiny_zero

    cache = root / "hub"
    repos = set(re.findall(r'"([\w.-]+/[\w.-]+)"', text))
    build = {
        "stabilityai/stable-video-diffusion-img2vid-xt": lambda f: tiny.build_tiny_svd_pipeline(f, variant_fp16=True),
        "stabilityai/stable-video-diffusion-img2vid": lambda f: tiny.build_tiny_svd_pipeline(f, seed=1,
                                                                                                variant_fp16=True),
        "ali-vilab/i2vgen-xl": lambda f: tiny.build_tiny_i2vgen_pipeline(f, variant_fp16=True),
        "damo-vilab/text-to-video-ms-1.7b": lambda f: tiny.build_tiny_t2v_pipeline(f, variant_fp16=True),
        "timbrooks/instruct-pix2pix": lambda f: tiny_zero.build_tiny_pix2pix(f, seed=5),
    }
    for repo, make in build.items():
        if repo in repos:
            make(snapshot(cache, repo))
    # AnimateDiff: an SD1.5 fine-tune and a motion adapter
    animatediff = tiny_animatediff.build_tiny_animatediff(root / "animatediff", seed=2)
    copy_tree(animatediff.sd, snapshot(cache, "emilianJR/epiCRealism"))
    copy_tree(animatediff.adapter, snapshot(cache, "guoyww/animatediff-motion-adapter-v1-5-2"))
    # Text2Video-Zero: SD1.5 (a StableDiffusionPipeline folder) and two ControlNets of its size
    controlled = tiny_controlnet.build_tiny_controlled(root / "controlled", seed=3)
    tiny_zero.build_tiny_sd(snapshot(cache, "runwayml/stable-diffusion-v1-5"), seed=3)
    copy_tree(controlled.controlnet, snapshot(cache, "lllyasviel/sd-controlnet-openpose"))
    canny = tiny_controlnet.build_tiny_controlled(root / "canny", seed=4)
    copy_tree(canny.controlnet, snapshot(cache, "lllyasviel/sd-controlnet-canny"))
    # the space's example videos
    space = snapshot(cache, "PAIR/Text2Video-Zero", kind="spaces")
    for k, name in enumerate(re.findall(r'filename = "([^"]+\.mp4)"', text)):
        if not (space / name).exists():
            write_clip(space / name, frames=10, size=2 * TINY_SD_LATENT, seed=k)
    urls = {url: random_png(root / "images" / f"{k}.png", 48, 32, seed=k) for k, url in enumerate(guide_urls(text))}
    return cache, urls


def copy_tree(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target, dirs_exist_ok=True)
