"""What ``tests/test_docs_examples.py`` runs: every ```python block of README.md and docs/**/*.md, and every
``vidcore ...`` line of their ```bash blocks.

A block runs in a fresh namespace, in a fresh working folder holding the images and videos the block reads. A block
whose fence is preceded by the line ``<!-- docs: continued -->`` runs in the namespace the page's previous block left
(the page reads as one session there). The hub ids resolve, offline, to tiny random models in diffusers' layout
under the same names (:func:`build_docs_hub`, built on ``tests/guide.py``'s offline cache), and the original
single files the docs name are written from those tiny models. The only edits are the fixed table :data:`EDITS`
(float32 on the CPU and the tiny models' sizes) and the per-line marker ``# docs: gpu-only``, which drops that one
line (a ``.to("cuda")``, a CUDA offload switch) on a machine without CUDA; a block is never skipped whole.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CONTINUED = "<!-- docs: continued -->"
TORCHRUN = re.compile(r"<!-- docs: torchrun (\d+) -->")
GPU_ONLY = "# docs: gpu-only"

TINY = 32  # pixels: the tiny SD / ModelScope models' default size (latent 16 x VAE factor 2)


@dataclass
class Block:
    page: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    code: str
    continued: bool
    processes: int = 0  # > 0: a multi-process example, run under torch.distributed.run with that many processes

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(language: tuple[str, ...]) -> list[Block]:
    blocks = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = re.match(r"```(\w+)\s*$", lines[i])
            if m:
                start = i
                i += 1
                body = []
                while not lines[i].startswith("```"):
                    body.append(lines[i])
                    i += 1
                if m.group(1) in language:
                    before = lines[start - 1].strip() if start > 0 else ""
                    launch = TORCHRUN.fullmatch(before)
                    blocks.append(Block(page.relative_to(ROOT).as_posix(), start + 1, "\n".join(body) + "\n",
                                        before == CONTINUED, int(launch.group(1)) if launch else 0))
            elif lines[i].startswith("```"):  # an unlabelled fence (the layout tree): skip its body
                i += 1
                while not lines[i].startswith("```"):
                    i += 1
            i += 1
    return blocks


def python_blocks() -> list[Block]:
    return read_blocks(("python", "py"))


def cli_lines() -> list[tuple[str, list[str]]]:
    """(page:line, argv) for every ``vidcore ...`` command (and ``torchrun ... -m vidcore.cli ...``) of the bash
    blocks; continuation lines joined, comments dropped. ``pip`` and other commands are not vidcore's."""
    found = []
    for block in read_blocks(("bash", "sh", "shell")):
        joined, start = "", None
        for k, line in enumerate(block.code.splitlines()):
            if start is None:
                start = block.line + 1 + k
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            joined += line
            command, start_line = joined.strip(), start
            joined, start = "", None
            words = shlex.split(command, comments=True)
            if "vidcore.cli" in words:  # torchrun ... -m vidcore.cli ARGS
                found.append((f"{block.page}:{start_line}", words[words.index("vidcore.cli") + 1:]))
            elif words and words[0] == "vidcore":
                found.append((f"{block.page}:{start_line}", words[1:]))
    return found


# -- the fixed table of edits ------------------------------------------------------------------------------------------
# (what, regex, replacement), applied to every block. Sizes become the tiny models'; half precision becomes float32
# (the CPU); nothing else changes.

EDITS = [
    ("fp16 -> fp32 on the CPU", r"torch\.float16", "torch.float32"),
    ("heights -> the tiny models'", r"\bheight=\d+", f"height={TINY}"),
    ("widths -> the tiny models'", r"\bwidth=\d+", f"width={TINY}"),
    ("image resizes -> the tiny size", r"\.resize\(\(\d+, \d+\)\)", f".resize(({TINY}, {TINY}))"),
    ("SD1.5's 64x64 latents -> the tiny SD's", r"\(1, 4, 64, 64\)", f"(1, 4, {TINY // 2}, {TINY // 2})"),
    ("fewer denoising steps", r"\bnum_inference_steps=\d+", "num_inference_steps=2"),
    ("fewer training steps (vidcore.training.TrainLoRAConfig)", r"\bsteps=\d+", "steps=2"),
    ("Text2Video-Zero's t0 / t1 inside the fewer steps", r"\bt0=\d+, t1=\d+", "t0=0, t1=1"),
    ("Text2Video-Zero's t0 / t1 inside the fewer steps", r"\bt0=\d+,(\s*)t1=\d+", r"t0=0,\1t1=1"),
]


