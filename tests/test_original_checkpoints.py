"""Original single-file UNet checkpoints: ModelScope ``text2video_pytorch_model.pth`` and VGen
``i2vgen_xl_00854500.pth`` (conversion/maps/original_modelscope.py).

The map is validated against diffusers' own conversion scripts (scripts/convert_ms_text_to_video_to_
diffusers.py, scripts/convert_i2vgen_to_diffusers.py; not in the wheel): a random diffusers model goes
out through vidcore's reverse map, the script converts the result back, and every tensor must equal
the diffusers model's. The scripts are read from a diffusers git checkout: $DIFFUSERS_REPO, or the
mirror this project's machines keep; those tests skip (saying so) when neither is there. The other
tests (loading, round trips, real-config coverage, bad files) need nothing but the installed packages.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch

import tiny
import vidcore
from vidcore.conversion.maps.original_modelscope import (
    I2VGEN_XL_UNET_CONFIG,
    MODELSCOPE_UNET_CONFIG,
    detect,
    i2vgen_xl_map,
    modelscope_unet3d_map,
)
from vidcore.errors import CheckpointError, ConfigError, ConversionError
from vidcore.hub import load_state_dict
from vidcore.loading import BY_NAME, build as build_module, load_model_with_info, original_keymap, save_original

SCRIPTS = {"unet3d": "scripts/convert_ms_text_to_video_to_diffusers.py",
           "i2vgen_xl_unet": "scripts/convert_i2vgen_to_diffusers.py"}
MIRROR = "/work/.mirror/huggingface+diffusers/repo"

I2VGEN_BASE = dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                   cross_attention_dim=32, attention_head_dim=8, num_attention_heads=64,
                   down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                   up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
CASES = {
    "unet3d-two-levels": ("unet3d", {}),
    "unet3d-three-levels": ("unet3d", dict(block_out_channels=(16, 32, 48), attention_head_dim=8, layers_per_block=1,
                                           cross_attention_dim=24)),
    "unet3d-all-cross-attn": ("unet3d", dict(down_block_types=("CrossAttnDownBlock3D",) * 2,
                                             up_block_types=("CrossAttnUpBlock3D",) * 2, attention_head_dim=4)),
    "i2vgen-two-levels": ("i2vgen_xl_unet", {}),
    "i2vgen-three-levels": ("i2vgen_xl_unet", dict(block_out_channels=(16, 32, 32), layers_per_block=2,
                                                   cross_attention_dim=24,
                                                   down_block_types=("CrossAttnDownBlock3D",) * 2 + ("DownBlock3D",),
                                                   up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 2)),
}


def build(tmp_path, case: str, seed: int = 0):
    """A random tiny diffusers model saved under tmp_path/unet, and vidcore's load of it."""
    from diffusers import I2VGenXLUNet, UNet3DConditionModel

    kind, overrides = CASES[case]
    if kind == "unet3d":
        ref = UNet3DConditionModel(**tiny.tiny_unet3d_config(**overrides))
    else:
        ref = I2VGenXLUNet(**{**I2VGEN_BASE, **overrides})
    ref = tiny.randomize_(ref, seed).eval()
    ref.save_pretrained(tmp_path / "unet")
    return kind, ref, vidcore.load_model(tmp_path / "unet")


