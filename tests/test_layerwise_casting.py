"""Layerwise casting (fp8 weight storage): a cast model computes what the same model with fp8-rounded weights
computes, equals diffusers' enable_layerwise_casting under diffusers' skip patterns, keeps the documented layers in
the compute dtype, stores the real configs in about half the fp16 bytes, and switches on and off cleanly on models
and pipelines."""

from __future__ import annotations

import copy
import re
from typing import Callable, NamedTuple

import pytest
import torch
from torch import nn

import tiny
import vidcore
from test_conversion import MODELSCOPE_UNET, SD21_VAE
from test_motion import ADAPTER_V15_2_CONFIG
from test_unet2d import SD15_UNET_CONFIG
from tiny_controlnet import tiny_controlnet_config
from vidcore.errors import ArgumentError
from vidcore.models.motion import UNetMotion
from vidcore.nn.layerwise_casting import CAST_LAYERS, DEFAULT_KEEP_PATTERNS, cast_layers

pytestmark = pytest.mark.usefixtures("one_thread")

FP8 = torch.float8_e4m3fn


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def rounded(model: nn.Module, patterns=DEFAULT_KEEP_PATTERNS) -> nn.Module:
    """A copy of ``model`` whose castable layers' weights went through fp8 up front (plain layers, no hooks)."""
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for layer in cast_layers(copy_, patterns).values():
            for p in layer.parameters(recurse=False):
                p.copy_(p.to(FP8).to(p.dtype))
    return copy_


# ----------------------------------------------------------------------------- tiny models and their calls


class Tiny(NamedTuple):
    ref: nn.Module  # the diffusers model (random weights)
    ours: nn.Module  # vidcore's, loaded from the saved folder
    call: Callable  # ours -> output tensor
    ref_call: Callable | None = None  # ref -> the same output


def _load(ref, tmp_path, name):
    tiny.randomize_(ref, 0).eval().save_pretrained(tmp_path / name)
    return vidcore.load_model(tmp_path / name)


def tiny_unet3d(tmp_path):
    from diffusers import UNet3DConditionModel

    ref = UNet3DConditionModel(**tiny.tiny_unet3d_config())
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 4, 3, 8, 6, generator=g), torch.randn(1, 5, 32, generator=g)
    return Tiny(ref, _load(ref, tmp_path, "unet3d"), lambda m: m(x, 7, ctx), lambda m: m(x, 7, ctx).sample)


def tiny_unet_motion(tmp_path):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet = tiny.randomize_(UNet2DConditionModel(**tiny.tiny_unet2d_config()), 0).eval()
    adapter = tiny.randomize_(MotionAdapter(**tiny.tiny_motion_adapter_config(use_motion_mid_block=True)), 1).eval()
    unet.save_pretrained(tmp_path / "unet2d")
    adapter.save_pretrained(tmp_path / "adapter")
    ref = UNetMotionModel.from_unet2d(unet, adapter).eval()
    ours = UNetMotion(vidcore.load_model(tmp_path / "unet2d"), vidcore.load_model(tmp_path / "adapter"))
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 4, 3, 8, 6, generator=g), torch.randn(3, 5, 24, generator=g)  # a prompt per frame
    return Tiny(ref, ours, lambda m: m(x, 7, ctx), lambda m: m(x, 7, ctx).sample)


def tiny_svd_unet(tmp_path):
    from diffusers import UNetSpatioTemporalConditionModel

    ref = UNetSpatioTemporalConditionModel(**tiny.tiny_svd_unet_config())
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 3, 8, 8, 6, generator=g), torch.randn(1, 1, 32, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    return Tiny(ref, _load(ref, tmp_path, "svd_unet"), lambda m: m(x, 0.5, ctx, ids))


def tiny_controlnet(tmp_path):
    from diffusers import ControlNetModel

    ref = ControlNetModel(**tiny_controlnet_config())
    g = torch.Generator().manual_seed(1)
    factor = 2 ** (len(ref.config.conditioning_embedding_out_channels) - 1)
    x, ctx = torch.randn(1, 4, 8, 6, generator=g), torch.randn(1, 5, ref.config.cross_attention_dim, generator=g)
    cond = torch.rand(1, 3, 8 * factor, 6 * factor, generator=g)

    def call(m):
        down, mid = m(x, 7, ctx, cond)
        return torch.cat([r.flatten() for r in [*down, mid]])

    return Tiny(ref, _load(ref, tmp_path, "controlnet"), call)


def tiny_sparse_controlnet(tmp_path):
    from diffusers import SparseControlNetModel

    from tiny_controlnet import tiny_sparse_config

    ref = SparseControlNetModel(**tiny_sparse_config("rgb"))
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 4, 3, 8, 6, generator=g), torch.randn(3, 5, 24, generator=g)
    cond, mask = torch.randn(1, 4, 3, 8, 6, generator=g), torch.zeros(1, 1, 3, 8, 6)
    mask[:, :, 0] = 1

    def call(m):
        down, mid = m(x, 7, ctx, cond, mask)
        return torch.cat([r.flatten() for r in [*down, mid]])

    return Tiny(ref, _load(ref, tmp_path, "sparse_controlnet"), call)


