"""SDXL's UNet is vidcore's UNet2D with other settings plus the "text_time" micro-conditioning:
parity with diffusers' UNet2DConditionModel at toy size, and the real SDXL config on the meta device."""

import pytest
import torch

import tiny
import vidcore


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def sdxl_inputs(config, batch=2, height=8, width=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config["in_channels"], height, width, generator=g)
    ctx = torch.randn(batch, 7, config["cross_attention_dim"], generator=g)
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    added = {"text_embeds": torch.randn(batch, pooled, generator=g),
             "time_ids": torch.tensor([[64.0, 96, 0, 0, 64, 96], [72, 40, 8, 16, 64, 32]][:batch])}
    return x, ctx, added


def test_sdxl_unet_matches_diffusers(tmp_path):
    from diffusers import UNet2DConditionModel

    config = tiny.tiny_sdxl_unet_config()
    ref = tiny.randomize_(UNet2DConditionModel(**config), 0).eval()
    ref.save_pretrained(tmp_path / "unet")
    ours = vidcore.load_model(tmp_path, subfolder="unet")
    assert ours.add_embedding is not None
    x, ctx, added = sdxl_inputs(config, height=9, width=7)
    with torch.no_grad():
        expected = ref(x, torch.tensor([3, 871]), ctx, added_cond_kwargs=added).sample
        got = ours(x, torch.tensor([3, 871]), ctx, added_cond_kwargs=added)
        other = ours(x, torch.tensor([3, 871]), ctx, added_cond_kwargs={**added, "time_ids": added["time_ids"] + 8})
    assert rel_err(expected, got) < 1e-5
    assert rel_err(expected, other) > 1e-3  # the micro-conditioning really enters
    with pytest.raises(ValueError, match="added_cond_kwargs"):
        ours(x, 3, ctx)
    vidcore.save_diffusers(ours, tmp_path / "exported")
    again = UNet2DConditionModel.from_pretrained(tmp_path / "exported")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ref.state_dict().items())


SDXL_UNET_CONFIG = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0", "act_fn": "silu",
    "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "center_input_sample": False,
    "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None,
    "only_cross_attention": False, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "sample_size": 128, "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}


def test_real_sdxl_config_every_key_and_shape_converts():
    from diffusers import UNet2DConditionModel

    from vidcore.loading import BY_DIFFUSERS, build

    with torch.device("meta"):
        ref = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
    arch = BY_DIFFUSERS["UNet2DConditionModel"]
    config = dict(ref.config)
    ours = build(arch, config)
    source = ref.state_dict()
    target = {k: v.shape for k, v in ours.state_dict().items()}
    converted, _ = arch.keymap(config).convert(source, target)
    assert len(converted) == len(source) == len(target)
    assert {k for k in source if k.startswith("add_embedding.")} == {
        f"add_embedding.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    params = sum(p.numel() for p in ours.parameters())
    assert params == sum(p.numel() for p in ref.parameters())
    assert abs(params / 1e6 - 2567.46) < 0.01


def test_text_time_needs_its_sizes():
    from vidcore.models.unet2d import UNet2DConfig

    with pytest.raises(ValueError, match="addition_time_embed_dim"):
        UNet2DConfig.from_diffusers_config({**SDXL_UNET_CONFIG, "addition_time_embed_dim": None})
    cfg = UNet2DConfig.from_diffusers_config(SDXL_UNET_CONFIG)
    assert UNet2DConfig.from_diffusers_config(cfg.to_diffusers_config()) == cfg