def read_pth(path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["state_dict"] if "state_dict" in obj else obj


def forward(model, kind, diffusers: bool, seed=1):
    g = torch.Generator().manual_seed(seed)
    ctx_dim = model.config.cross_attention_dim
    x = torch.randn(2, 4, 3, 8, 6, generator=g)
    text = torch.randn(2, 5, ctx_dim, generator=g)
    t = torch.tensor([5, 700])
    with torch.no_grad():
        if kind == "unet3d":
            return model(x, t, text).sample if diffusers else model(x, t, text)
        image_latents = torch.randn(2, 4, 3, 8, 6, generator=g)
        image_embeds, fps = torch.randn(2, ctx_dim, generator=g), torch.tensor([16, 8])
        if diffusers:
            return model(x, t, fps=fps, image_latents=image_latents, image_embeddings=image_embeds,
                         encoder_hidden_states=text).sample
        return model(x, t, fps, image_latents, image_embeds, text)


# ------------------------------------------------------------------ diffusers' own conversion scripts


def _script_module(tmp_path: Path, kind: str):
    repo = os.environ.get("DIFFUSERS_REPO", MIRROR)
    try:
        text = subprocess.run(["git", "-C", repo, "show", f"HEAD:{SCRIPTS[kind]}"], capture_output=True, text=True,
                              check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"diffusers' {SCRIPTS[kind]} is not available (no diffusers git checkout at {repo}; set "
                    f"DIFFUSERS_REPO): {err}")
    path = tmp_path / Path(SCRIPTS[kind]).name
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"diffusers_script_{kind}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # argparse only runs under __main__
    return module


def script_convert(tmp_path, kind: str, original: dict, config) -> dict:
    """diffusers' convert_ldm_unet_checkpoint on an original state dict (it pops from its input)."""
    script = _script_module(tmp_path, kind)
    # the ModelScope script reads config["class_embed_type"], which UNet3DConditionModel's config lacks
    return script.convert_ldm_unet_checkpoint(dict(original), {**dict(config), "class_embed_type": None})


@pytest.mark.parametrize("case", CASES)
def test_export_is_read_back_exactly_by_diffusers_conversion_script(tmp_path, case):
    kind, ref, ours = build(tmp_path, case)
    save_original(ours, tmp_path / "original.pth")
    original = read_pth(tmp_path / "original.pth")
    converted = script_convert(tmp_path, kind, original, ref.config)
    expected = ref.state_dict()
    assert sorted(converted) == sorted(expected)
    for k, v in expected.items():
        assert converted[k].dtype == v.dtype and torch.equal(converted[k], v), k


@pytest.mark.parametrize("kind", ["unet3d", "i2vgen_xl_unet"])
def test_real_config_export_matches_diffusers_script_on_meta(tmp_path, kind):
    """Real sizes (12 output blocks: the script's substring matching of block ids is exercised too)."""
    from diffusers import I2VGenXLUNet, UNet3DConditionModel

    cls, config = ((UNet3DConditionModel, MODELSCOPE_UNET_CONFIG) if kind == "unet3d"
                   else (I2VGenXLUNet, I2VGEN_XL_UNET_CONFIG))
    with torch.device("meta"):
        ref = cls.from_config(config)
    source = ref.state_dict()
    keymap = modelscope_unet3d_map(config) if kind == "unet3d" else i2vgen_xl_map(config)
    original, _ = keymap.convert(source, None, direction="reverse")
    converted = script_convert(tmp_path, kind, original, ref.config)
    assert sorted(converted) == sorted(source)
    assert all(converted[k].shape == v.shape for k, v in source.items())


# ------------------------------------------------------------------ loading through vidcore


@pytest.mark.parametrize("case", ["unet3d-all-cross-attn", "i2vgen-two-levels"])
def test_load_original_pth_matches_diffusers(tmp_path, case):
    kind, ref, ours = build(tmp_path, case)
    save_original(ours, tmp_path / "ckpt.pth")
    loaded, info = load_model_with_info(tmp_path / "ckpt.pth", config_from=tmp_path / "unet")
    assert info.source_format == "original" and info.architecture == kind
    assert type(loaded) is type(ours)
    expected, got = forward(ref, kind, True), forward(loaded, kind, False)
    assert ((expected - got).abs().max() / expected.abs().max()).item() < 1e-5


@pytest.mark.parametrize("case", ["unet3d-three-levels", "i2vgen-two-levels"])
def test_original_round_trip_is_bit_exact(tmp_path, case):
    kind, _, ours = build(tmp_path, case)
    save_original(ours, tmp_path / "a.pth")
    first = read_pth(tmp_path / "a.pth")
    assert detect(first) == kind
    # temporal transformer projections are Conv1d (o, i, 1) in the original, as ModelScope/VGen store them
    assert first["input_blocks.0.1.proj_in.weight"].ndim == 3
    again = vidcore.load_model(tmp_path / "a.pth", config_from=tmp_path / "unet" / "config.json")
    save_original(again, tmp_path / "b.safetensors")
    second = load_state_dict(tmp_path / "b.safetensors")
    assert sorted(first) == sorted(second)
    assert all(torch.equal(first[k], second[k]) for k in first)
    # the safetensors original loads too, and its config can be a dict
    third = vidcore.load_model(tmp_path / "b.safetensors", config_from=again.config.to_diffusers_config())
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), third.state_dict().values()))