def tiny_i2vgen(tmp_path):
    from diffusers import I2VGenXLUNet

    ref = I2VGenXLUNet(**tiny.tiny_i2vgen_unet_config())
    g = torch.Generator().manual_seed(1)
    x, image_latents = torch.randn(1, 4, 3, 8, 6, generator=g), torch.randn(1, 4, 3, 8, 6, generator=g)
    image_embeds, ctx = torch.randn(1, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    return Tiny(ref, _load(ref, tmp_path, "i2vgen"), lambda m: m(x, 7, 16, image_latents, image_embeds, ctx))


def tiny_vae(tmp_path):
    from diffusers import AutoencoderKL

    ref = AutoencoderKL(**tiny.tiny_vae_config())
    z = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    return Tiny(ref, _load(ref, tmp_path, "vae"), lambda m: m.decode(z))


def tiny_svd_vae(tmp_path):
    from diffusers import AutoencoderKLTemporalDecoder

    ref = AutoencoderKLTemporalDecoder(**tiny.tiny_svd_vae_config())
    z = torch.randn(3, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    return Tiny(ref, _load(ref, tmp_path, "svd_vae"), lambda m: m.decode(z, 3))


FAMILIES = {"unet3d": tiny_unet3d, "unet_motion": tiny_unet_motion, "svd_unet": tiny_svd_unet, "i2vgen": tiny_i2vgen,
            "controlnet": tiny_controlnet, "sparse_controlnet": tiny_sparse_controlnet, "vae_decode": tiny_vae,
            "svd_vae_decode": tiny_svd_vae}


# ----------------------------------------------------------------------------- against math and diffusers


@pytest.mark.parametrize("family", FAMILIES)
def test_cast_model_equals_the_model_with_fp8_rounded_weights(tmp_path, family):
    _, ours, call, _ = FAMILIES[family](tmp_path)
    reference = rounded(ours)
    with torch.no_grad():
        plain = call(ours)
        ours.enable_layerwise_casting(FP8, compute_dtype=torch.float32)
        got = call(ours)
        expected = call(reference)
    assert rel_err(expected, got) < 1e-5  # float32 rounding (layers may pick other kernels for other strides)
    assert rel_err(plain, got) > 1e-3  # the rounding is real: the float32 weights give another output


@pytest.mark.parametrize("family", ["unet3d", "unet_motion"])
def test_matches_diffusers_under_its_skip_patterns(tmp_path, family):
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    ref, ours, call, ref_call = FAMILIES[family](tmp_path)
    # diffusers adds the class's own patterns (UNet3D: "time_embedding") to the ones passed in
    patterns = DEFAULT_SKIP_MODULES_PATTERN + tuple(ref._skip_layerwise_casting_patterns or ())
    ref.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=torch.float32,
                                 skip_modules_pattern=DEFAULT_SKIP_MODULES_PATTERN)
    ours.enable_layerwise_casting(FP8, compute_dtype=torch.float32, skip_modules_pattern=patterns)

    def fp8_numel(m):
        return sum(p.numel() for p in m.parameters() if p.dtype == FP8)

    assert fp8_numel(ours) == fp8_numel(ref) > 0
    with torch.no_grad():
        assert rel_err(ref_call(ref), call(ours)) < 1e-5


# ----------------------------------------------------------------------------- what is kept


def expected_kept(name: str) -> bool:
    """The default keep list, written out by hand: first/last and latent convs, embeddings of time, added
    conditions and frame positions, and transformers' (not feed-forwards') in/out projections."""
    parts = name.split(".")
    last, parent = parts[-1], parts[-2] if len(parts) > 1 else ""
    if last in ("conv_in", "conv_out", "time_conv_out", "quant_conv", "post_quant_conv"):
        return True
    if any(p in ("time_embedding", "add_embedding", "fps_embedding", "time_pos_embed") for p in parts):
        return True
    return last in ("proj_in", "proj_out") and parent not in ("ff", "ff_in")


@pytest.mark.parametrize("family", FAMILIES)
def test_default_keeps_the_named_modules_and_stores_every_other_layer_in_fp8(tmp_path, family):
    ours = FAMILIES[family](tmp_path).ours
    ours.enable_layerwise_casting(FP8, compute_dtype=torch.bfloat16)
    kept, cast = [], []
    for name, module in ours.named_modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if isinstance(module, CAST_LAYERS):
            (kept if expected_kept(name) else cast).append(name)
            want = torch.bfloat16 if expected_kept(name) else FP8
            assert {t.dtype for t in own} == {want}, name
        elif own:  # norms, position tables, blend factors: the compute dtype
            assert {t.dtype for t in own if t.is_floating_point()} <= {torch.bfloat16}, name
    assert cast and kept
    assert any(re.search(r"(^|\.)conv_in$", n) for n in kept)
    if family in ("unet3d", "unet_motion", "svd_unet", "i2vgen", "controlnet", "sparse_controlnet"):
        assert any("time_embedding" in n for n in kept)
        assert any(n.endswith("ff.proj_in") or n.endswith("ff_in.proj_in") for n in cast)
        assert any(re.search(r"attentions\.\d+\.proj_in$|\.\d+\.proj_in$", n) for n in kept)
    assert ours.dtype == torch.bfloat16


def test_motion_position_tables_stay_in_the_compute_dtype(tmp_path):
    ours = tiny_unet_motion(tmp_path).ours
    ours.enable_layerwise_casting(FP8, compute_dtype=torch.bfloat16)
    tables = [b for n, b in ours.adapter.named_buffers() if "pos_embed" in n]
    assert tables and all(t.dtype == torch.bfloat16 for t in tables)


# ----------------------------------------------------------------------------- weight bytes, real configs on meta

# stabilityai/stable-video-diffusion-img2vid-xt and ali-vilab/i2vgen-xl unet/config.json (as in test_svd_unet.py and
# test_i2vgen_unet.py, where they sit inside the tests)
SVD_XT_UNET = {"_class_name": "UNetSpatioTemporalConditionModel", "addition_time_embed_dim": 256,
               "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
               "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
               "in_channels": 8, "layers_per_block": 2, "num_attention_heads": [5, 10, 20, 20], "num_frames": 25,
               "out_channels": 4, "projection_class_embeddings_input_dim": 768, "sample_size": 96,
               "transformer_layers_per_block": 1,
               "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3}
I2VGEN_UNET = {"_class_name": "I2VGenXLUNet", "attention_head_dim": 64, "block_out_channels": [320, 640, 1280, 1280],
               "cross_attention_dim": 1024, "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
               "in_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "num_attention_heads": 64,
               "out_channels": 4, "sample_size": 32, "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3}


def meta(config):
    from vidcore.loading import BY_DIFFUSERS, build

    return build(BY_DIFFUSERS[config["_class_name"]], config)


REAL = {  # name -> (model on meta, bytes / fp16 bytes with bf16 compute, as measured)
    "modelscope_unet3d": (lambda: meta(MODELSCOPE_UNET), 0.519),
    "svd_xt_unet": (lambda: meta(SVD_XT_UNET), 0.542),
    "i2vgen_xl_unet": (lambda: meta(I2VGEN_UNET), 0.519),
    "animatediff_unet_motion_sd15": (lambda: UNetMotion(meta(SD15_UNET_CONFIG), meta(ADAPTER_V15_2_CONFIG)), 0.526),
    "motion_adapter_v1-5-2": (lambda: meta(ADAPTER_V15_2_CONFIG), 0.546),
    "sd21_vae": (lambda: meta(SD21_VAE), 0.501),
}


@pytest.mark.parametrize("name", REAL)
def test_real_config_weight_bytes(name):
    build, ratio = REAL[name]
    model = build()
    numel = sum(p.numel() for p in model.parameters())
    model.enable_layerwise_casting(FP8, compute_dtype=torch.bfloat16)
    params = list(model.parameters())
    assert {p.device.type for p in params} == {"meta"} and {p.dtype for p in params} == {FP8, torch.bfloat16}
    cast = sum(p.numel() for p in params if p.dtype == FP8)
    kept = numel - cast
    stored = sum(p.numel() * p.element_size() for p in params)
    assert stored == cast + 2 * kept
    assert stored <= 0.55 * 2 * numel and stored <= 0.3 * 4 * numel
    assert abs(stored / (2 * numel) - ratio) < 0.001  # the table of docs/memory.md


# ----------------------------------------------------------------------------- switching on and off


def test_disable_keeps_the_fp8_rounded_weights_and_outputs(tmp_path):
    _, ours, call, _ = tiny_unet3d(tmp_path)
    layer = ours.down_blocks[0].resnets[0].conv1
    with torch.no_grad():
        ours.enable_layerwise_casting(FP8, compute_dtype=torch.float32)
        cast = call(ours)
        fp8 = layer.weight.detach().clone()
        ours.disable_layerwise_casting()
        assert {p.dtype for p in ours.parameters()} == {torch.float32}
        assert not layer._forward_pre_hooks and not layer._forward_hooks
        assert torch.equal(layer.weight, fp8.float())
        assert torch.equal(call(ours), cast)  # documented: disabling keeps the rounded values
        ours.disable_layerwise_casting()  # a model without casting: nothing happens
        ours.enable_layerwise_casting(FP8)  # on again (compute: the model's dtype), the same stored weights
        assert torch.equal(layer.weight, fp8) and torch.equal(call(ours), cast)


def test_enabling_twice_and_bad_dtypes_are_clear_errors(tmp_path):
    ours = tiny_unet3d(tmp_path).ours
    for bad in (torch.int8, torch.float32, torch.float64):
        with pytest.raises(ValueError, match="storage_dtype must be one of"):
            ours.enable_layerwise_casting(bad)
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        ours.enable_layerwise_casting(FP8, compute_dtype=FP8)
    assert {p.dtype for p in ours.parameters()} == {torch.float32}  # nothing changed by the refusals
    ours.enable_layerwise_casting(FP8)
    with pytest.raises(RuntimeError, match="already on.*disable_layerwise_casting"):
        ours.enable_layerwise_casting(torch.float8_e5m2)
    with pytest.raises(RuntimeError, match="disable_layerwise_casting"):
        ours.fuse_qkv_projections()


def test_an_error_inside_a_layer_leaves_it_stored_in_fp8(tmp_path):
    ours = tiny_unet3d(tmp_path).ours
    ours.enable_layerwise_casting(FP8, compute_dtype=torch.float32)
    with pytest.raises(RuntimeError):
        ours(torch.randn(1, 3, 2, 8, 8), 1, torch.randn(1, 5, 32))  # 3 channels for a 4-channel conv_in
    with pytest.raises(RuntimeError):
        ours.down_blocks[0].resnets[0].conv1(torch.randn(1, 5, 4, 4))
    assert ours.down_blocks[0].resnets[0].conv1.weight.dtype == FP8


def test_fp16_vae_upcast_keeps_fp8_storage(tmp_path):
    """The pipelines run a float16 VAE with ``force_upcast`` in float32: with fp8 layers only the compute dtype
    moves, the stored weights stay fp8."""
    from vidcore.pipelines.base import upcast_vae

    ours = tiny_svd_vae(tmp_path).ours
    ours.to(torch.float16).enable_layerwise_casting(FP8)
    z = torch.randn(3, 4, 6, 5)
    with torch.no_grad(), upcast_vae(ours) as vae:
        assert vae.dtype == torch.float32
        out = vae.decode(z, 3)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert ours.dtype == torch.float16
    assert {p.dtype for p in ours.parameters()} == {FP8, torch.float16}


# ----------------------------------------------------------------------------- pipelines


def test_pipeline_casts_the_unet_by_default_and_matches_rounded_weights(tmp_path):
    tiny.build_tiny_t2v_pipeline(tmp_path / "t2v")
    pipe = vidcore.TextToVideoPipeline.from_pretrained(tmp_path / "t2v")
    pipe.set_progress_bar_config(disable=True)
    reference = vidcore.TextToVideoPipeline.from_pretrained(tmp_path / "t2v")
    reference.set_progress_bar_config(disable=True)
    reference.unet = rounded(reference.unet)

    def run(p):
        return p("a cat", num_frames=2, height=16, width=16, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="pt").frames

    pipe.enable_layerwise_casting(FP8, compute_dtype=torch.float32)
    assert any(p.dtype == FP8 for p in pipe.unet.parameters())
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    with torch.no_grad():
        assert torch.equal(run(pipe), run(reference))
    pipe.disable_layerwise_casting()
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}
    pipe.enable_layerwise_casting(components=("unet", "vae"))
    assert any(p.dtype == FP8 for p in pipe.vae.parameters())
    with pytest.raises(ArgumentError, match="no model 'controlnet'"):
        pipe.enable_layerwise_casting(components=("controlnet",))


def test_animatediff_pipeline_casts_the_adapter_once(tmp_path):
    from tiny_animatediff import build_tiny_animatediff

    paths = build_tiny_animatediff(tmp_path)
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(paths.sd, motion_adapter=paths.adapter)
    pipe.enable_layerwise_casting(FP8, components=("motion_adapter", "unet"))
    adapter = pipe.unet.adapter
    assert any(p.dtype == FP8 for p in adapter.parameters())
    assert any(p.dtype == FP8 for p in pipe.unet.unet.parameters())
    with pytest.raises(RuntimeError, match="already on in unet"):
        pipe.enable_layerwise_casting(FP8, components=("vae", "unet"))
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}  # refused before any change
    pipe.disable_layerwise_casting()
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}


