"""AnimateDiff: MotionAdapter loading and UNetMotion parity with diffusers' UNetMotionModel.from_unet2d,
weight sharing with the 2D UNet, real-config key coverage on the meta device, and clear errors."""

import pytest
import torch

import tiny
import vidcore
from test_unet2d import SD15_UNET_CONFIG, rel_err
from vidcore.models.motion import MotionAdapter, MotionAdapterConfig, UNetMotion


ADAPTERS = {
    "v1-no-mid": dict(),
    "v2-mid-block": dict(use_motion_mid_block=True, motion_max_seq_length=32),
    "per-level-heads-2-layers": dict(use_motion_mid_block=True, motion_num_attention_heads=(2, 8),
                                     motion_transformer_layers_per_block=2, motion_transformer_layers_per_mid_block=2),
}


def build(tmp_path, adapter_overrides=None, unet_overrides=None, seed=0):
    """(diffusers UNetMotionModel, vidcore UNetMotion, vidcore UNet2D, vidcore MotionAdapter), all from
    random weights saved in the diffusers layout and loaded with vidcore.load_model."""
    from diffusers import MotionAdapter as RefAdapter
    from diffusers import UNet2DConditionModel, UNetMotionModel

    unet = tiny.randomize_(UNet2DConditionModel(**tiny.tiny_unet2d_config(**(unet_overrides or {}))), seed).eval()
    adapter = tiny.randomize_(RefAdapter(**tiny.tiny_motion_adapter_config(**(adapter_overrides or {}))), seed + 1).eval()
    unet.save_pretrained(tmp_path / "sd" / "unet")
    adapter.save_pretrained(tmp_path / "adapter")
    ref = UNetMotionModel.from_unet2d(unet, adapter).eval()
    ours_unet = vidcore.load_model(tmp_path / "sd", subfolder="unet")
    ours_adapter = vidcore.load_model(tmp_path / "adapter")
    assert isinstance(ours_adapter, MotionAdapter)
    return ref, UNetMotion(ours_unet, ours_adapter), ours_unet, ours_adapter


def video_inputs(channels, batch=2, frames=3, height=8, width=6, context_dim=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, height, width, generator=g)
    ctx = torch.randn(batch, 7, context_dim, generator=g)
    return x, ctx


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize("frames,height,width", [(3, 8, 6), (5, 7, 9)])
def test_unet_motion_matches_diffusers(tmp_path, name, frames, height, width):
    ref, ours, _, _ = build(tmp_path, ADAPTERS[name])
    x, ctx = video_inputs(4, frames=frames, height=height, width=width)
    t = torch.tensor([7, 640])
    with torch.no_grad():
        # diffusers' model takes the prompt repeated per frame; vidcore accepts either form
        expected = ref(x, t, ctx.repeat_interleave(frames, dim=0)).sample
        got = ours(x, t, ctx)
        got_per_frame = ours(x, t, ctx.repeat_interleave(frames, dim=0))
        still = ours.unet(x.transpose(1, 2).flatten(0, 1), t.repeat_interleave(frames), ctx.repeat_interleave(frames, 0))
    assert got.shape == expected.shape == x.shape
    assert rel_err(expected, got) < 1e-5
    assert torch.equal(got, got_per_frame)
    # the motion modules really act: without them (plain 2D UNet per frame) the result differs
    assert rel_err(expected, still.unflatten(0, (2, frames)).transpose(1, 2)) > 1e-2


def test_per_frame_prompts_match_diffusers(tmp_path):
    ref, ours, _, _ = build(tmp_path, ADAPTERS["v2-mid-block"])
    x, _ = video_inputs(4, batch=1, frames=4)
    ctx = torch.randn(4, 7, 24)  # a different prompt embedding for every frame
    with torch.no_grad():
        assert rel_err(ref(x, 99, ctx).sample, ours(x, 99, ctx)) < 1e-5


