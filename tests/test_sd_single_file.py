"""Original Stable Diffusion 1.x single files (CompVis LDM layout, as civitai fine-tunes ship;
conversion/maps/original_sd.py).

Random tiny diffusers UNet / VAE and a transformers CLIPTextModel are loaded by vidcore, written out in the
LDM layout by vidcore's reverse maps, and converted back by diffusers' own ``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint`` and ``convert_ldm_clip_checkpoint``: every tensor must equal the original
model's. Round trips are bit-exact; real SD1.5 configs are covered on the meta device.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

import tiny
import vidcore
from vidcore.conversion.maps.original_sd import (
    SD15_TEXT_ENCODER_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    TEXT_ENCODER_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    detect,
)
from vidcore.errors import CheckpointError, ConversionError
from vidcore.hub import load_state_dict
from vidcore.loading import BY_NAME, build as build_module, load_model_with_info, load_sd_single_file, original_keymap, \
    original_state_dict, save_original

UNETS = {
    "sd15-conv-proj": dict(),
    "sd2-linear-proj-3-levels": dict(use_linear_projection=True, block_out_channels=(16, 32, 32),
                                     attention_head_dim=(2, 4, 4),
                                     down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
                                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2, layers_per_block=1),
}
# LDM extras a real file carries besides the three components
EXTRAS = {"betas": torch.linspace(0, 1, 10), "alphas_cumprod": torch.ones(10),
          "model_ema.decay": torch.tensor(0.9999), "model_ema.diffusion_modelconv_inweight": torch.ones(2),
          TEXT_ENCODER_PREFIX + "text_model.embeddings.position_ids": torch.arange(77)[None].float()}


def build(tmp_path, unet_case="sd15-conv-proj", seed=0):
    """Diffusers-layout pipeline folder with random tiny unet/vae/text_encoder; (references, vidcore loads)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = tiny.randomize_(UNet2DConditionModel(**tiny.tiny_unet2d_config(**UNETS[unet_case])), seed).eval()
    vae = tiny.randomize_(AutoencoderKL(**tiny.tiny_vae_config(layers_per_block=2)), seed + 1).eval()
    text = tiny.make_tiny_text_encoder(hidden=24, seed=seed + 2)
    root = tmp_path / "sd"
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    refs = {"unet": unet, "vae": vae, "text_encoder": text}
    ours = {"unet": vidcore.load_model(root / "unet"), "vae": vidcore.load_model(root / "vae"), "text_encoder": text}
    return root, refs, ours


def ldm_file(ours) -> dict:
    out = {}
    for module in ours.values():
        out.update(original_state_dict(module))
    return out


@pytest.mark.parametrize("unet_case", UNETS)
def test_export_is_read_back_exactly_by_diffusers_conversion(tmp_path, unet_case):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    _, refs, ours = build(tmp_path, unet_case)
    original = {**ldm_file(ours), **{k: v for k, v in EXTRAS.items() if "position_ids" not in k}}
    assert detect(original)
    assert original[UNET_PREFIX + "input_blocks.1.1.proj_in.weight"].ndim == (2 if "linear" in unet_case else 4)
    assert original[VAE_PREFIX + "encoder.mid.attn_1.q.weight"].ndim == 4  # LDM stores 1x1 convs
    results = {
        "unet": convert_ldm_unet_checkpoint(dict(original), dict(refs["unet"].config)),
        "vae": convert_ldm_vae_checkpoint(dict(original), dict(refs["vae"].config)),
        "text_encoder": convert_ldm_clip_checkpoint(dict(original)),
    }
    for name, converted in results.items():
        expected = refs[name].state_dict()
        if name == "text_encoder":  # transformers 5 has no text_model level in its module names
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
            expected = {k.removeprefix("text_model."): v for k, v in expected.items()}
        assert sorted(converted) == sorted(expected), name
        for k, v in expected.items():
            assert converted[k].dtype == v.dtype and torch.equal(converted[k], v), (name, k)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_load_components_and_round_trip_bit_exact(tmp_path, suffix):
    root, refs, ours = build(tmp_path)
    original = {**ldm_file(ours), **EXTRAS}
    path = tmp_path / f"civitai{suffix}"
    if suffix == ".safetensors":
        save_file(original, path)
    else:
        torch.save({"state_dict": original, "global_step": 470000}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the LDM extras are skipped on purpose, not warned about
        unet, info = load_model_with_info(path, config_from=root)
    assert info.architecture == "unet2d" and info.source_format == "original"
    vae = vidcore.load_model(path, component="vae", config_from=root)
    text = vidcore.load_model(path, component="text_encoder", config_from=root)
    for got, want in ((unet, ours["unet"]), (vae, ours["vae"]), (text, refs["text_encoder"])):
        assert type(got) is type(want)
        mine, theirs = got.state_dict(), want.state_dict()
        assert sorted(mine) == sorted(theirs)
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    ids = torch.tensor([[0, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(text(ids).last_hidden_state, refs["text_encoder"](ids).last_hidden_state)
    again = ldm_file({"unet": unet, "vae": vae, "text_encoder": text})
    first = {k: v for k, v in original.items() if k not in EXTRAS}
    assert sorted(again) == sorted(first)
    assert all(torch.equal(first[k], again[k]) for k in first)

    components = load_sd_single_file(path, config_from=root, torch_dtype=torch.float16)
    assert sorted(components) == ["text_encoder", "unet", "vae"]
    assert all(next(m.parameters()).dtype == torch.float16 for m in components.values())
    assert torch.equal(components["unet"].conv_in.weight, ours["unet"].conv_in.weight.half())


def test_single_component_files_and_unknown_keys(tmp_path):
    root, refs, ours = build(tmp_path)
    save_original(ours["vae"], tmp_path / "vae.safetensors")
    assert all(k.startswith(VAE_PREFIX) for k in load_state_dict(tmp_path / "vae.safetensors"))
    vae = vidcore.load_model(tmp_path / "vae.safetensors", component="vae", config_from=root / "vae")
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), ours["vae"].state_dict().values()))
    save_original(refs["text_encoder"], tmp_path / "te.ckpt")
    text = vidcore.load_model(tmp_path / "te.ckpt", component="text_encoder", config_from=root)
    theirs = refs["text_encoder"].state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in text.state_dict().items())
    save_file({**ldm_file(ours), "lora_te_something.weight": torch.ones(1)}, tmp_path / "extra.safetensors")
    with pytest.warns(UserWarning, match="lora_te_something"):
        vidcore.load_model(tmp_path / "extra.safetensors", config_from=root)


