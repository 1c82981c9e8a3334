"""UNet2D (SD1.x/SD2.x UNet) parity with diffusers' UNet2DConditionModel, ControlNet residual inputs,
export back to the diffusers layout, and real-config key coverage on the meta device."""

import pytest
import torch

import tiny
import vidcore


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


CONFIGS = {
    "sd15-like-conv-proj": dict(),
    # SD2-like: linear projections, per-level head counts, 8 input channels (InstructPix2Pix), 3 levels,
    # two transformer layers per block, one res block per level, LCM-style timestep condition
    "sd2-like-linear-8ch": dict(
        in_channels=8, block_out_channels=(16, 32, 48), attention_head_dim=(2, 4, 8), use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, transformer_layers_per_block=2, cross_attention_dim=32, time_cond_proj_dim=6,
    ),
    # every level cross-attends, per-level layers, mid scale factor, other eps/padding, shifted time features
    "all-cross-attn-options": dict(
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=(1, 2),
        attention_head_dim=(8, 2), mid_block_scale_factor=1.5, norm_eps=1e-6, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1, out_channels=3, time_embedding_dim=48,
    ),
}


def build(tmp_path, seed=0, **overrides):
    from diffusers import UNet2DConditionModel

    ref = tiny.randomize_(UNet2DConditionModel(**tiny.tiny_unet2d_config(**overrides)), seed).eval()
    ref.save_pretrained(tmp_path / "unet")
    return ref, vidcore.load_model(tmp_path, subfolder="unet")


def inputs(ref, batch=2, height=8, width=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, ref.config.in_channels, height, width, generator=g)
    ctx = torch.randn(batch, 7, ref.config.cross_attention_dim, generator=g)
    cond = None
    if ref.config.time_cond_proj_dim:
        cond = torch.randn(batch, ref.config.time_cond_proj_dim, generator=g)
    return x, ctx, cond


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("height,width", [(8, 12), (9, 7)])
def test_unet2d_matches_diffusers(tmp_path, name, height, width):
    ref, ours = build(tmp_path, **CONFIGS[name])
    assert type(ours).__name__ == "UNet2D"
    x, ctx, cond = inputs(ref, height=height, width=width)
    t = torch.tensor([3, 871])
    with torch.no_grad():
        expected = ref(x, t, ctx, timestep_cond=cond).sample
        got = ours(x, t, ctx, timestep_cond=cond)
    assert got.shape == expected.shape
    assert rel_err(expected, got) < 1e-5


def test_scalar_and_float_timesteps(tmp_path):
    ref, ours = build(tmp_path)
    x, ctx, _ = inputs(ref, batch=1)
    with torch.no_grad():
        for t in (500, 12.5, torch.tensor(999)):
            assert rel_err(ref(x, t, ctx).sample, ours(x, t, ctx)) < 1e-5


def controlnet_residuals(ref, x, seed=3):
    """Random residuals shaped like every down-path feature and the mid-block output of ``ref``."""
    shapes = []
    hooks = [ref.conv_in.register_forward_hook(lambda m, i, o: shapes.append(o.shape))]
    for block in ref.down_blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: shapes.extend(t.shape for t in o[1])))
    hooks.append(ref.mid_block.register_forward_hook(lambda m, i, o: shapes.append(o.shape)))
    with torch.no_grad():
        ref(x, 10, torch.zeros(x.shape[0], 1, ref.config.cross_attention_dim))
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(s, generator=g) for s in shapes]
    return tensors[:-1], tensors[-1]


@pytest.mark.parametrize("name", ["sd15-like-conv-proj", "sd2-like-linear-8ch"])
def test_controlnet_residuals_match_diffusers(tmp_path, name):
    ref, ours = build(tmp_path, **CONFIGS[name])
    x, ctx, cond = inputs(ref, height=9, width=7)
    down, mid = controlnet_residuals(ref, x)
    assert len(down) == ours.num_skips()
    with torch.no_grad():
        expected = ref(x, 42, ctx, timestep_cond=cond, down_block_additional_residuals=tuple(down),
                       mid_block_additional_residual=mid).sample
        got = ours(x, 42, ctx, timestep_cond=cond, down_block_additional_residuals=tuple(down),
                   mid_block_additional_residual=mid)
        plain = ours(x, 42, ctx, timestep_cond=cond)
    assert rel_err(expected, got) < 1e-5
    assert rel_err(expected, plain) > 1e-2  # the residuals really enter the computation


