"""SVD's VAE (AutoencoderKLTemporalDecoder): parity with diffusers, real-config coverage, low precision,
and vidcore's spatial tiling of the temporal decoder (diffusers has none, issue #9958)."""

import pytest
import torch
from torch import nn

import tiny
import vidcore
from vidcore.models.svd_vae import AutoencoderKLTemporalDecoder, AutoencoderKLTemporalDecoderConfig


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def mean_rel_err(a, b):
    return ((a - b).abs().mean() / a.abs().mean()).item()


# The model hard-codes 32 GroupNorm groups, so widths are multiples of 32. layers_per_block=1 hits
# diffusers' quirk: the mid-block attention is built (and loaded) but never run.
TINY = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=2,
            latent_channels=4, sample_size=32)
CONFIGS = {"two-layers": {}, "one-layer-unused-attention": dict(layers_per_block=1)}


def build(tmp_path, seed=0, variant=None, **overrides):
    from diffusers import AutoencoderKLTemporalDecoder as Ref

    ref = tiny.randomize_(Ref(**{**TINY, **overrides}), seed).eval()
    ref.save_pretrained(tmp_path / "vae")
    if variant:
        ref.save_pretrained(tmp_path / "vae", variant=variant)
    return ref, vidcore.load_model(tmp_path / "vae")


