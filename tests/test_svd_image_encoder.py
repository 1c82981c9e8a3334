"""The image encoder of original Stable Video Diffusion files: OpenCLIP ViT-H/14 under
``conditioner.embedders.0.open_clip.model.visual.*`` <-> transformers' ``CLIPVisionModelWithProjection``
(conversion/maps/original_svd.py ``open_clip_vision_map``).

diffusers' conversion script has no image-encoder part to compare with, so the map is checked by what
it computes: a small ViT written here from OpenCLIP's key layout alone (``OpenCLIPViT``: it loads the
reverse-mapped tensors with ``strict=True``, so every OpenCLIP name must be right) must give
transformers' ``image_embeds`` for the same weights.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import tiny
import vidcore
from vidcore.conversion.maps.original_svd import (
    IMAGE_ENCODER_PREFIX,
    SKIPPED_PREFIXES,
    SVD_IMAGE_ENCODER_CONFIG,
    UNET_PREFIX,
    open_clip_vision_map,
    split,
    unrecognised,
)
from vidcore.errors import CheckpointError, ConfigError, ConversionError, ModelNotFoundError
from vidcore.loading import load_model_with_info, original_state_dict, save_original

VAE_OVERRIDES = dict(layers_per_block=2)  # sgm's decoder mid block always has 2 res blocks


# ------------------------------------------------------------------ an OpenCLIP-layout ViT, from its keys


class _FusedSelfAttention(nn.Module):
    """Multi-head self-attention with one fused ``in_proj`` (q, k, v stacked on the output axis)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # b n w
        b, n, w = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, w // self.heads).transpose(1, 2) for t in (q, k, v))  # b h n d
        weights = torch.softmax(q @ k.transpose(-1, -2) / (w // self.heads) ** 0.5, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, w)
        return self.out_proj(out)


class _ResBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = _FusedSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(width, mlp), "c_proj": nn.Linear(mlp, width)})

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp["c_proj"](F.gelu(self.mlp["c_fc"](self.ln_2(x))))


class OpenCLIPViT(nn.Module):
    """OpenCLIP's ``VisionTransformer`` as SVD uses it (class-token pooling, exact GELU)."""

    def __init__(self, width: int, layers: int, heads: int, mlp: int, patch: int, image: int, out: int,
                 eps: float = 1e-5):
        super().__init__()
        self.patch, self.eps = patch, eps
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty((image // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=eps)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(_ResBlock(width, heads, mlp, eps) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(torch.empty(width, out))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # b 3 H W -> b out
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # b (gh gw) w
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj


# ------------------------------------------------------------------ helpers


def clip_config(**overrides):
    from transformers import CLIPVisionConfig

    config = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=56,
                  patch_size=14, projection_dim=24, hidden_act="gelu", layer_norm_eps=1e-5)
    config.update(overrides)
    return CLIPVisionConfig(**config)


def random_encoder(config, seed: int = 0):
    from transformers import CLIPVisionModelWithProjection

    return tiny.randomize_(CLIPVisionModelWithProjection(config), seed).eval()


def open_clip_state(encoder) -> dict[str, torch.Tensor]:
    """The encoder's tensors in the sgm file's OpenCLIP names, prefix stripped."""
    state = original_state_dict(encoder)
    assert all(k.startswith(IMAGE_ENCODER_PREFIX) for k in state)
    return split(state)["image_encoder"]


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# ------------------------------------------------------------------ (a) same function


@pytest.mark.parametrize("overrides", [
    dict(),  # 4 heads of 8, 2 layers, 4 x 4 patches
    dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3, intermediate_size=80, image_size=64,
         patch_size=16, projection_dim=20),
], ids=["w32-h4-l2", "w48-h3-l3"])
def test_open_clip_layout_forward_equals_transformers(overrides):
    config = clip_config(**overrides)
    encoder = random_encoder(config, seed=7)
    reference = OpenCLIPViT(config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                            config.intermediate_size, config.patch_size, config.image_size, config.projection_dim)
    reference.load_state_dict(open_clip_state(encoder), strict=True)  # every OpenCLIP name and shape
    pixels = torch.randn(3, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(pixels)
        got = encoder(pixels).image_embeds
    assert got.shape == want.shape == (3, config.projection_dim)
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5
    # the check has teeth: the projection un-transposed, or q and k swapped, change the output
    swapped = dict(open_clip_state(encoder))
    w = swapped["transformer.resblocks.0.attn.in_proj_weight"]
    swapped["transformer.resblocks.0.attn.in_proj_weight"] = torch.cat(w.chunk(3)[::-1])
    reference.load_state_dict(swapped)
    with torch.no_grad():
        assert (reference(pixels) - got).abs().max() > 1e-3


# ------------------------------------------------------------------ (b) round trips


def test_round_trip_is_bit_exact(tmp_path):
    encoder = random_encoder(clip_config(), seed=3)
    state = encoder.state_dict()
    keymap = open_clip_vision_map()
    original, _ = keymap.convert(state, None, direction="reverse")
    assert original["proj"].shape == (32, 24) and original["transformer.resblocks.1.attn.in_proj_weight"].shape == (96, 32)
    back, report = keymap.convert(original, {k: v.shape for k, v in state.items()})
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], state[k]) for k in state)
    assert len(report.mapping) == len(original) == 32 and not report.unused_rules
    again, _ = keymap.convert(back, None, direction="reverse")
    assert all(torch.equal(again[k], original[k]) for k in original)

    # through files: save_original -> load_model(component="image_encoder") -> original_state_dict
    path = save_original(encoder, tmp_path / "clip.safetensors")
    config = encoder.config.to_dict()
    loaded, info = load_model_with_info(path, component="image_encoder", config_from=config)
    assert (info.architecture, info.source_format) == ("clip_vision_with_projection", "original")
    assert type(loaded).__name__ == "CLIPVisionModelWithProjection" and not loaded.training
    assert_same_state(loaded, encoder)
    written = vidcore.hub.load_state_dict(path)
    redone = original_state_dict(loaded)
    assert sorted(written) == sorted(redone) and all(torch.equal(written[k], redone[k]) for k in written)
    # a .ckpt with a config.json path, loaded in fp16
    save_original(encoder, tmp_path / "clip.ckpt")
    (tmp_path / "config.json").write_text(json.dumps(config))
    half = vidcore.load_model(tmp_path / "clip.ckpt", component="image_encoder", config_from=tmp_path / "config.json",
                              torch_dtype=torch.float16)
    assert half.dtype == torch.float16
    assert all(torch.equal(a.half(), b) for a, b in zip(state.values(), half.state_dict().values()))