def test_pia_adapter_conv_in(tmp_path):
    """PIA adapters bring a 9-channel conv_in: the UNet's weights for the first 4 channels, the adapter's
    for the mask and image-latent channels."""
    ref, ours, _, adapter = build(tmp_path, dict(conv_in_channels=9, motion_max_seq_length=32))
    assert ours.in_channels == 9 and adapter.conv_in.weight.shape[1] == 9
    x, ctx = video_inputs(9, frames=3)
    with torch.no_grad():
        assert rel_err(ref(x, 300, ctx.repeat_interleave(3, dim=0)).sample, ours(x, 300, ctx)) < 1e-5


def test_controlnet_residuals_match_diffusers(tmp_path):
    ref, ours, _, _ = build(tmp_path, ADAPTERS["v2-mid-block"])
    frames = 3
    x, ctx = video_inputs(4, batch=1, frames=frames, height=9, width=7)
    ctx = ctx.repeat_interleave(frames, dim=0)
    shapes = []
    hooks = [ref.conv_in.register_forward_hook(lambda m, i, o: shapes.append(o.shape))]
    hooks += [b.register_forward_hook(lambda m, i, o: shapes.extend(t.shape for t in o[1])) for b in ref.down_blocks]
    hooks.append(ref.mid_block.register_forward_hook(lambda m, i, o: shapes.append(o.shape)))
    with torch.no_grad():
        ref(x, 5, ctx)
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(4)
    res = [torch.randn(s, generator=g) for s in shapes]  # (b f) c h w, as a per-frame ControlNet gives
    with torch.no_grad():
        expected = ref(x, 5, ctx, down_block_additional_residuals=tuple(res[:-1]),
                       mid_block_additional_residual=res[-1]).sample
        got = ours(x, 5, ctx, down_block_additional_residuals=tuple(res[:-1]), mid_block_additional_residual=res[-1])
    assert rel_err(expected, got) < 1e-5


def test_2d_weights_are_shared_not_copied(tmp_path):
    _, ours, unet, adapter = build(tmp_path, ADAPTERS["v2-mid-block"])
    assert ours.unet is unet and ours.adapter is adapter
    params = dict(ours.named_parameters())
    for name, p in unet.named_parameters():
        assert params[f"unet.{name}"] is p
        assert params[f"unet.{name}"].data_ptr() == p.data_ptr()
    for name, p in adapter.named_parameters():
        assert params[f"adapter.{name}"] is p
    assert len(params) == len(list(unet.parameters())) + len(list(adapter.parameters()))

    # swapping the adapter (or the base model) reuses the same UNet storage; edits are seen by both
    other = MotionAdapter(adapter.config)
    swapped = UNetMotion(unet, other)
    assert swapped.unet.conv_in.weight.data_ptr() == ours.unet.conv_in.weight.data_ptr()
    x, ctx = video_inputs(4, batch=1, frames=2)
    with torch.no_grad():
        before = ours(x, 3, ctx)
        unet.conv_out.bias.add_(1.0)
        after = ours(x, 3, ctx)
    assert torch.allclose(after - before, torch.ones_like(before), atol=1e-4)


def test_loaded_adapter_matches_diffusers_weights(tmp_path):
    from diffusers import MotionAdapter as RefAdapter

    from vidcore.conversion.maps.diffusers_motion import MOTION_ADAPTER_MAP

    _, _, _, adapter = build(tmp_path, ADAPTERS["per-level-heads-2-layers"])
    ref = RefAdapter.from_pretrained(tmp_path / "adapter")
    converted, _ = MOTION_ADAPTER_MAP.convert(ref.state_dict(), {k: v.shape for k, v in adapter.state_dict().items()})
    for key, value in adapter.state_dict().items():
        assert torch.equal(value, converted[key]), key
    # the frame-position table vidcore computes equals diffusers' stored one
    fresh = MotionAdapter(adapter.config)
    assert torch.equal(fresh.down_blocks[1][0].transformer_blocks[0].pos_embed.pe,
                       ref.down_blocks[1].motion_modules[0].transformer_blocks[0].pos_embed.pe)