def test_demo_model_with_fp8_weights_follows_its_prompts():
    """The shipped demo model, its UNet stored in fp8: the same color and direction as in float32 on four prompts
    (``python -m vidcore.demo.evaluate --fp8`` scores all 192 videos; benchmarks/RESULTS.md has the numbers)."""
    from vidcore.demo import DEFAULTS, demo_model_path
    from vidcore.demo.evaluate import score_color, score_direction

    prompts = ["a red circle moving right", "a blue square moving up", "a green triangle moving left",
               "a yellow circle moving down"]
    kwargs = {k: v for k, v in DEFAULTS.items() if k != "fps"}
    pipe = vidcore.TextToVideoPipeline.from_pretrained(demo_model_path())
    pipe.set_progress_bar_config(disable=True)

    def scores():
        out = pipe(prompts, **kwargs, generator=[torch.Generator().manual_seed(0) for _ in prompts],
                   output_type="np").frames
        return [(score_color(v), score_direction(v)) for v in out], out

    plain, plain_frames = scores()
    pipe.enable_layerwise_casting(FP8)
    cast, cast_frames = scores()
    assert cast == plain == [(p.split()[1], p.split()[-1]) for p in prompts]
    assert abs(cast_frames - plain_frames).max() > 0  # the fp8 weights were used