def test_wrappers_and_prefixes_are_unwrapped(tmp_path):
    kind, ref, ours = build(tmp_path, "i2vgen-two-levels")
    save_original(ours, tmp_path / "plain.pth")
    state = read_pth(tmp_path / "plain.pth")
    assert "state_dict" in torch.load(tmp_path / "plain.pth", weights_only=True)  # VGen's own wrapping
    torch.save({"model": {"state_dict": state}, "step": 854500}, tmp_path / "wrapped.pth")
    torch.save({f"model.diffusion_model.{k}": v for k, v in state.items()} | {"cond_stage_model.x": torch.ones(1)},
               tmp_path / "ldm.ckpt")
    for name in ("wrapped.pth", "ldm.ckpt"):
        loaded = vidcore.load_model(tmp_path / name, config_from=tmp_path / "unet")
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), loaded.state_dict().values()))


def test_real_config_every_original_key_is_consumed():
    """Real hub configs on the meta device: every original key converts into vidcore's module."""
    from diffusers import I2VGenXLUNet, UNet3DConditionModel

    for name, cls, config, fused in [("unet3d", UNet3DConditionModel, MODELSCOPE_UNET_CONFIG, 0),
                                     ("i2vgen_xl_unet", I2VGenXLUNet, I2VGEN_XL_UNET_CONFIG, 1)]:
        with torch.device("meta"):
            ref = cls.from_config(config)
            default = cls(sample_size=32)  # the hub config is the class defaults with sample_size 32
        assert {k: v.shape for k, v in ref.state_dict().items()} == \
            {k: v.shape for k, v in default.state_dict().items()}
        arch = BY_NAME[name]
        keymap = original_keymap(arch, config)
        ours = build_module(arch, config)
        own = ours.state_dict()
        original, _ = keymap.convert(own, None, direction="reverse")
        # one fused to_qkv for three diffusers tensors (I2VGen's image-latent temporal encoder)
        assert len(original) == len(ref.state_dict()) - 2 * fused
        assert detect(original) == name
        converted, report = keymap.convert(original, {k: v.shape for k, v in own.items()})
        assert len(converted) == len(own) and not report.unconsumed
        assert set(report.mapping) == set(original)


def test_default_config_is_the_hub_config(tmp_path):
    _, _, ours = build(tmp_path, "unet3d-two-levels")
    save_original(ours, tmp_path / "tiny.pth")
    # without config_from the released model's config is used: the tiny weights do not fit it
    with pytest.raises(ConversionError, match="shape mismatches") as exc:
        vidcore.load_model(tmp_path / "tiny.pth")
    assert "input_blocks.0.0.weight" in str(exc.value) or "conv_in.weight" in str(exc.value)


# ------------------------------------------------------------------ bad files