@pytest.mark.parametrize("name", CONFIGS)
def test_encode_matches_diffusers(tmp_path, name):
    ref, ours = build(tmp_path, **CONFIGS[name])
    assert isinstance(ours, AutoencoderKLTemporalDecoder)
    x = torch.randn(3, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        post_ref, post = ref.encode(x).latent_dist, ours.encode(x)
        assert rel_err(post_ref.mean, post.mean) < 1e-5
        assert rel_err(post_ref.std, post.std) < 1e-5
        a = post_ref.sample(torch.Generator().manual_seed(4))
        b = post.sample(torch.Generator().manual_seed(4))
    assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_decode_matches_diffusers(tmp_path, name):
    ref, ours = build(tmp_path, **CONFIGS[name])
    g = torch.Generator().manual_seed(1)
    for frames, (h, w) in [(1, (6, 9)), (3, (5, 4)), (5, (4, 7))]:
        z = torch.randn(2 * frames, 4, h, w, generator=g)  # 2 videos, frames consecutive
        with torch.no_grad():
            expected = ref.decode(z, num_frames=frames).sample
            got = ours.decode(z, frames)
        assert got.shape == expected.shape == (2 * frames, 3, 2 * h, 2 * w)
        assert rel_err(expected, got) < 1e-5, (frames, h, w)


def test_forward_and_fp16_variant(tmp_path):
    ref, ours = build(tmp_path, variant="fp16")
    x = torch.randn(3, 3, 8, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_err(ref(x, num_frames=3).sample, ours(x, num_frames=3)) < 1e-5
    half = vidcore.load_model(tmp_path / "vae", variant="fp16", torch_dtype=torch.float16)
    assert half.dtype == torch.float16
    for (k, a), b in zip(ours.state_dict().items(), half.state_dict().values()):
        assert torch.equal(a.half(), b), k  # randomize_ rounds to fp16: the variant is lossless


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_decode_is_finite(tmp_path, dtype):
    _, ours = build(tmp_path)
    ours = ours.to(dtype)
    with torch.no_grad():
        out = ours.decode(torch.randn(3, 4, 6, 5, dtype=dtype), num_frames=3)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_real_config_every_key_and_shape_converts():
    from diffusers import AutoencoderKLTemporalDecoder as Ref

    from vidcore.conversion.maps.diffusers_svd_vae import SVD_VAE_MAP
    from vidcore.loading import BY_DIFFUSERS, build

    # stabilityai/stable-video-diffusion-img2vid-xt vae/config.json
    config = {"_class_name": "AutoencoderKLTemporalDecoder", "block_out_channels": [128, 256, 512, 512],
              "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3,
              "latent_channels": 4, "layers_per_block": 2, "out_channels": 3, "sample_size": 768,
              "scaling_factor": 0.18215}
    with torch.device("meta"):
        ref = Ref.from_config(config)
    ours = build(BY_DIFFUSERS["AutoencoderKLTemporalDecoder"], config)
    assert ours.config == AutoencoderKLTemporalDecoderConfig()  # dataclass defaults = the released model
    source = ref.state_dict()
    converted, _ = SVD_VAE_MAP.convert(source, {k: v.shape for k, v in ours.state_dict().items()})
    assert len(converted) == len(source) == 374
    assert abs(sum(p.numel() for p in ours.parameters()) / 1e6 - 97.74) < 0.01
    back, _ = SVD_VAE_MAP.convert(converted, {k: v.shape for k, v in source.items()}, direction="reverse")
    assert sorted(back) == sorted(source)


def test_config_uses_diffusers_defaults_for_missing_keys_and_round_trips():
    from diffusers import AutoencoderKLTemporalDecoder as Ref

    cfg = AutoencoderKLTemporalDecoderConfig.from_diffusers_config({"_class_name": "AutoencoderKLTemporalDecoder",
                                                                     "block_out_channels": [64]})
    assert (cfg.layers_per_block, cfg.sample_size, cfg.down_block_types) == (1, 32, ("DownEncoderBlock2D",))
    ref_config = dict(Ref(**TINY).config)
    assert AutoencoderKLTemporalDecoderConfig.from_diffusers_config(ref_config).to_diffusers_config() == {
        "_class_name": "AutoencoderKLTemporalDecoder", **{k: (list(v) if isinstance(v, tuple) else v)
                                                          for k, v in ref_config.items() if not k.startswith("_")}}
    with pytest.raises(ValueError, match="multiples of 32"):
        AutoencoderKLTemporalDecoderConfig.from_diffusers_config({**TINY, "block_out_channels": [16, 64]})
    with pytest.raises(ValueError, match="down_block_types"):
        AutoencoderKLTemporalDecoderConfig.from_diffusers_config({**TINY, "down_block_types": ["DownEncoderBlock2D"]})


def test_save_diffusers_round_trip(tmp_path):
    from diffusers import AutoencoderKLTemporalDecoder as Ref

    ref, ours = build(tmp_path)
    vidcore.loading.save_diffusers(ours, tmp_path / "out")
    again = Ref.from_pretrained(tmp_path / "out")
    for k, v in ref.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_decode_rejects_bad_num_frames():
    model = AutoencoderKLTemporalDecoder(AutoencoderKLTemporalDecoderConfig(**TINY))
    with pytest.raises(ValueError, match="num_frames"):
        model.decode(torch.randn(4, 4, 3, 3), num_frames=3)
    with pytest.raises(ValueError, match="tile_latent_size"):
        model.enable_tiling(0)
    with pytest.raises(ValueError, match="overlap"):
        model.enable_tiling(8, overlap=1.0)


# -- tiling ----------------------------------------------------------------------------------------------


def tiny_model(seed=0, residual_scale=1.0, **overrides):
    model = AutoencoderKLTemporalDecoder(AutoencoderKLTemporalDecoderConfig(**{**TINY, **overrides}))
    tiny.randomize_(model, seed).eval()
    with torch.no_grad():  # scale the residual branches' output layers (see test_tiled_decode_close_to_untiled)
        for name, p in model.decoder.named_parameters():
            if ".conv2." in name or ".to_out." in name:
                p.mul_(residual_scale)
    return model


class LocalFrameMixingDecoder(nn.Module):
    """A stand-in decoder without spatial context or statistics: 1x1 conv, 2x nearest upsample, then
    a Conv3d over frames. Tiling must reproduce it exactly (up to float rounding), which pins tile
    offsets, crops, output size and that every tile is decoded with all its frames."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 1)
        self.time = nn.Conv3d(3, 3, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, z, num_frames):
        x = nn.functional.interpolate(self.conv(z), scale_factor=2.0, mode="nearest")
        b = x.shape[0] // num_frames
        video = self.time(x.reshape(b, num_frames, *x.shape[1:]).transpose(1, 2))
        return video.transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("tile,overlap", [(4, 0.25), (5, 0.5), (6, 0.0), (8, 0.25)])
def test_tiling_stitches_exactly_for_a_local_decoder(tile, overlap):
    model = tiny_model()
    model.decoder = tiny.randomize_(LocalFrameMixingDecoder(), 3)
    z = torch.randn(2 * 5, 4, 11, 17, generator=torch.Generator().manual_seed(0))  # 2 videos x 5 frames
    with torch.no_grad():
        plain = model.decode(z, 5)
        model.enable_tiling(tile, overlap)
        tiled = model.decode(z, 5)
    assert tiled.shape == plain.shape == (10, 3, 22, 34)
    torch.testing.assert_close(tiled, plain, rtol=1e-5, atol=1e-5)


def test_tile_as_large_as_the_latents_is_exactly_untiled():
    model = tiny_model()
    z = torch.randn(3, 4, 6, 9, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model.decode(z, 3)
        for tile in (9, 16):
            model.enable_tiling(tile)
            assert torch.equal(model.decode(z, 3), plain)


def test_tiled_decode_close_to_untiled():
    """Tiled decode of the real tiny temporal decoder vs the untiled one, overlap 0.25.

    Not exact: every GroupNorm takes its statistics over the tile (in the temporal blocks over all
    frames of the tile), the mid-block attention is global over the tile, and a tile's zero-padded
    border is wrong over the decoder's receptive field (~15 latent px for this 2-level model), which
    the overlap only partly hides. Measured max / mean relative error (overlap 0.25, 3 frames):

    * fully random weights: 24x40 latents, 16-px tiles: 0.31 / 0.24; 40x56 latents, 32-px tiles:
      0.16 / 0.11 -- random convolutions use their whole receptive field, so this mostly measures
      border context, not the tiling;
    * the same weights with the residual branches' output layers (conv2, attention to_out) scaled
      by 0.1, i.e. a decoder whose output is dominated by a local path, as trained VAE decoders are:
      40x56 latents, 32-px tiles: 0.060 / 0.051 (what this test runs).

    Tolerance: 0.1 max / 0.08 mean relative. A tiling bug is far outside it: decoding latents shifted
    by one latent pixel differs by ~1.2 max relative (checked below as a control).
    """
    model = tiny_model(residual_scale=0.1)
    z = torch.randn(3, 4, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model.decode(z, 3)
        model.enable_tiling(32, overlap=0.25)
        tiled = model.decode(z, 3)
        shifted = model.decode(torch.roll(z, 1, dims=-1), 3)
    assert tiled.shape == plain.shape == (3, 3, 80, 112)
    assert rel_err(plain, tiled) < 0.1
    assert mean_rel_err(plain, tiled) < 0.08
    assert rel_err(plain, shifted) > 0.5