def test_real_config_every_key_is_consumed():
    """ViT-H/14 (32 layers, width 1280, 16 heads, MLP 5120, 14 px patches at 224, projection 1024) on the
    meta device: transformers -> OpenCLIP (392 tensors) -> transformers, every key and shape."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        ref = CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(SVD_IMAGE_ENCODER_CONFIG))
    target = {k: v.shape for k, v in ref.state_dict().items()}
    original, _ = open_clip_vision_map().convert(ref.state_dict(), None, direction="reverse")
    assert len(original) == 32 * 12 + 8 == 392
    assert original["conv1.weight"].shape == (1280, 3, 14, 14)
    assert original["positional_embedding"].shape == (257, 1280)  # 16 x 16 patches + the class token
    assert original["transformer.resblocks.31.attn.in_proj_weight"].shape == (3840, 1280)
    assert original["transformer.resblocks.31.mlp.c_fc.weight"].shape == (5120, 1280)
    assert original["proj"].shape == (1280, 1024)
    out, report = open_clip_vision_map().convert(original, target)
    assert sorted(out) == sorted(target) and len(report.mapping) == 392


# ------------------------------------------------------------------ (c) the pipeline from one sgm file


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("svd-image-encoder") / "pipe"
    tiny.build_tiny_svd_pipeline(folder, vae_overrides=VAE_OVERRIDES)
    return folder


def sgm_state(reference, image_encoder=None, skipped: bool = True) -> dict[str, torch.Tensor]:
    """A whole sgm file: UNet, VAE, image encoder and (``skipped``) tensors under the skipped prefixes."""
    state = {**original_state_dict(reference.unet), **original_state_dict(reference.vae),
             **original_state_dict(image_encoder if image_encoder is not None else reference.image_encoder)}
    if skipped:
        g = torch.Generator().manual_seed(5)
        state["conditioner.embedders.0.open_clip.model.token_embedding.weight"] = torch.randn(10, 8, generator=g)
        state["conditioner.embedders.0.open_clip.model.logit_scale"] = torch.tensor(4.6)
        state["conditioner.embedders.3.encoder.encoder.conv_in.weight"] = torch.randn(4, 3, 3, 3, generator=g)
        state["conditioner.embedders.3.encoder.quant_conv.weight"] = torch.randn(8, 8, 1, 1, generator=g)
    return state


def run(pipe):
    image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    return pipe(image, height=16, width=24, num_frames=3, num_inference_steps=2, decode_chunk_size=2,
                generator=torch.Generator().manual_seed(0), output_type="pt").frames


def test_pipeline_loads_the_image_encoder_from_the_file(tmp_path, pipeline_folder, monkeypatch):
    from vidcore.pipelines.stable_video_diffusion import StableVideoDiffusionPipeline

    reference = StableVideoDiffusionPipeline.from_pretrained(pipeline_folder)
    reference.set_progress_bar_config(disable=True)
    state = sgm_state(reference)
    assert unrecognised(state) == []
    assert {p for p in SKIPPED_PREFIXES if any(k.startswith(p) for k in state)} == set(SKIPPED_PREFIXES)
    save_file(state, str(tmp_path / "svd_xt.safetensors"))

    patterns = []
    resolve = vidcore.hub.resolve
    monkeypatch.setattr(vidcore.hub, "resolve", lambda *a, **kw: patterns.append(kw.get("allow_patterns")) or
                        resolve(*a, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the skipped prefixes are skipped silently
        pipe = StableVideoDiffusionPipeline.from_single_file(tmp_path / "svd_xt.safetensors",
                                                             config_from=pipeline_folder)
    pipe.set_progress_bar_config(disable=True)
    # the image encoder's weights were not asked for: only its config
    assert not any(p and "image_encoder/*" in p for p in patterns), patterns
    for name in ("unet", "vae", "image_encoder"):
        assert_same_state(getattr(pipe, name), getattr(reference, name))
    assert type(pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection" and not pipe.image_encoder.training
    want, got = run(reference), run(pipe)
    assert (want - got).abs().max().item() < 1e-4
    # Bit-equal weights at other memory addresses (transformers maps the folder's file, the converted
    # tensors are fresh) can take different CPU GEMM paths and differ in the last bit; in equal fresh
    # storage the two pipelines give the same video exactly.
    for encoder in (reference.image_encoder, pipe.image_encoder):
        for p in encoder.parameters():
            p.data = p.data.clone()
    assert torch.equal(run(reference), run(pipe))


def test_pipeline_image_encoder_comes_from_the_file_not_config_from(tmp_path, pipeline_folder):
    """The file's encoder differs from config_from's: the pipeline must hold the file's."""
    from transformers import CLIPVisionModelWithProjection

    from vidcore.pipelines.stable_video_diffusion import StableVideoDiffusionPipeline

    reference = StableVideoDiffusionPipeline.from_pretrained(pipeline_folder)
    other = tiny.randomize_(CLIPVisionModelWithProjection(reference.image_encoder.config), 99).eval()
    save_file(sgm_state(reference, other, skipped=False), str(tmp_path / "svd.safetensors"))
    pipe = StableVideoDiffusionPipeline.from_single_file(tmp_path / "svd.safetensors", config_from=pipeline_folder,
                                                         torch_dtype=torch.float16)
    assert pipe.image_encoder.dtype == torch.float16
    assert all(torch.equal(a.half(), b) for a, b in zip(other.state_dict().values(),
                                                        pipe.image_encoder.state_dict().values()))
    assert not torch.equal(pipe.image_encoder.visual_projection.weight.float(),
                           reference.image_encoder.visual_projection.weight)
    # an image_encoder= override wins over the file's
    pipe = StableVideoDiffusionPipeline.from_single_file(tmp_path / "svd.safetensors", config_from=pipeline_folder,
                                                         image_encoder=reference.image_encoder)
    assert pipe.image_encoder is reference.image_encoder