def test_errors_name_the_problem(tmp_path):
    root, refs, ours = build(tmp_path)
    original = ldm_file(ours)
    path = tmp_path / "sd.safetensors"
    save_file(original, path)
    with pytest.raises(ValueError, match="component must be one of"):
        vidcore.load_model(path, component="image_encoder", config_from=root)
    key = UNET_PREFIX + "output_blocks.2.1.conv.weight"  # the first up level's upsampler (UpBlock2D: after the res)
    save_file({k: v for k, v in original.items() if k != key}, tmp_path / "cut.safetensors")
    with pytest.raises(ConversionError, match="output_blocks.2.1.conv.weight"):
        vidcore.load_model(tmp_path / "cut.safetensors", config_from=root)
    sd2 = {k: v for k, v in original.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
    sd2["cond_stage_model.model.ln_final.weight"] = torch.ones(3)
    save_file(sd2, tmp_path / "sd2.safetensors")
    with pytest.raises(CheckpointError, match="OpenCLIP"):
        vidcore.load_model(tmp_path / "sd2.safetensors", component="text_encoder")
    with pytest.raises(ConversionError, match="shape"):  # the SD1.5 default config does not fit a tiny UNet
        vidcore.load_model(path)
    with pytest.raises(CheckpointError, match="not an original Stable Diffusion"):
        load_sd_single_file(root / "unet" / "diffusion_pytorch_model.safetensors")  # a diffusers-layout file


def test_real_sd15_configs_on_meta():
    """SD1.5 at full size on the meta device: the LDM key sets vidcore writes convert back through diffusers'
    functions into exactly diffusers' keys and shapes, and load into vidcore's modules (686 UNet tensors)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        ref_unet = UNet2DConditionModel.from_config(SD15_UNET_CONFIG)
        ref_vae = AutoencoderKL.from_config(SD15_VAE_CONFIG)
        text = CLIPTextModel(CLIPTextConfig.from_dict(SD15_TEXT_ENCODER_CONFIG))
    counts = {}
    for name, arch_name, ref, convert in [
        ("unet", "unet2d", ref_unet, lambda sd: convert_ldm_unet_checkpoint(sd, dict(ref_unet.config))),
        ("vae", "autoencoder_kl", ref_vae, lambda sd: convert_ldm_vae_checkpoint(sd, dict(ref_vae.config))),
    ]:
        arch = BY_NAME[arch_name]
        ours = build_module(arch, dict(ref.config))
        original = original_state_dict(ours, dict(ref.config))
        counts[name] = len(original)
        converted = convert(dict(original))
        expected = ref.state_dict()
        assert sorted(converted) == sorted(expected)
        assert all(converted[k].shape == v.shape for k, v in expected.items())
        prefix = UNET_PREFIX if name == "unet" else VAE_PREFIX
        stripped = {k[len(prefix):]: v for k, v in original.items()}
        target = {k: v.shape for k, v in ours.state_dict().items()}
        out, _ = original_keymap(arch, dict(ref.config)).convert(stripped, target)
        assert len(out) == len(target)
    original = original_state_dict(text)
    converted = convert_ldm_clip_checkpoint(dict(original))
    assert sorted(k.removeprefix("text_model.") for k in converted) == sorted(
        k.removeprefix("text_model.") for k in text.state_dict())
    counts["text_encoder"] = len(original)
    assert counts == {"unet": 686, "vae": 248, "text_encoder": 196}
