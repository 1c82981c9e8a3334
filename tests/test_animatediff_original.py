"""Original AnimateDiff motion-module files (``mm_sd_v15_v2.ckpt`` ...; conversion/maps/original_motion.py).

A random diffusers ``MotionAdapter`` is loaded by vidcore, written out in the original layout by
vidcore's reverse map, and read back by diffusers' own code (``convert_animatediff_checkpoint_to_diffusers``
and ``MotionAdapter.from_single_file``): every tensor must equal the diffusers model's. Round trips are
bit-exact; the config is read from the keys; real configs are covered on the meta device.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import tiny
import vidcore
from vidcore.conversion.maps.original_motion import config_from_keys, detect, motion_adapter_map
from vidcore.errors import CheckpointError, ConversionError
from vidcore.hub import load_state_dict
from vidcore.loading import (BY_NAME, load_model_with_info, load_motion_adapter_file, original_keymap,
                             original_state_dict, save_original)
from vidcore.models.motion import MotionAdapter

CASES = {
    "v1-24-positions": dict(motion_max_seq_length=24, use_motion_mid_block=False),
    "v2-mid-block": dict(motion_max_seq_length=32, use_motion_mid_block=True),
    "per-level-heads-2-blocks": dict(use_motion_mid_block=True, motion_num_attention_heads=(2, 8),
                                     motion_transformer_layers_per_block=2, motion_transformer_layers_per_mid_block=2),
    "three-levels": dict(block_out_channels=(16, 32, 32), motion_max_seq_length=16),
}
# what the weights cannot tell (the tiny adapters use 4 heads and 8 groups)
HIDDEN = ("motion_num_attention_heads", "motion_norm_num_groups")


def build(tmp_path, case: str, seed: int = 0):
    from diffusers import MotionAdapter as RefAdapter

    ref = tiny.randomize_(RefAdapter(**tiny.tiny_motion_adapter_config(**CASES[case])), seed).eval()
    ref.save_pretrained(tmp_path / "adapter")
    return ref, vidcore.load_model(tmp_path / "adapter")


def hidden_config(ref) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in ref.config.items() if k in HIDDEN}


@pytest.mark.parametrize("case", CASES)
def test_export_is_read_back_exactly_by_diffusers_conversion(tmp_path, case):
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    ref, ours = build(tmp_path, case)
    save_original(ours, tmp_path / "mm.ckpt")
    original = torch.load(tmp_path / "mm.ckpt", map_location="cpu", weights_only=True)
    assert detect(original)
    block = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0"
    assert f"{block}.attention_blocks.1.pos_encoder.pe" in original
    converted = convert_animatediff_checkpoint_to_diffusers(dict(original))
    expected = {k: v for k, v in ref.state_dict().items() if not k.endswith("pos_embed.pe")}  # diffusers drops pe
    assert sorted(converted) == sorted(expected)
    for k, v in expected.items():
        assert converted[k].dtype == v.dtype and torch.equal(converted[k], v), k
    # the position tables written (two per block) are diffusers' computed ones
    pes = {k: v for k, v in original.items() if k.endswith("pos_encoder.pe")}
    assert len(pes) == 2 * sum(k.endswith("pos_embed.pe") for k in ref.state_dict())
    for k, v in pes.items():
        block = k.replace(".temporal_transformer", "").split(".attention_blocks.")[0]
        assert torch.equal(v, ref.state_dict()[block + ".pos_embed.pe"]), k
    # the config read from the keys is the adapter's, apart from heads and groups
    inferred = config_from_keys(original)
    for key, value in ref.config.items():
        if key in HIDDEN or key.startswith("_") or key == "conv_in_channels":
            continue
        if key == "motion_transformer_layers_per_mid_block" and not ref.config.use_motion_mid_block:
            continue
        want = list(value) if isinstance(value, tuple) else value
        got = inferred.get(key, want)
        assert got == want or (isinstance(want, list) and len(set(want)) == 1 and got == want[0]), (key, got, want)


@pytest.mark.parametrize("case", ["v1-24-positions", "v2-mid-block"])
def test_diffusers_from_single_file_reads_vidcore_export(tmp_path, case):
    from diffusers import MotionAdapter as RefAdapter

    ref, ours = build(tmp_path, case)
    save_original(ours, tmp_path / "mm.safetensors")
    theirs = RefAdapter.from_single_file(str(tmp_path / "mm.safetensors"), config=str(tmp_path / "adapter"),
                                         local_files_only=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(theirs.state_dict()[k], v), k


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_round_trip_is_bit_exact(tmp_path, case, suffix):
    ref, ours = build(tmp_path, case)
    save_original(ours, tmp_path / f"a{suffix}")
    first = (load_state_dict(tmp_path / f"a{suffix}") if suffix == ".safetensors"
             else torch.load(tmp_path / f"a{suffix}", weights_only=True))
    loaded, info = load_model_with_info(tmp_path / f"a{suffix}", config_from=hidden_config(ref))
    assert info.source_format == "original" and info.architecture == "motion_adapter"
    assert isinstance(loaded, MotionAdapter)
    assert loaded.config == ours.config
    for (k, a), (k2, b) in zip(ours.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    again = original_state_dict(loaded)
    assert sorted(again) == sorted(first)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_unet_motion_from_single_file_matches_diffusers(tmp_path):
    """MotionAdapter.from_single_file (= vidcore.loading.load_motion_adapter_file) -> UNetMotion equals diffusers' UNetMotionModel.from_unet2d(unet,
    MotionAdapter.from_single_file(...)) on the same file."""
    from diffusers import MotionAdapter as RefAdapter
    from diffusers import UNet2DConditionModel, UNetMotionModel

    from test_motion import video_inputs
    from test_unet2d import rel_err

    _, ours = build(tmp_path, "v2-mid-block")
    save_original(ours, tmp_path / "mm_sd_v15_v2.ckpt")
    unet = tiny.randomize_(UNet2DConditionModel(**tiny.tiny_unet2d_config()), 5).eval()
    unet.save_pretrained(tmp_path / "unet")
    theirs = RefAdapter.from_single_file(str(tmp_path / "mm_sd_v15_v2.ckpt"), config=str(tmp_path / "adapter"),
                                         local_files_only=True)
    ref = UNetMotionModel.from_unet2d(unet, theirs).eval()
    adapter = MotionAdapter.from_single_file(tmp_path / "mm_sd_v15_v2.ckpt", config_from=tmp_path / "adapter")
    same = load_motion_adapter_file(tmp_path / "mm_sd_v15_v2.ckpt", config_from=tmp_path / "adapter")
    assert all(torch.equal(a, b) for a, b in zip(adapter.state_dict().values(), same.state_dict().values()))
    model = vidcore.UNetMotion(vidcore.load_model(tmp_path / "unet"), adapter)
    x, ctx = video_inputs(4, frames=5, height=6, width=7)
    with torch.no_grad():
        expected = ref(x, torch.tensor([3, 900]), ctx.repeat_interleave(5, dim=0)).sample
        got = model(x, torch.tensor([3, 900]), ctx)
    assert rel_err(expected, got) < 1e-5


def test_fp16_file_and_dtype(tmp_path):
    ref, ours = build(tmp_path, "v1-24-positions")
    state = {k: v.half() for k, v in original_state_dict(ours).items()}
    save_file(state, tmp_path / "mm_fp16.safetensors")
    loaded = vidcore.load_model(tmp_path / "mm_fp16.safetensors", torch_dtype=torch.float16,
                                config_from=hidden_config(ref))
    assert next(loaded.parameters()).dtype == torch.float16
    assert torch.equal(loaded.down_blocks[0][0].proj_in.weight, ours.down_blocks[0][0].proj_in.weight.half())


def test_config_from_keys_defaults_for_what_weights_cannot_tell(tmp_path):
    ref, ours = build(tmp_path, "v2-mid-block")
    save_original(ours, tmp_path / "mm.ckpt")
    loaded = vidcore.load_model(tmp_path / "mm.ckpt")  # no config_from: 8 heads, 32 groups
    assert loaded.config.motion_num_attention_heads == 8 and loaded.config.motion_norm_num_groups == 32
    assert loaded.config.use_motion_mid_block and loaded.config.motion_max_seq_length == 32
    assert loaded.config.block_out_channels == (32, 64)


@pytest.mark.parametrize("name,config,mid,positions", [
    ("mm_sd_v15 (v1)", dict(motion_max_seq_length=24, use_motion_mid_block=False), False, 24),
    ("mm_sd_v15_v2", dict(), True, 32),
    ("v3_sd15_mm", dict(use_motion_mid_block=False), False, 32),
    ("mm_sdxl_v10_beta", dict(block_out_channels=(320, 640, 1280), use_motion_mid_block=False), False, 32),
])
def test_real_configs_on_meta(name, config, mid, positions):
    """Released adapter configs at full size (meta tensors): original keys <-> vidcore, config from keys,
    and diffusers' conversion yields exactly diffusers' key set."""
    from diffusers import MotionAdapter as RefAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    with torch.device("meta"):
        ref = RefAdapter(**config)
        ours = MotionAdapter(vidcore.MotionAdapterConfig.from_diffusers_config(dict(ref.config)))
    arch = BY_NAME["motion_adapter"]
    original, _ = original_keymap(arch, dict(ref.config)).convert(ours.state_dict(), None, direction="reverse")
    assert detect(original)
    blocks = sum(k.endswith("pos_embed.pe") for k in ref.state_dict())
    assert len(original) == len(ref.state_dict()) + blocks  # one position table per attention block
    converted = convert_animatediff_checkpoint_to_diffusers(dict(original))
    expected = {k: v for k, v in ref.state_dict().items() if not k.endswith("pos_embed.pe")}
    assert sorted(converted) == sorted(expected)
    assert all(converted[k].shape == v.shape for k, v in expected.items())
    inferred = config_from_keys(original)
    assert inferred["use_motion_mid_block"] is mid and inferred["motion_max_seq_length"] == positions
    assert inferred["block_out_channels"] == list(ref.config.block_out_channels)
    with torch.device("meta"):
        shell = MotionAdapter(vidcore.MotionAdapterConfig.from_diffusers_config(inferred))
    target = {k: v.shape for k, v in shell.state_dict().items()}
    out, _ = original_keymap(arch, inferred).convert(original, target)
    assert sorted(out) == sorted(target)


def test_errors_name_the_problem(tmp_path):
    ref, ours = build(tmp_path, "v1-24-positions")
    state = original_state_dict(ours)
    # a missing tensor: named, nothing loaded
    key = "up_blocks.1.motion_modules.2.temporal_transformer.proj_out.weight"
    torch.save({k: v for k, v in state.items() if k != key}, tmp_path / "cut.ckpt")
    with pytest.raises(ConversionError, match=f"needs source key {key}"):
        vidcore.load_model(tmp_path / "cut.ckpt", config_from=hidden_config(ref))
    # the two stored copies of a position table disagree
    bad = dict(state)
    pe = "down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    bad[pe] = bad[pe] + 1
    torch.save(bad, tmp_path / "pe.ckpt")
    with pytest.raises(ConversionError, match="attention_blocks.1.pos_encoder.pe"):
        vidcore.load_model(tmp_path / "pe.ckpt")
    # wrong component / a config that does not fit the weights
    torch.save(state, tmp_path / "mm.ckpt")
    with pytest.raises(ValueError, match="motion-module file; component"):
        vidcore.load_model(tmp_path / "mm.ckpt", component="vae")
    with pytest.raises(ConversionError, match="shape"):
        vidcore.load_model(tmp_path / "mm.ckpt", config_from={"motion_max_seq_length": 32})
    # pickles with code are refused (weights_only)
    torch.save({"state_dict": state, "hook": print}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refusing"):
        vidcore.load_model(tmp_path / "evil.ckpt")


def test_map_is_config_independent_and_invertible():
    keymap = motion_adapter_map()
    src = {"mid_block.motion_modules.0.temporal_transformer.transformer_blocks.1.norms.1.weight": torch.ones(3),
           "down_blocks.2.motion_modules.1.temporal_transformer.transformer_blocks.0.ff.net.0.proj.bias": torch.ones(2)}
    out, _ = keymap.convert(src)
    assert sorted(out) == ["down_blocks.2.motion_modules.1.transformer_blocks.0.ff.net.0.proj.bias",
                           "mid_block.motion_modules.0.transformer_blocks.1.norm2.weight"]
    back, _ = keymap.convert(out, direction="reverse")
    assert sorted(back) == sorted(src)