class _Evil:
    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    evil = _Evil()
    evil.target = tmp_path / "pwned"
    torch.save({"state_dict": {"input_blocks.0.0.weight": torch.ones(1)}, "payload": evil}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to load"):
        vidcore.load_model(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_garbled_truncated_and_unknown_files(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(bytes(range(256)) * 16)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        vidcore.load_model(tmp_path / "garbage.pth")

    _, _, ours = build(tmp_path, "unet3d-two-levels")
    save_original(ours, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        vidcore.load_model(tmp_path / "cut.pth", config_from=tmp_path / "unet")

    torch.save({"encoder.weight": torch.ones(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="cannot tell what this single file is"):
        vidcore.load_model(tmp_path / "other.pth")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict of tensors"):
        vidcore.load_model(tmp_path / "list.pth")


def test_missing_and_misshapen_original_keys_are_named(tmp_path):
    _, _, ours = build(tmp_path, "i2vgen-two-levels")
    save_original(ours, tmp_path / "good.pth")
    state = read_pth(tmp_path / "good.pth")
    del state["input_blocks.1.0.in_layers.0.weight"]
    state["local_temporal_encoder.layers.0.0.fn.to_qkv.weight"] = state[
        "local_temporal_encoder.layers.0.0.fn.to_qkv.weight"][:-3]
    state["stray.weight"] = torch.ones(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as exc:
        vidcore.load_model(tmp_path / "bad.pth", config_from=tmp_path / "unet")
    msg = str(exc.value)
    assert "bad.pth" in msg
    assert "down_blocks.0.resnets.0.norm1.weight (needs source key input_blocks.1.0.in_layers.0.weight)" in msg
    assert "local_temporal_encoder.layers.0.0.fn.to_qkv.weight -> image_latents_temporal_encoder.attn1.to_q" in msg
    assert "stray.weight" in msg


def test_config_from_of_another_class_is_refused(tmp_path):
    _, _, ours = build(tmp_path, "i2vgen-two-levels")
    save_original(ours, tmp_path / "i2v.pth")
    with pytest.raises(ConfigError, match="UNet3DConditionModel config"):
        vidcore.load_model(tmp_path / "i2v.pth", config_from={"_class_name": "UNet3DConditionModel"})


# ------------------------------------------------------------------ engine: SplitRule / ChainedMap


def test_split_rule_both_ways_and_incomplete_groups():
    from vidcore.conversion.engine import ChainedMap, KeyMap, Rule, SplitRule

    split = KeyMap([SplitRule("{p}.to_qkv.{leaf}", ("{p}.q.{leaf}", "{p}.k.{leaf}", "{p}.v.{leaf}")),
                    Rule("{key}", "{key}")], name="split")
    fused = {"a.to_qkv.weight": torch.arange(24.0).reshape(6, 4), "a.norm": torch.ones(2)}
    parts, report = split.convert(fused, {"a.q.weight": (2, 4), "a.k.weight": (2, 4), "a.v.weight": (2, 4),
                                          "a.norm": (2,)})
    assert torch.equal(parts["a.k.weight"], fused["a.to_qkv.weight"][2:4])
    assert report.mapping["a.to_qkv.weight"] == "a.q.weight + a.k.weight + a.v.weight"
    back, _ = split.convert(parts, None, direction="reverse")
    assert sorted(back) == sorted(fused) and torch.equal(back["a.to_qkv.weight"], fused["a.to_qkv.weight"])
    del parts["a.v.weight"]
    with pytest.raises(ConversionError, match=r"multi-key rule needs that the source lacks \(1\):\n  a\.v\.weight"):
        split.convert(parts, None, direction="reverse")
    with pytest.raises(ConversionError, match=r"a\.to_qkv\.weight -> a\.q\.weight .*got \(3, 4\), expected \(2, 4\)"):
        split.convert({"a.to_qkv.weight": torch.ones(7, 4), "a.norm": torch.ones(2)},
                      {"a.q.weight": (2, 4), "a.k.weight": (2, 4), "a.v.weight": (2, 4), "a.norm": (2,)})
    rename = KeyMap([Rule("{p}.q.{leaf}", "{p}.query.{leaf}"), Rule("{key}", "{key}")], name="rename")
    chain = ChainedMap([split, rename])
    out, report = chain.convert(fused, {"a.query.weight": (2, 4), "a.k.weight": (2, 4), "a.v.weight": (2, 4),
                                        "a.norm": (2,)})
    assert sorted(out) == ["a.k.weight", "a.norm", "a.query.weight", "a.v.weight"]
    assert report.mapping["a.to_qkv.weight"] == "a.query.weight + a.k.weight + a.v.weight"
    again, _ = chain.convert(out, None, direction="reverse")
    assert torch.equal(again["a.to_qkv.weight"], fused["a.to_qkv.weight"])