def test_pipeline_without_encoder_keys_uses_config_from(tmp_path, pipeline_folder, monkeypatch):
    from vidcore.pipelines.stable_video_diffusion import StableVideoDiffusionPipeline

    reference = StableVideoDiffusionPipeline.from_pretrained(pipeline_folder)
    state = {k: v for k, v in sgm_state(reference).items() if not k.startswith(IMAGE_ENCODER_PREFIX)}
    state["model_ema.decay"] = torch.tensor(0.999)  # not a known part of the file
    save_file(state, str(tmp_path / "svd.safetensors"))
    patterns = []
    resolve = vidcore.hub.resolve
    monkeypatch.setattr(vidcore.hub, "resolve", lambda *a, **kw: patterns.append(kw.get("allow_patterns")) or
                        resolve(*a, **kw))
    with pytest.warns(UserWarning, match=r"ignoring 1 tensors .* model_ema\.decay"):
        pipe = StableVideoDiffusionPipeline.from_single_file(tmp_path / "svd.safetensors", config_from=pipeline_folder)
    assert ["image_encoder/*"] in patterns  # now its weights are fetched from config_from
    assert_same_state(pipe.image_encoder, reference.image_encoder)


# ------------------------------------------------------------------ (d) errors


def test_missing_and_unexpected_keys_are_named(tmp_path):
    encoder = random_encoder(clip_config(), seed=4)
    config = encoder.config.to_dict()
    full = original_state_dict(encoder)

    def load(state, name, cfg=config):
        save_file(state, str(tmp_path / name))
        return vidcore.load_model(tmp_path / name, component="image_encoder", config_from=cfg)

    key = IMAGE_ENCODER_PREFIX + "transformer.resblocks.1.attn.in_proj_bias"
    with pytest.raises(ConversionError, match=r"layers\.1\.self_attn\.q_proj\.bias \(needs source key "
                                              r"transformer\.resblocks\.1\.attn\.in_proj_bias\)"):
        load({k: v for k, v in full.items() if k != key}, "missing.safetensors")
    # a layer-scale tensor (OpenCLIP models other than ViT-H have them): no rule consumes it
    extra = {**full, IMAGE_ENCODER_PREFIX + "transformer.resblocks.0.ls_1.gamma": torch.ones(32)}
    with pytest.raises(ConversionError, match=r"source keys no rule consumed \(1\):\n  transformer\.resblocks\.0\.ls_1\.gamma"):
        load(extra, "extra.safetensors")
    # a deeper encoder than the config
    with pytest.raises(ConversionError, match=r"produced keys the target does not have.*\n.*layers\.2\."):
        load(original_state_dict(random_encoder(clip_config(num_hidden_layers=3))), "deeper.safetensors")
    # a wrong projection width: shape error naming the OpenCLIP key, the config in the message
    with pytest.raises(ConversionError, match=r"proj -> visual_projection\.weight .*got \(20, 32\), expected "
                                              r"\(24, 32\)") as err:
        load(original_state_dict(random_encoder(clip_config(projection_dim=20))), "narrow.safetensors")
    assert "2 layers, width 32, projection 24" in str(err.value)
    # the released ViT-H/14 config (the default) against a tiny file
    with pytest.raises(ConversionError, match="shape"):
        load(full, "tiny.safetensors", cfg=None)
    # a UNet config is not an image-encoder config
    with pytest.raises(ConfigError, match="UNetSpatioTemporalConditionModel config"):
        load(full, "tiny.safetensors", cfg={"_class_name": "UNetSpatioTemporalConditionModel"})
    # a file without the image encoder
    unet_only = {UNET_PREFIX + "input_blocks.1.0.time_stack.in_layers.0.weight": torch.ones(4)}
    with pytest.raises(CheckpointError, match=r"without the image_encoder \(no conditioner\.embedders\.0\.open_clip"):
        load(unet_only, "unet_only.safetensors")
    with pytest.raises(ValueError, match=r"component must be one of \['image_encoder', 'unet', 'vae'\]"):
        vidcore.load_model(tmp_path / "unet_only.safetensors", component="text_encoder")