def test_motion_adapter_alone_casts_and_loras_are_refused_on_fp8_layers(tmp_path):
    """A MotionAdapter cast on its own (its dtype reads the compute dtype); adding a LoRA to fp8-stored layers is a
    clear refusal that leaves the weights as they were."""
    from safetensors.torch import save_file
    from test_motion_lora import build, legacy_lora

    from vidcore.errors import UnsupportedFeatureError

    adapter = tiny_unet_motion(tmp_path).ours.adapter
    adapter.enable_layerwise_casting(FP8)
    assert adapter.dtype == torch.float32 and any(p.dtype == FP8 for p in adapter.parameters())

    ref, ours = build(tmp_path / "lora")
    save_file(legacy_lora(ref), tmp_path / "lora" / "diffusion_pytorch_model.safetensors")
    ours.enable_layerwise_casting(FP8)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(UnsupportedFeatureError, match="LoRA weights cannot be added to fp8-stored layers"):
        vidcore.fuse_lora(ours, vidcore.load_motion_lora(tmp_path / "lora"), scale=0.7)
    assert all(torch.equal(v.float(), before[k].float()) for k, v in ours.state_dict().items())


def test_ip_adapter_projections_stay_in_the_compute_dtype():
    assert any(re.search(p, "ip_adapters.0.image_proj.proj") for p in DEFAULT_KEEP_PATTERNS)