def test_adapter_export_round_trips_through_diffusers(tmp_path):
    from diffusers import MotionAdapter as RefAdapter

    _, _, _, adapter = build(tmp_path, ADAPTERS["v2-mid-block"])
    vidcore.save_diffusers(adapter, tmp_path / "exported")
    ref = RefAdapter.from_pretrained(tmp_path / "adapter")
    again = RefAdapter.from_pretrained(tmp_path / "exported")
    assert again.config.use_motion_mid_block and again.config.motion_max_seq_length == 32
    for key, value in ref.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_too_many_frames_is_a_clear_error(tmp_path):
    _, ours, _, _ = build(tmp_path, ADAPTERS["v1-no-mid"])  # motion_max_seq_length 24
    x, ctx = video_inputs(4, batch=1, frames=25, height=4, width=4)
    with pytest.raises(ValueError, match="num_frames=25 exceeds the motion adapter's motion_max_seq_length=24"):
        ours(x, 1, ctx)
    module = ours.adapter.down_blocks[0][0]  # a module on its own says the same in its own terms
    with pytest.raises(ValueError, match="25 frames is more than this temporal module's 24 positions"):
        module(torch.randn(25, 32, 4, 4), 25)


def test_adapter_base_mismatch_is_a_clear_error(tmp_path):
    from vidcore.models.unet2d import UNet2D, UNet2DConfig

    unet = UNet2D(UNet2DConfig.from_diffusers_config(tiny.tiny_unet2d_config()))
    wrong_channels = MotionAdapter(MotionAdapterConfig.from_diffusers_config(tiny.tiny_motion_adapter_config(block_out_channels=(32, 48))))
    with pytest.raises(ValueError, match=r"block_out_channels \(32, 48\) do not match the UNet's \(32, 64\)"):
        UNetMotion(unet, wrong_channels)
    wrong_layers = MotionAdapter(MotionAdapterConfig.from_diffusers_config(tiny.tiny_motion_adapter_config(motion_layers_per_block=1)))
    with pytest.raises(ValueError, match="motion_layers_per_block 1 does not match the UNet's layers_per_block 2"):
        UNetMotion(unet, wrong_layers)
    with pytest.raises(TypeError, match="not run on its own"):
        wrong_layers(torch.zeros(1))


def test_temporal_attention_goes_through_the_backend_dispatch(tmp_path, monkeypatch):
    import vidcore.nn.attention as attention

    _, ours, _, adapter = build(tmp_path, ADAPTERS["v2-mid-block"])
    x, ctx = video_inputs(4, batch=1, frames=3)
    calls = []
    original = attention.temporal_attend

    def counting(*args, **kwargs):
        calls.append(args[3])  # num_frames
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "temporal_attend", counting)
    with torch.no_grad():
        sdpa = ours(x, 3, ctx)
        with vidcore.attention_backend("math"):
            math = ours(x, 3, ctx)
    modules = sum(len(level) for level in adapter.down_blocks) + sum(len(level) for level in adapter.up_blocks) + 1
    assert calls == [3] * (2 * 2 * modules)  # two attentions per module, two runs
    assert rel_err(sdpa, math) < 1e-5


# motion adapter configs from the hub (stored copies of config.json)
ADAPTER_V15_2_CONFIG = {"_class_name": "MotionAdapter", "block_out_channels": [320, 640, 1280, 1280],
                        "motion_layers_per_block": 2, "motion_mid_block_layers_per_block": 1,
                        "motion_max_seq_length": 32, "motion_norm_num_groups": 32, "motion_num_attention_heads": 8,
                        "use_motion_mid_block": True}
ADAPTER_V15_CONFIG = {**ADAPTER_V15_2_CONFIG, "motion_max_seq_length": 24, "use_motion_mid_block": False}
# wangfuyun/AnimateLCM (the consistency-distilled adapter): MotionAdapter's defaults, the v1-5-2 layout
ADAPTER_ANIMATELCM_CONFIG = {**ADAPTER_V15_2_CONFIG, "conv_in_channels": None, "motion_transformer_layers_per_block": 1,
                             "motion_transformer_layers_per_mid_block": 1}


@pytest.mark.parametrize("config,tensors,millions", [(ADAPTER_V15_2_CONFIG, 567, 453.21),
                                                     (ADAPTER_V15_CONFIG, 540, 417.14),
                                                     (ADAPTER_ANIMATELCM_CONFIG, 567, 453.21)])