def test_pipeline_errors(tmp_path, pipeline_folder):
    from vidcore.pipelines.stable_video_diffusion import StableVideoDiffusionPipeline

    reference = StableVideoDiffusionPipeline.from_pretrained(pipeline_folder)
    state = sgm_state(reference, skipped=False)
    # a truncated image encoder fails the whole load, naming the key
    cut = {k: v for k, v in state.items() if k != IMAGE_ENCODER_PREFIX + "ln_post.weight"}
    save_file(cut, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ConversionError, match=r"post_layernorm\.weight \(needs source key ln_post\.weight\)"):
        StableVideoDiffusionPipeline.from_single_file(tmp_path / "cut.safetensors", config_from=pipeline_folder)
    # the encoder is in the file but config_from has no image_encoder/config.json
    save_file(state, str(tmp_path / "svd.safetensors"))
    bare = tmp_path / "bare"
    shutil.copytree(pipeline_folder, bare)
    (bare / "image_encoder" / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match=r"image_encoder/config\.json is missing .*pass image_encoder="):
        StableVideoDiffusionPipeline.from_single_file(tmp_path / "svd.safetensors", config_from=bare)
    # with its own image_encoder= the config is not needed
    pipe = StableVideoDiffusionPipeline.from_single_file(tmp_path / "svd.safetensors", config_from=bare,
                                                         image_encoder=reference.image_encoder)
    assert pipe.image_encoder is reference.image_encoder
