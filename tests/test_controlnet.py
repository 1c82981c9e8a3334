"""ControlNet (SD1.x/2.x) parity with diffusers' ControlNetModel, the diffusers and original (lllyasviel,
``control_model.*``) layouts both ways, real-config key coverage on the meta device, and errors."""

import pytest
import torch

import tiny
import vidcore
from vidcore.conversion.maps import original_controlnet
from tiny_controlnet import tiny_controlnet_config
from vidcore.errors import ConversionError
from vidcore.models.controlnet import ControlNet, ControlNetConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


CONFIGS = {
    "sd15-like": dict(),
    # SD2-like: linear projections, per-level heads, 3 levels, 2 transformer layers, 1 res block per level,
    # SD's four-width conditioning embedding (/8), 1-channel condition, BGR order
    "sd2-like-linear": dict(
        block_out_channels=(16, 32, 48), attention_head_dim=(2, 4, 8), use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"), layers_per_block=1,
        transformer_layers_per_block=2, cross_attention_dim=32, conditioning_embedding_out_channels=(4, 8, 8, 16),
        conditioning_channels=1, controlnet_conditioning_channel_order="bgr",
    ),
    # every level cross-attends, mid scale factor, other eps/padding, shifted time features, pooled residuals
    "options-global-pool": dict(
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), mid_block_scale_factor=1.5,
        norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, global_pool_conditions=True,
        conditioning_channels=3, controlnet_conditioning_channel_order="bgr",
    ),
}


def build(tmp_path, seed=0, **overrides):
    from diffusers import ControlNetModel

    ref = tiny.randomize_(ControlNetModel(**tiny_controlnet_config(**overrides)), seed).eval()
    ref.save_pretrained(tmp_path / "controlnet")
    return ref, vidcore.load_model(tmp_path / "controlnet")


