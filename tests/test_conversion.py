"""Conversion maps: real-size key coverage on the meta device, round trips, and loading errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny
import vidcore
from vidcore.conversion.maps.diffusers_unet3d import UNET3D_MAP
from vidcore.conversion.maps.diffusers_vae import VAE_MAP
from vidcore.errors import CheckpointError, ConfigError, ConversionError, ModelNotFoundError
from vidcore.loading import save_diffusers, save_native

# damo-vilab/text-to-video-ms-1.7b and cerspense/zeroscope_v2_576w unet/config.json (identical)
MODELSCOPE_UNET = {
    "_class_name": "UNet3DConditionModel", "act_fn": "silu", "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 32,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
}
# the SD 2.1 VAE used by ModelScope/Zeroscope
SD21_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 768,
    "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def meta_model(cls, config):
    with torch.device("meta"):
        return cls.from_config(config)


@pytest.mark.parametrize("which", ["unet", "vae"])
def test_real_config_every_key_and_shape_converts(which):
    from diffusers import AutoencoderKL, UNet3DConditionModel

    from vidcore.loading import BY_DIFFUSERS, build

    cls, config, keymap = {"unet": (UNet3DConditionModel, MODELSCOPE_UNET, UNET3D_MAP),
                           "vae": (AutoencoderKL, SD21_VAE, VAE_MAP)}[which]
    ref = meta_model(cls, config)
    ours = build(BY_DIFFUSERS[config["_class_name"]], config)
    source = ref.state_dict()
    target = {k: v.shape for k, v in ours.state_dict().items()}
    converted, report = keymap.convert(source, target)  # strict: raises on any unconsumed/missing/mismatch
    assert len(converted) == len(source) == len(target)
    if which == "unet":
        assert len(source) == 1480
        n = sum(v.numel() for v in ours.parameters())
        assert abs(n / 1e6 - 1411.2) < 0.1  # the survey's count for the real UNet
    back, _ = keymap.convert(converted, {k: v.shape for k, v in source.items()}, direction="reverse")
    assert set(back) == set(source)


@pytest.mark.parametrize("which", ["unet", "vae"])
def test_round_trip_diffusers_vidcore_diffusers(tmp_path, which):
    from diffusers import AutoencoderKL, UNet3DConditionModel

    ref = {"unet": lambda: UNet3DConditionModel(**tiny.tiny_unet3d_config()),
           "vae": lambda: AutoencoderKL(**tiny.tiny_vae_config())}[which]()
    tiny.randomize_(ref, 3).save_pretrained(tmp_path / "src")
    model = vidcore.load_model(tmp_path / "src")
    save_native(model, tmp_path / "native.safetensors")
    save_diffusers(vidcore.load_model(tmp_path / "native.safetensors"), tmp_path / "back")
    original = load_file(tmp_path / "src" / "diffusion_pytorch_model.safetensors")
    final = load_file(tmp_path / "back" / "diffusion_pytorch_model.safetensors")
    assert set(original) == set(final)
    for k in original:
        assert torch.equal(original[k], final[k]), k
    # diffusers itself loads the exported folder
    cls = type(ref)
    again = cls.from_pretrained(tmp_path / "back")
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), again.state_dict().values()))


def _saved_unet(tmp_path):
    from diffusers import UNet3DConditionModel

    folder = tmp_path / "unet"
    tiny.randomize_(UNet3DConditionModel(**tiny.tiny_unet3d_config()), 0).save_pretrained(folder)
    return folder, folder / "diffusion_pytorch_model.safetensors"


def test_missing_key_names_the_key(tmp_path):
    folder, weights = _saved_unet(tmp_path)
    state = load_file(weights)
    del state["down_blocks.0.temp_convs.1.conv3.3.weight"]
    save_file(state, weights)
    with pytest.raises(ConversionError, match=r"down_blocks\.0\.temp_convs\.1\.layers\.2\.conv\.weight"):
        vidcore.load_model(folder)


def test_shape_mismatch_names_both_shapes(tmp_path):
    folder, weights = _saved_unet(tmp_path)
    state = load_file(weights)
    state["conv_in.weight"] = torch.zeros(32, 4, 3, 5)
    save_file(state, weights)
    with pytest.raises(ConversionError, match=r"conv_in\.weight.*\(32, 4, 3, 5\).*\(32, 4, 3, 3\)"):
        vidcore.load_model(folder)


def test_truncated_file_names_the_file(tmp_path):
    folder, weights = _saved_unet(tmp_path)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        vidcore.load_model(folder)


def test_unknown_model_class_and_pipeline_folder(tmp_path):
    folder, _ = _saved_unet(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["_class_name"] = "PriorTransformer"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unsupported model class 'PriorTransformer'"):
        vidcore.load_model(folder)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "X", "unet": ["diffusers", "UNet3DConditionModel"]}))
    with pytest.raises(ModelNotFoundError, match=r"pipeline folder; pass subfolder= \(CLI: --subfolder\) one of \['unet'\]"):
        vidcore.load_model(tmp_path)


def test_no_half_loaded_model_on_error(tmp_path):
    """A failed conversion leaves a target module untouched."""
    from vidcore.conversion.engine import load_into

    folder, weights = _saved_unet(tmp_path)
    model = vidcore.load_model(folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = load_file(weights)
    state = {k: v + 1 for k, v in state.items()}
    del state["conv_out.bias"]
    with pytest.raises(ConversionError):
        load_into(model, state, UNET3D_MAP)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