def test_real_adapter_config_every_key_and_shape_converts(config, tensors, millions):
    from diffusers import MotionAdapter as RefAdapter

    from vidcore.loading import BY_DIFFUSERS, build

    with torch.device("meta"):
        ref = RefAdapter.from_config(config)
    arch = BY_DIFFUSERS["MotionAdapter"]
    ours = build(arch, config)
    source = ref.state_dict()
    converted, _ = arch.keymap(config).convert(source, {k: v.shape for k, v in ours.state_dict().items()})
    assert len(converted) == len(source) == len(ours.state_dict()) == tensors
    assert abs(sum(p.numel() for p in ours.parameters()) / 1e6 - millions) < 0.01
    back, _ = arch.keymap(config).convert(ours.state_dict(), {k: v.shape for k, v in source.items()}, "reverse")
    assert set(back) == set(source)


def test_real_sd15_unet_motion_covers_diffusers_unet_motion_model():
    """SD1.5 UNet + v1-5-2 adapter: every tensor of diffusers' UNetMotionModel is either a UNet2D tensor or
    an adapter tensor under the same name, and vidcore's maps convert both halves."""
    from diffusers import MotionAdapter as RefAdapter
    from diffusers import UNet2DConditionModel, UNetMotionModel

    from vidcore.loading import BY_DIFFUSERS, build

    with torch.device("meta"):
        ref_unet = UNet2DConditionModel.from_config(SD15_UNET_CONFIG)
        ref_adapter = RefAdapter.from_config(ADAPTER_V15_2_CONFIG)
        ref_motion = UNetMotionModel.from_unet2d(ref_unet, ref_adapter, load_weights=False)
    motion_keys = {k: v.shape for k, v in ref_motion.state_dict().items()}
    assert len(motion_keys) == 1253
    halves = {"UNet2DConditionModel": (ref_unet, SD15_UNET_CONFIG), "MotionAdapter": (ref_adapter, ADAPTER_V15_2_CONFIG)}
    built = {}
    for cls, (ref, config) in halves.items():
        source = ref.state_dict()
        ref_part = {k: v for k, v in motion_keys.items() if ("motion_modules" in k) == (cls == "MotionAdapter")}
        assert {k: v.shape for k, v in source.items()} == ref_part
        arch = BY_DIFFUSERS[cls]
        built[cls] = build(arch, config)
        arch.keymap(config).convert(source, {k: v.shape for k, v in built[cls].state_dict().items()})
    ours = UNetMotion(built["UNet2DConditionModel"], built["MotionAdapter"])
    assert len(ours.state_dict()) == 1253
    assert sum(t.numel() for t in ours.state_dict().values()) == sum(t.numel() for t in ref_motion.state_dict().values())


def test_fp16_variant_adapter_loads_with_its_position_table(tmp_path):
    from diffusers import MotionAdapter as RefAdapter

    ref = tiny.randomize_(RefAdapter(**tiny.tiny_motion_adapter_config(use_motion_mid_block=True)), 0)
    ref.save_pretrained(tmp_path / "adapter", variant="fp16")
    half = vidcore.load_model(tmp_path / "adapter", variant="fp16", torch_dtype=torch.float16)
    assert isinstance(half, vidcore.MotionAdapter)
    pe = half.mid_block[0].transformer_blocks[0].pos_embed.pe
    assert pe.dtype == torch.float16
    assert torch.equal(pe, ref.mid_block.motion_modules[0].transformer_blocks[0].pos_embed.pe.half())
    assert torch.equal(half.up_blocks[0][2].proj_out.weight, ref.up_blocks[0].motion_modules[2].proj_out.weight.half())


def test_fullgraph_compile_has_no_graph_break(tmp_path):
    _, ours, _, _ = build(tmp_path, ADAPTERS["v2-mid-block"])
    x, ctx = video_inputs(4, batch=1, frames=3)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")  # fullgraph raises on any graph break
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, 10, ctx), ours(x, 10, ctx))