def test_controlnet_residual_errors(tmp_path):
    ref, ours = build(tmp_path)
    x, ctx, _ = inputs(ref, batch=1)
    down, mid = controlnet_residuals(ref, x)
    with pytest.raises(ValueError, match="come in pairs"):
        ours(x, 1, ctx, down_block_additional_residuals=tuple(down))
    with pytest.raises(ValueError, match=f"has {len(down)} down-path features, got {len(down) - 1}"):
        ours(x, 1, ctx, down_block_additional_residuals=tuple(down[:-1]), mid_block_additional_residual=mid)


def test_freeu_matches_diffusers(tmp_path):
    ref, ours = build(tmp_path)
    ref.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    ours.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    x, ctx, _ = inputs(ref, batch=1)
    with torch.no_grad():
        expected = ref(x, 10, ctx).sample
        got = ours(x, 10, ctx)
    assert rel_err(expected, got) < 1e-5


@pytest.mark.parametrize("name", ["sd15-like-conv-proj", "sd2-like-linear-8ch"])
def test_export_round_trips_through_diffusers(tmp_path, name):
    """save_diffusers writes the layout the config names (1x1 conv or linear projections); diffusers
    loads it and gives the same output."""
    from diffusers import UNet2DConditionModel

    ref, ours = build(tmp_path, **CONFIGS[name])
    vidcore.save_diffusers(ours, tmp_path / "exported")
    again = UNet2DConditionModel.from_pretrained(tmp_path / "exported").eval()
    for key, value in ref.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    proj = again.down_blocks[0].attentions[0].proj_in.weight
    assert proj.ndim == (2 if ref.config.use_linear_projection else 4)


def test_fp16_variant_and_dtype(tmp_path):
    from diffusers import UNet2DConditionModel

    ref = tiny.randomize_(UNet2DConditionModel(**tiny.tiny_unet2d_config()), 0).eval()
    ref.save_pretrained(tmp_path / "unet", variant="fp16")
    half = vidcore.load_model(tmp_path / "unet", variant="fp16", torch_dtype=torch.float16)
    assert next(half.parameters()).dtype == torch.float16
    conv = dict(ref.named_parameters())["down_blocks.0.attentions.0.proj_in.weight"]
    assert torch.equal(half.down_blocks[0].attentions[0].proj_in.weight, conv[:, :, 0, 0].half())


SD15_UNET_CONFIG = {  # runwayml/stable-diffusion-v1-5 unet/config.json
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD21_UNET_CONFIG = {  # stabilityai/stable-diffusion-2-1 unet/config.json (the keys that differ)
    **SD15_UNET_CONFIG, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
    "dual_cross_attention": False, "num_class_embeds": None, "only_cross_attention": False,
    "resnet_time_scale_shift": "default", "upcast_attention": True, "use_linear_projection": True, "sample_size": 96,
}


@pytest.mark.parametrize("config,tensors,millions", [(SD15_UNET_CONFIG, 686, 859.52), (SD21_UNET_CONFIG, 686, 865.91)])
def test_real_config_every_key_and_shape_converts(config, tensors, millions):
    from diffusers import UNet2DConditionModel

    from vidcore.loading import BY_DIFFUSERS, build

    with torch.device("meta"):
        ref = UNet2DConditionModel.from_config(config)
    arch = BY_DIFFUSERS["UNet2DConditionModel"]
    config = dict(ref.config)  # every key diffusers writes (newer hub files carry them all)
    ours = build(arch, config)
    source = ref.state_dict()
    target = {k: v.shape for k, v in ours.state_dict().items()}
    converted, _ = arch.keymap(config).convert(source, target)
    assert len(converted) == len(source) == len(target) == tensors
    assert abs(sum(p.numel() for p in ours.parameters()) / 1e6 - millions) < 0.01
    back, _ = arch.keymap(config).convert(ours.state_dict(), {k: v.shape for k, v in source.items()}, "reverse")
    assert set(back) == set(source)


@pytest.mark.parametrize("key,value", [("addition_embed_type", "text_image"), ("class_embed_type", "timestep"),
                                       ("only_cross_attention", True), ("num_attention_heads", 8)])
def test_unsupported_options_are_clear_errors(key, value):
    from vidcore.models.unet2d import UNet2DConfig

    with pytest.raises(ValueError, match=key):
        UNet2DConfig.from_diffusers_config({**SD15_UNET_CONFIG, key: value})


def test_config_round_trips():
    from vidcore.models.unet2d import UNet2DConfig

    cfg = UNet2DConfig.from_diffusers_config(SD21_UNET_CONFIG)
    assert cfg.heads() == (5, 10, 20, 20) and cfg.use_linear_projection
    assert UNet2DConfig.from_diffusers_config(cfg.to_diffusers_config()) == cfg
