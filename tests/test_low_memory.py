"""The low-memory preset (vidcore.pipelines.low_memory): on the CPU it leaves the video unchanged where the math is
unchanged (ModelScope: split guidance, forward chunking, attention slicing, one frame per decoder call), it says what
it turned on and what it skipped, it lets a memory budget size the decode chunks, and on CUDA it picks fp8 storage
and the best offload there is (checked on a recording stand-in, no GPU needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny
import vidcore
from vidcore.pipelines.low_memory import TEMPORAL_DECODE_CHUNK, LowMemoryPreset, apply_low_memory

pytestmark = pytest.mark.usefixtures("offline")

OPTIONAL = {"set_guidance_batching": "split guidance", "enable_attention_slicing": "attention slicing"}
CALL = dict(num_frames=3, height=16, width=24, num_inference_steps=2, output_type="np")


def _frames(pipe, preset: LowMemoryPreset | None = None, **call):
    extra = preset.call_kwargs if preset is not None else {}
    return pipe(generator=torch.Generator().manual_seed(0), **call, **extra).frames


def test_cpu_preset_keeps_the_modelscope_video(tmp_path):
    tiny.build_tiny_t2v_pipeline(tmp_path)
    plain, low = (vidcore.TextToVideoPipeline.from_pretrained(tmp_path) for _ in range(2))
    for p in (plain, low):
        p.set_progress_bar_config(disable=True)
    preset = apply_low_memory(low, "cpu")
    call = dict(CALL, prompt="a cat", negative_prompt="blurry", guidance_scale=7.5)
    np.testing.assert_allclose(_frames(low, preset, **call), _frames(plain, **call), rtol=0, atol=2e-5)

    assert "forward chunking" in preset.applied and not preset.placed
    assert all(m.chunk_size == 1 for m in low.unet.modules() if hasattr(m, "chunk_size"))
    # no budget on the CPU: one frame per decoder call (exact for the 2D VAE)
    assert preset.call_kwargs == {"decode_chunk_size": 1} and "decode_chunk_size 1" in preset.applied
    assert all(label in preset.applied for label in OPTIONAL.values()) and preset.skipped == []
    line = str(preset)
    assert line.startswith("low memory: ") and "forward chunking" in line and "\n" not in line


def test_cpu_preset_chunks_the_svd_temporal_decode(tmp_path):
    tiny.build_tiny_svd_pipeline(tmp_path)
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    preset = apply_low_memory(pipe, "cpu")
    assert preset.call_kwargs == {"decode_chunk_size": TEMPORAL_DECODE_CHUNK}
    assert f"decode_chunk_size {TEMPORAL_DECODE_CHUNK}" in preset.applied
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = _frames(pipe, preset, image=image, **dict(CALL, num_frames=3, height=16, width=16))
    assert out.shape == (1, 3, 16, 16, 3) and np.isfinite(out).all()
    # with a budget the pipeline sizes the chunks itself
    pipe.set_max_memory("1GB")
    assert apply_low_memory(pipe, "cpu").call_kwargs == {"decode_chunk_size": "auto"}


class Recorder:
    """A pipeline stand-in whose methods record their calls; ``without`` names the methods it lacks."""

    def __init__(self, dtype, without=()):
        self.calls, self.dtype = [], dtype
        self.unet, self.vae = self._part(), self._part()
        self.without = set(without)

    def _part(self):
        part = type("Part", (), {})()
        part.enable_forward_chunking = lambda: self.calls.append("enable_forward_chunking")
        part.enable_slicing = lambda: None
        return part

    def __getattr__(self, name):
        if name.startswith(("enable_", "set_")) and name not in self.without:
            return lambda *a, **k: self.calls.append(name)
        raise AttributeError(name)


def test_cuda_choice_fp8_streams_or_model_offload():
    full = Recorder(torch.bfloat16, without={"set_max_memory"})
    preset = apply_low_memory(full, "cuda")
    assert full.calls[:3] == ["enable_layerwise_casting", "enable_group_offload", "set_guidance_batching"]
    assert "enable_model_cpu_offload" not in full.calls and "enable_attention_slicing" not in full.calls
    assert preset.placed and preset.skipped == [] and preset.applied[0] == "fp8 weight storage"

    fp32 = Recorder(torch.float32, without={"enable_group_offload", "set_max_memory"})
    preset = apply_low_memory(fp32, "cuda")
    assert "enable_layerwise_casting" not in fp32.calls and "enable_model_cpu_offload" in fp32.calls
    assert "model CPU offload" in preset.applied and any("enable_group_offload" in s for s in preset.skipped)
