"""Original Stable Video Diffusion single files (Stability's sgm layout: ``svd_xt.safetensors``,
``svd_xt_1_1.safetensors``; conversion/maps/original_svd.py).

The UNet map is validated against diffusers' own ``convert_ldm_unet_checkpoint`` from
scripts/convert_svd_to_diffusers.py (not in the wheel; read from a diffusers git checkout:
$DIFFUSERS_REPO or the mirror this project's machines keep; those tests skip, saying so, when neither
is there): a random diffusers model goes out through vidcore's reverse map, the script converts it
back, and every tensor must equal the diffusers model's. The script's ``convert_ldm_vae_checkpoint``
gets three names wrong for sgm's VideoDecoder (see the map's docstring); the VAE test feeds it and
corrects it for exactly those, and asserts they are still wrong (so a fixed script shows up here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tiny
import vidcore
from vidcore.conversion.maps.original_svd import (
    SVD_VAE_CONFIG,
    SVD_XT_UNET_CONFIG,
    UNET_PREFIX,
    VAE_PREFIX,
    detect,
    svd_unet_map,
    svd_vae_map,
)
from vidcore.errors import CheckpointError, ConversionError
from vidcore.hub import load_state_dict
from vidcore.loading import BY_NAME, build, load_model_with_info, original_keymap, original_state_dict, save_original

SCRIPT = "scripts/convert_svd_to_diffusers.py"
MIRROR = "/work/.mirror/huggingface+diffusers/repo"
VAE_OVERRIDES = dict(layers_per_block=2)  # sgm's decoder mid block always has 2 res blocks


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Random tiny diffusers SVD UNet + VAE saved as a pipeline-like folder, and vidcore's loads."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    root = tmp_path_factory.mktemp("svd")
    unet = tiny.randomize_(UNetSpatioTemporalConditionModel(**tiny.tiny_svd_unet_config()), 2).eval()
    vae = tiny.randomize_(AutoencoderKLTemporalDecoder(**tiny.tiny_svd_vae_config(**VAE_OVERRIDES)), 3).eval()
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    ours = {"unet": vidcore.load_model(root / "unet"), "vae": vidcore.load_model(root / "vae")}
    return root, {"unet": unet, "vae": vae}, ours


def write_sgm(models, path: Path, extra: dict | None = None) -> dict:
    """One sgm file holding both components (plus `extra` tensors, e.g. a conditioner's)."""
    _, _, ours = models
    state = {**original_state_dict(ours["unet"]), **original_state_dict(ours["vae"]), **(extra or {})}
    save_file(state, str(path))
    return state


def _script(tmp_path: Path):
    repo = os.environ.get("DIFFUSERS_REPO", MIRROR)
    try:
        text = subprocess.run(["git", "-C", repo, "show", f"HEAD:{SCRIPT}"], capture_output=True, text=True,
                              check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"diffusers' {SCRIPT} is not available (no diffusers git checkout at {repo}; set "
                    f"DIFFUSERS_REPO): {err}")
    path = tmp_path / "convert_svd_to_diffusers.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("diffusers_script_svd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # library functions only
    return module


def script_unet(tmp_path, original: dict, config) -> dict:
    return _script(tmp_path).convert_ldm_unet_checkpoint(dict(original), {**dict(config), "class_embed_type": None})


def script_vae(tmp_path, original: dict, config) -> dict:
    """convert_ldm_vae_checkpoint, corrected for the names it gets wrong on sgm's VideoDecoder."""
    original = dict(original)
    for leaf in ("weight", "bias"):  # it reads decoder.time_mix_conv, sgm stores decoder.conv_out.time_mix_conv
        original[f"{VAE_PREFIX}decoder.time_mix_conv.{leaf}"] = original[f"{VAE_PREFIX}decoder.conv_out.time_mix_conv.{leaf}"]
    raw = _script(tmp_path).convert_ldm_vae_checkpoint(original, dict(config))
    wrong = [k for k in raw if "spatial_res_block." in k and (k.startswith("encoder.") or ".temporal_res_block." in k
                                                              or ".time_mixer." in k)]
    assert wrong, "diffusers' convert_ldm_vae_checkpoint changed: drop the corrections in this test"
    fixed = {}
    for k, v in raw.items():
        if k.startswith("encoder."):
            k = k.replace("spatial_res_block.", "")
        k = k.replace("temporal_res_block.spatial_res_block.", "temporal_res_block.")
        k = k.replace("spatial_res_block.time_mixer.", "time_mixer.")
        fixed[k] = v
    return fixed


# ------------------------------------------------------------------ diffusers' own conversion functions


def test_unet_export_is_read_back_exactly_by_diffusers_script(tmp_path, models):
    _, ref, ours = models
    save_original(ours["unet"], tmp_path / "unet.safetensors")
    original = load_state_dict(tmp_path / "unet.safetensors")
    assert all(k.startswith(UNET_PREFIX) for k in original)
    converted = script_unet(tmp_path, original, ref["unet"].config)
    expected = ref["unet"].state_dict()
    assert sorted(converted) == sorted(expected)
    for k, v in expected.items():
        assert converted[k].dtype == v.dtype and torch.equal(converted[k], v), k


def test_vae_export_is_read_back_by_diffusers_script(tmp_path, models):
    _, ref, ours = models
    original = original_state_dict(ours["vae"])
    assert f"{VAE_PREFIX}quant_conv.weight" in original  # a random quant_conv is kept (not the identity)
    converted = script_vae(tmp_path, original, ref["vae"].config)
    expected = {k: v for k, v in ref["vae"].state_dict().items() if not k.startswith("quant_conv.")}  # script skips it
    assert sorted(converted) == sorted(expected)
    for k, v in expected.items():
        assert torch.equal(converted[k], v), k


def test_real_config_unet_matches_diffusers_script_on_meta(tmp_path):
    """SVD-XT sizes (12 output blocks: the script's substring matching of block ids is exercised too)."""
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        ref = UNetSpatioTemporalConditionModel.from_config(SVD_XT_UNET_CONFIG)
    source = ref.state_dict()
    original, _ = svd_unet_map().convert(source, None, direction="reverse")
    converted = script_unet(tmp_path, {UNET_PREFIX + k: v for k, v in original.items()}, ref.config)
    assert sorted(converted) == sorted(source)
    assert all(converted[k].shape == v.shape for k, v in source.items())


def test_real_config_every_key_is_consumed():
    """SVD-XT UNet (1,428 tensors) and VAE (374) on the meta device: diffusers -> sgm -> vidcore modules."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    for name, cls, config, keymap, count in [
        ("svd_unet", UNetSpatioTemporalConditionModel, SVD_XT_UNET_CONFIG, svd_unet_map(), 1428),
        ("svd_vae", AutoencoderKLTemporalDecoder, SVD_VAE_CONFIG, svd_vae_map(), 374),
    ]:
        with torch.device("meta"):
            ref = cls.from_config(config)
        original, _ = keymap.convert(ref.state_dict(), None, direction="reverse")
        assert len(original) == count
        ours = build(BY_NAME[name], config)
        target = {k: v.shape for k, v in ours.state_dict().items()}
        out, report = original_keymap(BY_NAME[name], config).convert(original, target)
        assert sorted(out) == sorted(target) and len(report.mapping) == count
    # sgm names spot checks (sgm's module names, not diffusers')
    assert "decoder.conv_out.time_mix_conv.weight" in original
    assert "decoder.up.0.block.2.time_stack.out_layers.3.weight" in original
    assert original["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)


# ------------------------------------------------------------------ loading through vidcore


def test_load_sgm_file_matches_diffusers(tmp_path, models):
    root, ref, _ = models
    conditioner = {"conditioner.embedders.0.open_clip.model.visual.proj": torch.ones(4, 4)}
    state = write_sgm(models, tmp_path / "svd.safetensors", conditioner)
    assert detect(state)
    unet, info = load_model_with_info(tmp_path / "svd.safetensors", config_from=root)
    assert (info.architecture, info.source_format) == ("svd_unet", "original")
    vae = vidcore.load_model(tmp_path / "svd.safetensors", config_from=root, component="vae")
    assert type(vae).__name__ == "AutoencoderKLTemporalDecoder" and not vae.training

    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 3, 8, 8, 8, generator=g), torch.randn(2, 1, 32, generator=g)
    ids, t = torch.tensor([[6.0, 127.0, 0.02], [3.0, 20.0, 0.1]]), torch.tensor([0.3, 1.2])
    z = torch.randn(3, 4, 4, 4, generator=g)
    with torch.no_grad():
        want_u = ref["unet"](x, t, ctx, ids).sample
        got_u = unet(x, t, ctx, ids)
        want_v = ref["vae"].decode(z, num_frames=3).sample
        got_v = vae.decode(z, num_frames=3)
    for want, got in ((want_u, got_u), (want_v, got_v)):
        assert ((want - got).abs().max() / want.abs().max()).item() < 1e-5


def test_sgm_round_trip_is_bit_exact(tmp_path, models):
    root, _, ours = models
    # an sgm VAE has no quant_conv: vidcore fills the identity and writes none back
    vae_state = {k: v for k, v in original_state_dict(ours["vae"]).items() if "quant_conv" not in k}
    first = {**original_state_dict(ours["unet"]), **vae_state}
    save_file(first, str(tmp_path / "a.safetensors"))
    unet = vidcore.load_model(tmp_path / "a.safetensors", config_from=root / "unet" / "config.json")
    vae = vidcore.load_model(tmp_path / "a.safetensors", config_from=root, component="vae")
    assert torch.equal(vae.quant_conv.weight[:, :, 0, 0], torch.eye(8)) and not vae.quant_conv.bias.any()
    second = {**original_state_dict(unet), **original_state_dict(vae)}
    assert sorted(first) == sorted(second)
    assert all(torch.equal(first[k], second[k]) for k in first)
    # a .ckpt (pickled, {"state_dict": ...} as sgm training writes) with a dict config loads the same
    torch.save({"state_dict": first}, tmp_path / "b.ckpt")
    again = vidcore.load_model(tmp_path / "b.ckpt", config_from=unet.config.to_diffusers_config())
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), again.state_dict().values()))


def test_bad_files_fail_clearly(tmp_path, models):
    root, _, ours = models
    garbled = tmp_path / "garbled.safetensors"
    garbled.write_bytes(b"\x00\x01not a safetensors file" * 10)
    with pytest.raises(CheckpointError):
        vidcore.load_model(garbled, config_from=root)

    state = write_sgm(models, tmp_path / "svd.safetensors")
    with pytest.raises(ValueError, match="component must be one of"):
        vidcore.load_model(tmp_path / "svd.safetensors", config_from=root, component="text_encoder")
    # image_encoder is a component (tests/test_svd_image_encoder.py), but this file has none
    with pytest.raises(CheckpointError, match="without the image_encoder"):
        vidcore.load_model(tmp_path / "svd.safetensors", config_from=root, component="image_encoder")
    # default config (SVD-XT) against a tiny file: shape errors naming sgm keys, nothing half-loaded
    with pytest.raises(ConversionError, match="input_blocks|time_stack|shape"):
        vidcore.load_model(tmp_path / "svd.safetensors")
    # a component missing from the file
    save_file({k: v for k, v in state.items() if k.startswith(UNET_PREFIX)}, str(tmp_path / "unet_only.safetensors"))
    with pytest.raises(CheckpointError, match="without the vae"):
        vidcore.load_model(tmp_path / "unet_only.safetensors", config_from=root, component="vae")
    # a truncated UNet: the missing sgm keys are named
    cut = {k: v for k, v in state.items() if "output_blocks.1.0.time_stack" not in k}
    save_file(cut, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ConversionError, match="output_blocks.1.0.time_stack"):
        vidcore.load_model(tmp_path / "cut.safetensors", config_from=root)
    # component= on a checkpoint that is not an sgm SVD file
    with pytest.raises(ValueError, match="component"):
        vidcore.load_model(root / "unet", component="vae")


# ------------------------------------------------------------------ pipeline


def test_pipeline_from_single_file(tmp_path):
    from vidcore.pipelines.stable_video_diffusion import StableVideoDiffusionPipeline

    folder = tmp_path / "pipe"
    tiny.build_tiny_svd_pipeline(folder, vae_overrides=VAE_OVERRIDES)
    reference = StableVideoDiffusionPipeline.from_pretrained(folder)
    state = {**original_state_dict(reference.unet), **original_state_dict(reference.vae)}
    save_file(state, str(tmp_path / "svd_xt.safetensors"))
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"][1] == "UNetSpatioTemporalConditionModel"

    pipe = StableVideoDiffusionPipeline.from_single_file(tmp_path / "svd_xt.safetensors", config_from=folder)
    for name in ("unet", "vae", "image_encoder"):
        a, b = getattr(reference, name).state_dict(), getattr(pipe, name).state_dict()
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), name
    assert type(pipe.scheduler) is type(reference.scheduler)
    half = StableVideoDiffusionPipeline.from_single_file(tmp_path / "svd_xt.safetensors", config_from=folder,
                                                         torch_dtype=torch.float16, vae=reference.vae)
    assert half.unet.dtype == torch.float16 and half.vae is reference.vae
    with pytest.raises(CheckpointError, match="not an original Stable Video Diffusion file"):
        save_file({"foo.weight": torch.ones(2)}, str(tmp_path / "other.safetensors"))
        StableVideoDiffusionPipeline.from_single_file(tmp_path / "other.safetensors", config_from=folder)