def drop_gpu_lines(code: str) -> str:
    out = []
    for line in code.splitlines():
        if GPU_ONLY in line:
            out.append(line[: len(line) - len(line.lstrip())] + "pass")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def edit(code: str, cuda: bool) -> str:
    if not cuda:
        code = drop_gpu_lines(code)
    for _, pattern, replacement in EDITS:
        code = re.sub(pattern, replacement, code, flags=re.MULTILINE)
    return code


# -- media the examples read -------------------------------------------------------------------------------------------

MEDIA = re.compile(r'"([\w./-]+\.(?:png|jpg|jpeg|mp4|gif))"')


def write_media(code: str, folder: Path) -> None:
    """Every image / video file name the block mentions, as a small random file in ``folder`` (an example that
    writes such a file simply overwrites it)."""
    import guide

    for k, name in enumerate(sorted(set(MEDIA.findall(code)))):
        path = folder / name
        if path.suffix in (".mp4", ".gif"):
            if path.suffix == ".mp4":
                guide.write_clip(path, frames=16, size=TINY, seed=k)
        else:
            guide.random_png(path, TINY + 16, TINY, seed=k)


# -- tiny stand-ins under the docs' hub ids ----------------------------------------------------------------------------

def build_docs_hub(root: Path) -> tuple[Path, Path]:
    """Every hub repository the examples load, as a tiny random model in an offline Hugging Face cache
    (``root / "hub"``), and the original single files they name in ``root / "files"``. Returns both folders."""
    import guide
    import tiny
    import tiny_animatediff
    import tiny_controlnet
    import tiny_ip_adapter
    import tiny_sdxl
    import tiny_zero
    from diffusers import SparseControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    import vidcore
    from vidcore.loading import original_state_dict

    cache, files = root / "hub", root / "files"
    files.mkdir(parents=True, exist_ok=True)
    snap = lambda repo: guide.snapshot(cache, repo)  # noqa: E731
    # ModelScope / Zeroscope (text-to-video pipelines; the XL one is used for video-to-video)
    tiny.build_tiny_t2v_pipeline(root / "t2v", variant_fp16=True)
    for repo in ("cerspense/zeroscope_v2_576w", "cerspense/zeroscope_v2_XL", "damo-vilab/text-to-video-ms-1.7b"):
        guide.copy_tree(root / "t2v", snap(repo))
    svd = snap("stabilityai/stable-video-diffusion-img2vid-xt")
    tiny.build_tiny_svd_pipeline(svd, variant_fp16=True)
    tiny.build_tiny_svd_pipeline(snap("stabilityai/stable-video-diffusion-img2vid"), seed=1, variant_fp16=True)
    tiny.build_tiny_i2vgen_pipeline(snap("ali-vilab/i2vgen-xl"), variant_fp16=True)
    # AnimateDiff: an SD1.5 fine-tune and motion adapters of its size
    animatediff = tiny_animatediff.build_tiny_animatediff(root / "animatediff", seed=2)
    for repo in ("emilianJR/epiCRealism", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                 "runwayml/stable-diffusion-v1-5"):
        guide.copy_tree(animatediff.sd, snap(repo))
    for repo in ("guoyww/animatediff-motion-adapter-v1-5-2", "guoyww/animatediff-motion-adapter-v1-5-3",
                 "wangfuyun/AnimateLCM"):
        guide.copy_tree(animatediff.adapter, snap(repo))
    motion_unet = animatediff.pipe.unet  # diffusers' UNetMotionModel of the same weights
    # LoRAs: a hub motion LoRA, the original .ckpt layout, AnimateLCM's kohya-layout spatial LoRA
    from test_motion_lora import to_original
    from test_pipeline_animatediff_lcm import kohya_lora

    legacy = tiny_animatediff.motion_lora(motion_unet, seed=1)
    save_file(legacy, snap("guoyww/animatediff-motion-lora-zoom-in") / "diffusion_pytorch_model.safetensors")
    import torch

    torch.save({"state_dict": to_original(tiny_animatediff.motion_lora(motion_unet, seed=2))},
               files / "v2_lora_PanLeft.ckpt")
    save_file(kohya_lora(motion_unet), snap("wangfuyun/AnimateLCM") / "AnimateLCM_sd15_t2v_lora.safetensors")
    # textual inversion: one vector of the text encoder's width
    width = animatediff.pipe.text_encoder.get_input_embeddings().weight.shape[-1]
    save_file({"<cat-toy>": torch.randn(width, generator=torch.Generator().manual_seed(3))},
              snap("sd-concepts-library/cat-toy") / "learned_embeds.safetensors")
    # ControlNets of the SD's size, SparseCtrl
    controlled = tiny_controlnet.build_tiny_controlled(root / "controlled", seed=3)
    guide.copy_tree(controlled.controlnet, snap("lllyasviel/sd-controlnet-openpose"))
    canny = tiny_controlnet.build_tiny_controlled(root / "canny", seed=4)
    guide.copy_tree(canny.controlnet, snap("lllyasviel/sd-controlnet-canny"))
    sparse = tiny.randomize_(SparseControlNetModel(**tiny_controlnet.tiny_sparse_config("scribble")), 20).eval()
    sparse.save_pretrained(snap("guoyww/animatediff-sparsectrl-scribble"))
    tiny_zero.build_tiny_pix2pix(snap("timbrooks/instruct-pix2pix"), seed=5)
    # SDXL and its motion adapter (the fp16 variant files hold the same float32 tensors)
    xl = tiny_sdxl.build_tiny_animatediff_sdxl(root / "sdxl", seed=6)
    for source, repo in ((xl.sdxl, "stabilityai/stable-diffusion-xl-base-1.0"),
                         (xl.adapter, "guoyww/animatediff-motion-adapter-sdxl-beta")):
        target = snap(repo)
        guide.copy_tree(source, target)
        for weights in list(target.rglob("*.safetensors")):
            weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")).write_bytes(
                weights.read_bytes())
    # IP-Adapter: the SD1.5 files and image encoder under models/, an SDXL "plus" file under sdxl_models/
    ip = snap("h94/IP-Adapter")
    tiny_ip_adapter.write_ip_adapter_repo(ip, UNet2DConditionModel.from_pretrained(animatediff.sd / "unet"))
    xl_unet = UNet2DConditionModel.from_pretrained(xl.sdxl / "unet")
    (ip / "sdxl_models").mkdir(exist_ok=True)
    save_file(tiny_ip_adapter.original_ip_adapter("plus", tiny_ip_adapter.cross_attention_widths(xl_unet),
                                                  xl_unet.config.cross_attention_dim, 32, seed=8),
              ip / "sdxl_models" / "ip-adapter-plus_sdxl_vit-h.safetensors")
    # original single files, written by vidcore from the same tiny models
    adapter = vidcore.load_model(animatediff.adapter)
    for name in ("mm_sd_v15_v2.ckpt", "v3_sd15_mm.ckpt"):
        vidcore.save_original(adapter, files / name)
    sd = vidcore.AnimateDiffPipeline.from_pretrained(animatediff.sd, motion_adapter=adapter)
    ldm = {}
    for module in (sd.unet.unet, sd.vae, sd.text_encoder):
        ldm.update(original_state_dict(module))
    for name in ("realisticVisionV60B1_v51VAE.safetensors", "model.safetensors", "civitai_model.safetensors"):
        save_file(ldm, files / name)
    svd_pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(svd)
    save_file({**original_state_dict(svd_pipe.unet), **original_state_dict(svd_pipe.vae)},
              files / "svd_xt_1_1.safetensors")
    vidcore.save_original(vidcore.load_model(controlled.controlnet), files / "control_v11p_sd15_openpose.pth")
    from test_sdxl_single_file import sdxl_file

    xl_pipe = vidcore.AnimateDiffSDXLPipeline.from_pretrained(xl.sdxl, motion_adapter=xl.adapter)
    save_file(sdxl_file(xl_pipe), files / "juggernautXL_v9.safetensors")
    return cache, files


def link_files(code: str, files: Path, folder: Path) -> None:
    """The single files a block names, from ``files`` into its working folder."""
    for path in files.iterdir():
        if f'"{path.name}"' in code:
            (folder / path.name).symlink_to(path)