def inputs(ref, batch=2, height=8, width=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    factor = 2 ** (len(ref.config.conditioning_embedding_out_channels) - 1)
    x = torch.randn(batch, ref.config.in_channels, height, width, generator=g)
    ctx = torch.randn(batch, 7, ref.config.cross_attention_dim, generator=g)
    cond = torch.rand(batch, ref.config.conditioning_channels, height * factor, width * factor, generator=g)
    return x, ctx, cond


def run_both(ref, ours, x, ctx, cond, t, **kwargs):
    with torch.no_grad():
        down, mid = ref(x, t, ctx, cond, return_dict=False, **kwargs)
        got = ours(x, t, ctx, cond, **kwargs)
    return (list(down), mid), got


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("scale,guess_mode", [(1.0, False), (0.55, False), (0.8, True)])
def test_controlnet_matches_diffusers(tmp_path, name, scale, guess_mode):
    ref, ours = build(tmp_path, **CONFIGS[name])
    assert isinstance(ours, ControlNet)
    x, ctx, cond = inputs(ref, height=8, width=12 if name != "sd2-like-linear" else 4)
    (down, mid), got = run_both(ref, ours, x, ctx, cond, torch.tensor([3, 871]), conditioning_scale=scale,
                                guess_mode=guess_mode)
    assert len(got.down_block_res_samples) == len(down)
    for i, (e, g) in enumerate(zip(down, got.down_block_res_samples)):
        assert g.shape == e.shape, i
        assert rel_err(e, g) < 1e-5, i
    assert rel_err(mid, got.mid_block_res_sample) < 1e-5


def test_scale_and_guess_mode_change_the_residuals(tmp_path):
    ref, ours = build(tmp_path)
    x, ctx, cond = inputs(ref, batch=1)
    with torch.no_grad():
        plain = ours(x, 10, ctx, cond)
        half = ours(x, 10, ctx, cond, conditioning_scale=0.5)
        guess = ours(x, 10, ctx, cond, guess_mode=True)
    assert torch.allclose(half.mid_block_res_sample, plain.mid_block_res_sample * 0.5)
    n = len(plain.down_block_res_samples)
    # guess mode: 0.1 for the first skip up to 1.0 for the mid block, geometrically
    assert torch.allclose(guess.down_block_res_samples[0], plain.down_block_res_samples[0] * 0.1)
    assert torch.allclose(guess.down_block_res_samples[-1], plain.down_block_res_samples[-1] * 10 ** (-1 / n))
    assert torch.equal(guess.mid_block_res_sample, plain.mid_block_res_sample)
    # the condition image reaches the residuals
    with torch.no_grad():
        other = ours(x, 10, ctx, cond.flip(-1))
    assert rel_err(plain.mid_block_res_sample, other.mid_block_res_sample) > 1e-3


def test_residuals_fit_the_unet_and_change_its_output(tmp_path):
    """A ControlNet built on the UNet's config plugs into UNet2D; its residuals change the prediction."""
    from diffusers import UNet2DConditionModel

    unet_ref = tiny.randomize_(UNet2DConditionModel(**tiny.tiny_unet2d_config()), 5).eval()
    unet_ref.save_pretrained(tmp_path / "unet")
    unet = vidcore.load_model(tmp_path / "unet")
    ref, ours = build(tmp_path)
    ours.check_compatible(unet)
    x, ctx, cond = inputs(ref)
    with torch.no_grad():
        down, mid = ours(x, 7, ctx, cond)
        expected = unet_ref(x, 7, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        got = unet(x, 7, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        plain = unet(x, 7, ctx)
    assert rel_err(expected, got) < 1e-5
    assert rel_err(got, plain) > 1e-2


def test_channel_mismatch_with_the_unet_is_a_clear_error(tmp_path):
    from vidcore.models.unet2d import UNet2D, UNet2DConfig

    _, ours = build(tmp_path)
    wide = UNet2D(UNet2DConfig.from_diffusers_config(tiny.tiny_unet2d_config(block_out_channels=(32, 96))))
    with pytest.raises(ValueError, match=r"controlnet does not fit the unet .*residual channels"):
        ours.check_compatible(wide)
    other_ctx = UNet2D(UNet2DConfig.from_diffusers_config(tiny.tiny_unet2d_config(cross_attention_dim=32)))
    with pytest.raises(ValueError, match="cross_attention_dim 24 vs the UNet's 32"):
        ours.check_compatible(other_ctx)


def test_bad_condition_inputs(tmp_path):
    ref, ours = build(tmp_path)
    x, ctx, cond = inputs(ref, batch=2)
    with pytest.raises(ValueError, match="must be the generated image's size"):
        ours(x, 1, ctx, cond[..., :-2])
    with pytest.raises(ValueError, match="2 channels; this ControlNet takes 3"):
        ours(x, 1, ctx, cond[:, :2])
    with pytest.raises(ValueError, match="1 images for a batch of 2"):
        ours(x, 1, ctx, cond[:1])


@pytest.mark.parametrize("name", ["sd15-like", "sd2-like-linear"])
def test_export_round_trips_through_diffusers(tmp_path, name):
    from diffusers import ControlNetModel

    ref, ours = build(tmp_path, **CONFIGS[name])
    vidcore.save_diffusers(ours, tmp_path / "exported")
    again = ControlNetModel.from_pretrained(tmp_path / "exported").eval()
    for key, value in ref.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    native = vidcore.save_native(ours, tmp_path / "native.safetensors")
    back = vidcore.load_model(native)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


# -- original (lllyasviel) layout ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sd15-like", "sd2-like-linear"])
def test_original_layout_matches_diffusers_converter(tmp_path, name):
    """vidcore writes the original layout; diffusers' own converter reads it back to the same tensors."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    overrides = {**CONFIGS[name], "conditioning_embedding_out_channels": (4, 8, 8, 16)}  # diffusers' fixed conv_out 14
    ref, ours = build(tmp_path, **overrides)
    original = vidcore.loading.original_state_dict(ours)
    assert all(k.startswith("control_model.") for k in original)
    for key in ("control_model.input_hint_block.14.weight", "control_model.zero_convs.0.0.weight",
                "control_model.middle_block_out.0.bias", "control_model.input_blocks.0.0.weight",
                "control_model.time_embed.2.weight"):
        assert key in original, key
    converted = convert_controlnet_checkpoint(original, dict(ref.config))
    expected = ref.state_dict()
    assert set(converted) == set(expected)
    for key, value in expected.items():
        assert torch.equal(converted[key], value), key


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_original_file_loads_bit_exactly(tmp_path, suffix):
    ref, ours = build(tmp_path)
    path = vidcore.save_original(ours, tmp_path / f"control_tiny{suffix}")
    loaded, info = vidcore.loading.load_model_with_info(path, config_from=dict(ref.config))
    assert info.architecture == "controlnet" and info.source_format == "original"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ours.state_dict().items())
    # the config can also come from a diffusers ControlNet folder
    again = vidcore.load_model(path, config_from=tmp_path / "controlnet")
    x, ctx, cond = inputs(ref, batch=1)
    with torch.no_grad():
        assert torch.equal(again(x, 5, ctx, cond).mid_block_res_sample, ours(x, 5, ctx, cond).mid_block_res_sample)


def test_unprefixed_and_training_checkpoints(tmp_path):
    """Re-exports without ``control_model.`` load too; a training checkpoint's SD weights are skipped with a
    warning."""
    ref, ours = build(tmp_path)
    original = vidcore.loading.original_state_dict(ours)
    bare = {k[len("control_model."):]: v for k, v in original.items()}
    torch.save(bare, tmp_path / "bare.pth")
    loaded = vidcore.load_model(tmp_path / "bare.pth", config_from=dict(ref.config))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ours.state_dict().items())
    full = {**original, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}
    torch.save({"state_dict": full}, tmp_path / "train.ckpt")
    with pytest.warns(UserWarning, match="ignoring 1 keys outside the ControlNet"):
        loaded = vidcore.load_model(tmp_path / "train.ckpt", config_from=dict(ref.config))
    assert torch.equal(loaded.controlnet_mid_block.weight, ours.controlnet_mid_block.weight)


def test_original_file_that_does_not_fit_names_the_keys(tmp_path):
    ref, ours = build(tmp_path)
    original = vidcore.loading.original_state_dict(ours)
    del original["control_model.zero_convs.3.0.weight"]
    torch.save(original, tmp_path / "broken.pth")
    with pytest.raises(ConversionError, match=r"zero_convs\.3\.0\.weight"):
        vidcore.load_model(tmp_path / "broken.pth", config_from=dict(ref.config))
    # without config_from the SD1.5 config is assumed: a tiny file does not fit it
    with pytest.raises(ConversionError, match="shape mismatches"):
        vidcore.load_model(tmp_path / "broken.pth")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this would run at load time",))


def test_pickles_with_code_are_refused(tmp_path):
    from vidcore.errors import CheckpointError

    torch.save({"control_model.input_hint_block.0.weight": _RunsCode()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to load"):
        vidcore.load_model(tmp_path / "evil.pth")


# -- real configs on the meta device ---------------------------------------------------------------

# lllyasviel/control_v11p_sd15_openpose config.json (the keys that differ from sd-controlnet-openpose's)
V11_OPENPOSE = {**original_controlnet.SD15_CONTROLNET_CONFIG, "_diffusers_version": "0.16.0.dev0",
                "conditioning_channels": 3, "global_pool_conditions": False, "projection_class_embeddings_input_dim": None}


@pytest.mark.parametrize("config", [original_controlnet.SD15_CONTROLNET_CONFIG, V11_OPENPOSE],
                         ids=["sd-controlnet-openpose", "control_v11p_sd15_openpose"])
def test_real_config_every_key_and_shape_converts(config):
    from diffusers import ControlNetModel

    from vidcore.loading import BY_DIFFUSERS, ORIGINAL_FORMATS, build, original_keymap

    with torch.device("meta"):
        ref = ControlNetModel.from_config(config)
    full = dict(ref.config)  # every key diffusers writes
    arch = BY_DIFFUSERS["ControlNetModel"]
    ours = build(arch, full)
    source = ref.state_dict()
    target = {k: v.shape for k, v in ours.state_dict().items()}
    converted, _ = arch.keymap(full).convert(source, target)
    assert len(converted) == len(source) == len(target) == 340
    assert abs(sum(p.numel() for p in ours.parameters()) / 1e6 - 361.28) < 0.01
    # original layout: 12 zero convs, the 8 hint convs, every encoder key
    original, _ = original_keymap(arch, full).convert(ours.state_dict(), None, "reverse")
    assert len(original) == 340
    assert sum(k.startswith("zero_convs.") for k in original) == 24
    assert sum(k.startswith("input_hint_block.") for k in original) == 16
    back, _ = original_keymap(arch, full).convert(original, target)
    assert set(back) == set(target)
    assert ORIGINAL_FORMATS["controlnet"].default_config == original_controlnet.SD15_CONTROLNET_CONFIG


@pytest.mark.parametrize("key,value", [("addition_embed_type", "text_time"), ("class_embed_type", "timestep"),
                                       ("num_attention_heads", 8), ("mid_block_type", None)])
def test_unsupported_options_are_clear_errors(key, value):
    with pytest.raises(ValueError, match="mid_block_type" if value is None else key):
        ControlNetConfig.from_diffusers_config({**original_controlnet.SD15_CONTROLNET_CONFIG, key: value})


def test_config_round_trips():
    cfg = ControlNetConfig.from_diffusers_config(V11_OPENPOSE)
    assert cfg.cross_attention_dim == 768 and cfg.conditioning_embedding_out_channels == (16, 32, 96, 256)
    assert ControlNetConfig.from_diffusers_config(cfg.to_diffusers_config()) == cfg


def test_lazy_exports_and_convert_cli(tmp_path, capsys):
    """vidcore.ControlNet / ControlledVideoPipeline / canny resolve lazily; `vidcore convert` turns an original
    file into a diffusers folder that diffusers loads to the same tensors."""
    from diffusers import ControlNetModel

    from vidcore.cli import main

    assert vidcore.ControlNet is ControlNet and vidcore.ControlNetConfig is ControlNetConfig
    assert vidcore.ControlledVideoPipeline.__name__ == "ControlledVideoPipeline" and callable(vidcore.canny)
    ref, ours = build(tmp_path)
    path = vidcore.save_original(ours, tmp_path / "control_tiny.pth")
    code = main(["convert", str(path), str(tmp_path / "out"), "--to", "diffusers", "--config-from",
                 str(tmp_path / "controlnet")])
    assert code == 0, capsys.readouterr().err
    assert "converted controlnet original -> diffusers" in capsys.readouterr().out
    again = ControlNetModel.from_pretrained(tmp_path / "out")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ref.state_dict().items())
